# syntax=docker/dockerfile:1
# cxledger: one image for every process (`cxledger process | sink | gateway | topics create |
# schemas register | publish | simulate ...`). Settings come from CXLEDGER_* environment variables
# (cxledger/config.py); the image itself carries no configuration.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/cxledger
WORKDIR /src
# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p cxledger && touch cxledger/__init__.py \
 && /opt/cxledger/bin/pip install --upgrade pip \
 && /opt/cxledger/bin/pip install . \
 && /opt/cxledger/bin/pip uninstall -y cxledger
COPY . .
RUN /opt/cxledger/bin/pip install --no-deps . \
 && /opt/cxledger/bin/cxledger --help > /dev/null

FROM python:3.11-slim
LABEL org.opencontainers.image.title="cxledger" \
      org.opencontainers.image.description="Event-sourced customer-interaction ledger: producers, faust processors, ClickHouse sinks"
RUN groupadd --system --gid 10001 cxledger \
 && useradd --system --uid 10001 --gid cxledger --home-dir /var/lib/cxledger --create-home \
            --shell /usr/sbin/nologin cxledger
COPY --from=build /opt/cxledger /opt/cxledger
ENV PATH=/opt/cxledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CXLEDGER_LOG_FORMAT=json
# faust keeps its worker data directory under the working directory: writable by the user.
WORKDIR /var/lib/cxledger
USER 10001:10001
ENTRYPOINT ["cxledger"]
CMD ["--help"]
