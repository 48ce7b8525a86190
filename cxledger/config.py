"""Settings: built once from a TOML file and the environment, then passed down as data.

Nothing below the CLI reads environment variables. Precedence: defaults < config file
(``--config`` or ``CXLEDGER_CONFIG``) < environment variables < command-line flags.

Everything is checked when the settings are loaded, and a mistake is one line (``cxledger:
...``, exit 2), never a traceback: a table or key of the config file that cxledger does not read
(``[sink] batch_rowz``: "unknown setting 'batch_rowz' in [sink]; did you mean 'batch_rows'?",
with the file's path), a value of the wrong kind or out of range in a variable or the file
(``CXLEDGER_LEDGER_PARTITIONS=abc``, ``port = 70000``, ``CXLEDGER_LIVE_CLOCK=maybe``,
``CXLEDGER_LOG_LEVEL=verbose``), a secret file that cannot be read. Secrets are never echoed.

Environment variables:
  CXLEDGER_KAFKA_BOOTSTRAP          Kafka bootstrap servers; unset = start the local broker
  CXLEDGER_KAFKA_SECURITY_PROTOCOL  passed to librdkafka as security.protocol (e.g. SASL_SSL)
  CXLEDGER_KAFKA_SASL_MECHANISM     sasl.mechanism        CXLEDGER_KAFKA_SASL_USERNAME  sasl.username
  CXLEDGER_KAFKA_SASL_PASSWORD      sasl.password         CXLEDGER_KAFKA_SSL_CA_LOCATION ssl.ca.location
  CXLEDGER_SCHEMA_REGISTRY_URL      Confluent-compatible registry; unset = ids from schemas/ids.json
  CXLEDGER_SCHEMA_REGISTRY_AUTH     user:password for the registry
  CXLEDGER_CLICKHOUSE_DSN           e.g. http://user:pass@host:8123/cx; unset = chdb:///<store>
  CXLEDGER_STORE                    directory of the embedded store (default ./.cxledger/store)
  CXLEDGER_LEDGER_PARTITIONS        partitions of the ledger topic (default 6)
  CXLEDGER_RULES                    path of a rules file (default: the shipped rules); the
                                    store's views are built from it (recreated when it changes:
                                    sinks.clickhouse.refresh_views), the dashboards are rendered
                                    with it (python -m cxledger.dashboard_rules)
  CXLEDGER_LOG_FORMAT               console | json (default: console on a terminal, else json)
  CXLEDGER_LOG_LEVEL                debug | info | warning | error
  CXLEDGER_LIVE_CLOCK               true | false: idle partitions' clocks follow wall time
                                    (default true; the demo and backfills use event time only)
  CXLEDGER_QUERY_HOST, _PORT        where `cxledger up` serves ClickHouse's HTTP interface on the
                                    embedded store (default 127.0.0.1:8123)
  CXLEDGER_QUERY_USER, _PASSWORD    the reader of that endpoint (default user "default"; with no
                                    password, `up` generates one and keeps it in the stack record)
  CXLEDGER_QUERY_MAX_EXECUTION_TIME seconds any one query may run there (default 30)
  CXLEDGER_GATEWAY_HOST, _PORT      where `cxledger up` serves the HTTP ingest gateway
                                    (default 127.0.0.1:8080)
  CXLEDGER_BROKER_HOST, _PORT       where the local broker listens when no Kafka is configured
                                    (default 127.0.0.1 and a free port)
  CXLEDGER_METRICS_PORT             /healthz, /readyz and /metrics (cxledger.health) of
                                    `cxledger process`, `cxledger sink` and `cxledger up`
                                    (default 9108; 0 = a free port; TOML [metrics] port;
                                    --metrics-port of process and sink). A configured port must
                                    be free; the default gives way to a free port (logged) when
                                    9108 is taken, e.g. by a second worker on one machine
  CXLEDGER_METRICS_HOST             their listen address (default 0.0.0.0 for process and sink,
                                    which run in containers and pods; 127.0.0.1 for up)
                                    `cxledger up` serves its own on the metrics port: the
                                    sinks' and the query endpoint's metrics, and, fetched at each
                                    scrape, those of every worker and of the gateway with a
                                    `child` label; each worker it starts serves its own on a free
                                    loopback port. `cxledger status` shows the address.
  CXLEDGER_<SECRET>_FILE            read that secret from a file (a mounted secret; a final
                                    newline is dropped): CXLEDGER_KAFKA_SASL_PASSWORD_FILE,
                                    CXLEDGER_SCHEMA_REGISTRY_AUTH_FILE, CXLEDGER_CLICKHOUSE_DSN_FILE,
                                    CXLEDGER_QUERY_PASSWORD_FILE (and, as before,
                                    CXLEDGER_PII_HMAC_KEY_FILE, CXLEDGER_GATEWAY_KEYS_FILE). The
                                    variable itself, when set, wins over its file

The ingest gateway (``cxledger gateway``; TOML ``[gateway]`` and ``[gateway.keys.<name>]``):
  CXLEDGER_GATEWAY_KEYS             its API keys as JSON: {"<name>": {"sha256": "<hex>",
                                    "channels": [...], "event_types": [...], "rate": R,
                                    "burst": B}, ...}; `cxledger gateway key` prints an entry
  CXLEDGER_GATEWAY_KEYS_FILE        a file of such keys: JSON as above (name ends in .json), else
                                    TOML with [gateway.keys.<name>] tables (a mounted secret).
                                    Keys of the config file, this file and CXLEDGER_GATEWAY_KEYS
                                    add up; an entry of the same name replaces the earlier one
  CXLEDGER_GATEWAY_MAX_BODY_BYTES   largest request body (default 10 MiB; 413 past it)
  CXLEDGER_GATEWAY_MAX_EVENTS       most events in one request (default 10000; 413 past it)
  CXLEDGER_GATEWAY_ACK_TIMEOUT      seconds a publish waits for Kafka (and, on the single-machine
                                    stack, the store) before answering 503 (default 10)
  CXLEDGER_GATEWAY_SHUTDOWN_FLUSH   seconds a stopping gateway waits for Kafka (default 5)
  CXLEDGER_GATEWAY_RATE, _BURST     a key's events/s and burst when its entry sets none
                                    (default 5000 and 10000)

Security (TOML ``[query.tls]`` cert/key, ``[pii]`` hmac_key or hmac_key_file, ``[seal]`` key
or key_file):
  CXLEDGER_QUERY_TLS_CERT, _KEY     PEM certificate (chain) and key: the query endpoint serves
                                    HTTPS instead of HTTP
  CXLEDGER_PII_HMAC_KEY             key (at least 32 characters) of the producer's PII
                                    pseudonyms: with it, phone numbers, national id numbers,
                                    e-mail addresses and labelled names in events are replaced
                                    by keyed hashes; without it they are refused
                                    (schemas.validation)
  CXLEDGER_PII_HMAC_KEY_FILE        a file holding that key (a mounted secret)
  CXLEDGER_SEAL_KEY                 key (at least 32 characters) of the SDK's seals
                                    (schemas.seal): the SDK seals each event it checked, and the
                                    ledger sink and the processors holding the same key do not
                                    check a sealed event again. Unset: nothing sealed, all checked
                                    (`cxledger up` makes one for its stack; TOML [seal] key)
  CXLEDGER_SEAL_KEY_FILE            a file holding that key (a mounted secret; [seal] key_file)
Kafka TLS client certificates and other librdkafka properties go in ``[kafka.client]``
(e.g. "ssl.certificate.location", "ssl.key.location"); faust gets the same settings.
Secrets (passwords, keys, the DSN's password, the registry's user:password) never appear in
``repr(settings)``; ``Settings.secrets()`` lists them and ``redact(text, settings)`` hides them.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

# The ledger sink's consumer group: its committed offsets say what is in the store.
LEDGER_SINK_GROUP = "cxledger-ledger-sink"

# Derived event type -> topic key in Topics.derived.
DERIVED_TOPIC_OF = {
    "satisfaction.scored": "satisfaction_scores",
    "satisfaction.window_updated": "satisfaction_windows",
    "satisfaction.windows_updated": "satisfaction_windows",  # the worker's batches of them
    "complaint.sla_breached": "complaint_breaches",
    "complaint.state_changed": "complaint_state",
    "churn.risk_changed": "churn_risk",
    "tier.change_proposed": "tier_changes",
    "tier.changed": "tier_changes",
    "feedback.sla_breached": "feedback_breaches",
    "hall.survey_month_updated": "hall_satisfaction",
    "hall.survey_month_closed": "hall_months",  # read by the hall-months fold (processors.halls)
    "hall.key_improvement_flagged": "hall_key_improvement",
    "hall.key_improvement_cleared": "hall_key_improvement",
}


@dataclass(frozen=True)
class Topics:
    ledger: str = "cx.ledger"
    deadletter: str = "cx.deadletter"
    partitions: int = 6
    replication_factor: int = 1
    # The processors' faust app: its consumer group and its state table's changelog topic
    # ("<app>-fold-state-changelog") belong with this ledger.
    processors_app: str = "cxledger-processors"
    derived: Mapping[str, str] = field(default_factory=lambda: {
        "satisfaction_scores": "cx.satisfaction.scores",
        "satisfaction_windows": "cx.satisfaction.windows",
        "complaint_breaches": "cx.complaint.breaches",
        "complaint_state": "cx.complaint.state",
        "churn_risk": "cx.churn.risk",
        "tier_changes": "cx.tier.changes",
        "feedback_breaches": "cx.feedback.breaches",
        "hall_satisfaction": "cx.hall.satisfaction",
        "hall_months": "cx.hall.months",
        "hall_key_improvement": "cx.hall.key_improvement",
    })

    def for_derived(self, event_type: str) -> str:
        return self.derived[DERIVED_TOPIC_OF[event_type]]

    @property
    def all_topics(self) -> list[str]:
        return [self.ledger, *dict.fromkeys(self.derived.values()), self.deadletter]


@dataclass(frozen=True)
class GatewayKey:
    """One API key of the ingest gateway, as the settings hold it: never the key itself, only
    its SHA-256 (keys are 256-bit random tokens, so a slow hash would add nothing but latency
    per request), and what it may publish. ``channels`` and ``event_types`` are names or
    shell-style patterns ("*", "complaint.*"); ``rate`` (events/s) and ``burst`` of None take
    the gateway's defaults. ``producers.api_keys.new_api_key`` makes one."""

    name: str
    sha256: str
    channels: tuple[str, ...] = ("*",)
    event_types: tuple[str, ...] = ("*",)
    rate: float | None = None
    burst: int | None = None

    def toml(self) -> str:
        """The ``[gateway.keys.<name>]`` table of this key."""
        def strings(values: tuple[str, ...]) -> str:
            return "[" + ", ".join(_toml_str(v) for v in values) + "]"

        lines = [f"[gateway.keys.{self.name}]", f"sha256 = {_toml_str(self.sha256)}",
                 f"channels = {strings(self.channels)}",
                 f"event_types = {strings(self.event_types)}"]
        if self.rate is not None:
            lines.append(f"rate = {float(self.rate)}")
        if self.burst is not None:
            lines.append(f"burst = {int(self.burst)}")
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        """This key as an entry of CXLEDGER_GATEWAY_KEYS (the name is the entry's key)."""
        entry: dict[str, Any] = {"sha256": self.sha256, "channels": list(self.channels),
                                 "event_types": list(self.event_types)}
        if self.rate is not None:
            entry["rate"] = self.rate
        if self.burst is not None:
            entry["burst"] = self.burst
        return entry


def _toml_str(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None = None
    kafka_client: Mapping[str, str] = field(default_factory=dict)
    schema_registry_url: str | None = None
    schema_registry_auth: str | None = None
    clickhouse_dsn: str | None = None
    store: Path = Path(".cxledger/store")
    topics: Topics = field(default_factory=Topics)
    rules_path: Path | None = None
    log_format: str | None = None
    log_level: str = "info"
    sink_batch_rows: int = 20_000
    sink_batch_seconds: float = 0.5
    # The derived sink's rows are what dashboards show as live, and there are few of them (the
    # windows travel in batches): it writes what it has every 0.15 s (freshness at 5,000
    # events/s, the bench's freshness phase alone: p99 2.6-3.6 s at 0.5 s, median 1.85 s at
    # 0.15 s).
    sink_derived_batch_seconds: float = 0.15
    # Live mode: idle partitions' clocks follow wall time (domain.md); off for backfills.
    live_clock: bool = True
    # The query endpoint (ClickHouse's HTTP interface on the embedded store) and the gateway.
    query_host: str = "127.0.0.1"
    query_port: int = 8123
    query_user: str = "default"
    query_password: str | None = None
    query_max_execution_time: float = 30.0
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The local broker (no Kafka configured): its listen address; port None = a free one.
    broker_host: str = "127.0.0.1"
    broker_port: int | None = None
    # True on the single-machine stack: a publish is acknowledged only once the ledger sink has
    # written it to the store (the local broker keeps nothing across a restart).
    acks_wait_for_store: bool = False
    # The ingest gateway: its API keys (hashed), its limits and how long it waits for Kafka.
    gateway_keys: tuple[GatewayKey, ...] = ()
    gateway_max_body_bytes: int = 10 * 1024 * 1024
    gateway_max_events: int = 10_000
    gateway_ack_timeout: float = 10.0
    gateway_shutdown_flush: float = 5.0
    gateway_rate: float = 5_000.0
    gateway_burst: int = 10_000
    # /healthz, /readyz and /metrics (cxledger.health): None = the command's default (port 9108;
    # host 0.0.0.0 for `process` and `sink`, 127.0.0.1 for `up` and the workers it starts)
    metrics_port: int | None = None
    metrics_host: str | None = None

    # -- security settings: TLS of the query endpoint, PII pseudonyms, redaction ----
    # The query endpoint serves HTTPS when both are set (PEM certificate chain, PEM key).
    query_tls_cert: Path | None = None
    query_tls_key: Path | None = None
    # The key of the producer's PII pseudonyms (HMAC-SHA256); None: the producer refuses PII.
    pii_hmac_key: str | None = field(default=None, repr=False)
    # The key of the SDK's seals (schemas.seal): with it, the consumers do not check again what
    # the SDK checked. None: nothing is sealed, everything is checked again.
    seal_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """Every field, with the secrets (see ``secrets``) shown as ``***``: settings may end up
        in a log line or a traceback, their secrets never."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("query_password", "pii_hmac_key", "seal_key", "schema_registry_auth"):
                value = None if value is None else "***"
            elif f.name == "clickhouse_dsn":
                value = None if value is None else redact_dsn(value)
            elif f.name == "kafka_client":
                value = {k: ("***" if is_secret_kafka_key(k) else v) for k, v in value.items()}
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def secrets(self) -> list[str]:
        """The secret values these settings hold (passwords, keys, the registry's user:password,
        the DSN's password), longest first: what must never be printed or logged."""
        found = [v for k, v in self.kafka_client.items() if is_secret_kafka_key(k)]
        found += [self.query_password, self.pii_hmac_key, self.seal_key]
        if self.schema_registry_auth:
            found += [self.schema_registry_auth, self.schema_registry_auth.partition(":")[2]]
        if self.clickhouse_dsn:
            password = urlsplit(self.clickhouse_dsn).password
            found += [password, unquote(password or "")]
        return sorted({str(s) for s in found if s}, key=len, reverse=True)

    def _security_toml(self) -> list[str]:
        """The security settings as TOML tables (for ``to_toml``)."""
        q = lambda value: _toml_str(value)  # noqa: E731
        lines = []
        if self.query_tls_cert or self.query_tls_key:
            lines.append("[query.tls]")
            if self.query_tls_cert:
                lines.append(f"cert = {q(self.query_tls_cert)}")
            if self.query_tls_key:
                lines.append(f"key = {q(self.query_tls_key)}")
        if self.pii_hmac_key:
            lines += ["[pii]", f"hmac_key = {q(self.pii_hmac_key)}"]
        if self.seal_key:
            lines += ["[seal]", f"key = {q(self.seal_key)}"]
        return lines

    @property
    def dsn(self) -> str:
        """The ClickHouse to talk to: a server DSN, or the embedded store directory."""
        return self.clickhouse_dsn or f"chdb://{self.store.resolve()}"

    @property
    def embedded_store(self) -> bool:
        return self.clickhouse_dsn is None

    def kafka_conf(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap, pass-through security settings, then extras."""
        if not self.kafka_bootstrap:
            raise RuntimeError("no Kafka bootstrap configured: start the local stack first "
                               "or set CXLEDGER_KAFKA_BOOTSTRAP")
        return {"bootstrap.servers": self.kafka_bootstrap, "logger": kafka_logger(),
                **self.kafka_client, **extra}

    def metrics_address(self, default_host: str = "0.0.0.0") -> tuple[str, int]:
        """Where /healthz, /readyz and /metrics are served: (host, port)."""
        return (self.metrics_host or default_host,
                DEFAULT_METRICS_PORT if self.metrics_port is None else self.metrics_port)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def to_toml(self) -> str:
        """These settings as a config file, to hand to a child process (``--config``)."""
        def q(value: Any) -> str:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["[kafka]"]
        if self.kafka_bootstrap:
            lines.append(f"bootstrap = {q(self.kafka_bootstrap)}")
        lines.append("[kafka.client]")
        lines += [f"{q(k)} = {q(v)}" for k, v in self.kafka_client.items()]
        lines.append("[schema_registry]")
        if self.schema_registry_url:
            lines.append(f"url = {q(self.schema_registry_url)}")
        if self.schema_registry_auth:
            lines.append(f"auth = {q(self.schema_registry_auth)}")
        lines.append("[clickhouse]")
        if self.clickhouse_dsn:
            lines.append(f"dsn = {q(self.clickhouse_dsn)}")
        lines.append(f"store = {q(self.store)}")
        t = self.topics
        lines += ["[topics]", f"ledger = {q(t.ledger)}", f"deadletter = {q(t.deadletter)}",
                  f"partitions = {t.partitions}", f"replication_factor = {t.replication_factor}",
                  f"processors_app = {q(t.processors_app)}", "[topics.derived]"]
        lines += [f"{k} = {q(v)}" for k, v in t.derived.items()]
        if self.rules_path:
            lines += ["[rules]", f"path = {q(self.rules_path)}"]
        lines += ["[log]", f"level = {q(self.log_level)}"]
        if self.log_format:
            lines.append(f"format = {q(self.log_format)}")
        lines += ["[sink]", f"batch_rows = {self.sink_batch_rows}",
                  f"batch_seconds = {self.sink_batch_seconds}",
                  f"derived_batch_seconds = {self.sink_derived_batch_seconds}",
                  "[processors]", f"live_clock = {'true' if self.live_clock else 'false'}",
                  "[query]", f"host = {q(self.query_host)}", f"port = {self.query_port}",
                  f"user = {q(self.query_user)}",
                  f"max_execution_time = {self.query_max_execution_time}"]
        if self.query_password is not None:
            lines.append(f"password = {q(self.query_password)}")
        lines += ["[broker]", f"host = {q(self.broker_host)}"]
        if self.broker_port is not None:
            lines.append(f"port = {self.broker_port}")
        lines += ["[gateway]", f"host = {q(self.gateway_host)}", f"port = {self.gateway_port}",
                  f"acks_wait_for_store = {'true' if self.acks_wait_for_store else 'false'}",
                  f"max_body_bytes = {self.gateway_max_body_bytes}",
                  f"max_events = {self.gateway_max_events}",
                  f"ack_timeout = {float(self.gateway_ack_timeout)}",
                  f"shutdown_flush = {float(self.gateway_shutdown_flush)}",
                  f"rate = {float(self.gateway_rate)}", f"burst = {self.gateway_burst}"]
        lines += [key.toml().rstrip("\n") for key in self.gateway_keys]
        if self.metrics_port is not None or self.metrics_host:
            lines.append("[metrics]")
            if self.metrics_port is not None:
                lines.append(f"port = {self.metrics_port}")
            if self.metrics_host:
                lines.append(f"host = {q(self.metrics_host)}")
        lines += self._security_toml()
        return "\n".join(lines) + "\n"


_KAFKA_ENV = {
    "CXLEDGER_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "CXLEDGER_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "CXLEDGER_KAFKA_SASL_USERNAME": "sasl.username",
    "CXLEDGER_KAFKA_SASL_PASSWORD": "sasl.password",
    "CXLEDGER_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}

# Secret variables that may instead name a file holding the value (a mounted secret):
# CXLEDGER_<NAME>_FILE. The variable itself wins when both are set. (CXLEDGER_PII_HMAC_KEY_FILE
# and CXLEDGER_GATEWAY_KEYS_FILE are read where their settings are.)
SECRET_FILE_VARIABLES = {
    "CXLEDGER_KAFKA_SASL_PASSWORD": "CXLEDGER_KAFKA_SASL_PASSWORD_FILE",
    "CXLEDGER_SCHEMA_REGISTRY_AUTH": "CXLEDGER_SCHEMA_REGISTRY_AUTH_FILE",
    "CXLEDGER_CLICKHOUSE_DSN": "CXLEDGER_CLICKHOUSE_DSN_FILE",
    "CXLEDGER_QUERY_PASSWORD": "CXLEDGER_QUERY_PASSWORD_FILE",
}

DEFAULT_METRICS_PORT = 9108
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")

# The config file's tables and keys: a key not listed is a typo, and an error. A nested dict is
# a sub-table with its own keys; "any" takes any keys (librdkafka properties); "derived" the
# keys of Topics.derived; "keys" the gateway's key entries (checked by parse_gateway_keys).
_TOML_SCHEMA: dict[str, dict[str, Any]] = {
    "kafka": {"bootstrap": None, "client": "any"},
    "schema_registry": {"url": None, "auth": None},
    "clickhouse": {"dsn": None, "store": None},
    "topics": {"ledger": None, "deadletter": None, "partitions": None,
               "replication_factor": None, "processors_app": None, "derived": "derived"},
    "rules": {"path": None},
    "log": {"level": None, "format": None},
    "sink": {"batch_rows": None, "batch_seconds": None, "derived_batch_seconds": None},
    "processors": {"live_clock": None},
    "query": {"host": None, "port": None, "user": None, "password": None,
              "max_execution_time": None, "tls": {"cert": None, "key": None}},
    "broker": {"host": None, "port": None},
    "gateway": {"host": None, "port": None, "acks_wait_for_store": None, "max_body_bytes": None,
                "max_events": None, "ack_timeout": None, "shutdown_flush": None, "rate": None,
                "burst": None, "keys": "keys"},
    "pii": {"hmac_key": None, "hmac_key_file": None},
    "seal": {"key": None, "key_file": None},
    "metrics": {"port": None, "host": None},
}


class ConfigError(ValueError):
    pass


def load_settings(config_file: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, then the TOML file, then the environment.

    Everything is checked here, so a mistake is one ConfigError naming the variable, or the file
    and the key, never a traceback later: an unknown table or key in the file (``batch_rowz``),
    a value of the wrong kind (``CXLEDGER_LEDGER_PARTITIONS=abc``), a number out of range, a
    secret file that cannot be read."""
    env = _with_secret_files(os.environ if environ is None else environ)
    path = config_file or env.get("CXLEDGER_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        _check_tables(data, _TOML_SCHEMA, path, "")
    read = _Reader(data, env, path)
    client = {}
    for key, value in read.table("kafka", "client").items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: [kafka.client] {key!r} must be a single value (a "
                              "librdkafka property), not a table or a list")
        client[str(key)] = (("true" if value else "false") if isinstance(value, bool)
                            else str(value))
    client.update({key: env[name] for name, key in _KAFKA_ENV.items() if env.get(name)})
    topics = _topics(read)
    rules = read.value(_STR, "CXLEDGER_RULES", "rules", "path", None)
    log_format = read.value(_choice(LOG_FORMATS), "CXLEDGER_LOG_FORMAT", "log", "format", None)
    return Settings(
        kafka_bootstrap=read.value(_STR, "CXLEDGER_KAFKA_BOOTSTRAP", "kafka", "bootstrap", None),
        kafka_client=client,
        schema_registry_url=read.value(_STR, "CXLEDGER_SCHEMA_REGISTRY_URL", "schema_registry",
                                       "url", None),
        schema_registry_auth=read.value(_STR, "CXLEDGER_SCHEMA_REGISTRY_AUTH", "schema_registry",
                                        "auth", None, secret=True),
        clickhouse_dsn=read.value(_STR, "CXLEDGER_CLICKHOUSE_DSN", "clickhouse", "dsn", None,
                                  secret=True),
        store=Path(read.value(_STR, "CXLEDGER_STORE", "clickhouse", "store", None)
                   or ".cxledger/store"),
        topics=topics,
        rules_path=Path(rules) if rules else None,
        log_format=log_format,
        log_level=read.value(_choice(LOG_LEVELS), "CXLEDGER_LOG_LEVEL", "log", "level", "info"),
        sink_batch_rows=read.value(_int(1), None, "sink", "batch_rows", 20_000),
        sink_batch_seconds=read.value(_float(positive=True), None, "sink", "batch_seconds", 0.5),
        sink_derived_batch_seconds=read.value(_float(positive=True), None, "sink",
                                              "derived_batch_seconds", 0.15),
        live_clock=read.value(_BOOL, "CXLEDGER_LIVE_CLOCK", "processors", "live_clock", True),
        query_host=read.value(_STR, "CXLEDGER_QUERY_HOST", "query", "host", "127.0.0.1"),
        query_port=read.value(_PORT, "CXLEDGER_QUERY_PORT", "query", "port", 8123),
        query_user=read.value(_STR, "CXLEDGER_QUERY_USER", "query", "user", "default"),
        query_password=read.value(_STR, "CXLEDGER_QUERY_PASSWORD", "query", "password", None,
                                  secret=True),
        query_max_execution_time=read.value(_float(positive=True),
                                            "CXLEDGER_QUERY_MAX_EXECUTION_TIME", "query",
                                            "max_execution_time", 30.0),
        gateway_host=read.value(_STR, "CXLEDGER_GATEWAY_HOST", "gateway", "host", "127.0.0.1"),
        gateway_port=read.value(_PORT, "CXLEDGER_GATEWAY_PORT", "gateway", "port", 8080),
        acks_wait_for_store=read.value(_BOOL, None, "gateway", "acks_wait_for_store", False),
        broker_host=read.value(_STR, "CXLEDGER_BROKER_HOST", "broker", "host", "127.0.0.1"),
        broker_port=read.value(_PORT, "CXLEDGER_BROKER_PORT", "broker", "port", None),
        metrics_port=read.value(_PORT, "CXLEDGER_METRICS_PORT", "metrics", "port", None),
        metrics_host=read.value(_STR, "CXLEDGER_METRICS_HOST", "metrics", "host", None),
        **_gateway_settings(read.table("gateway"), env, path, read),
        **_security_settings(data, env, path),
    )


def _topics(read: "_Reader") -> Topics:
    defaults = Topics()
    derived = dict(defaults.derived)
    for key, value in read.table("topics", "derived").items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{read.path}: [topics.derived] {key} must be a topic name, got "
                              f"{value!r}")
        derived[key] = value
    name = _str(nonempty=True)
    return Topics(
        ledger=read.value(name, None, "topics", "ledger", defaults.ledger),
        deadletter=read.value(name, None, "topics", "deadletter", defaults.deadletter),
        partitions=read.value(_int(1), "CXLEDGER_LEDGER_PARTITIONS", "topics", "partitions",
                              defaults.partitions),
        replication_factor=read.value(_int(1), None, "topics", "replication_factor",
                                      defaults.replication_factor),
        processors_app=read.value(name, None, "topics", "processors_app",
                                  defaults.processors_app),
        derived=derived,
    )


def _check_tables(data: Mapping[str, Any], schema: Mapping[str, Any], path: Any,
                  where: str) -> None:
    """Every table and key of the config file is one cxledger reads (see _TOML_SCHEMA)."""
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in schema:
            known = sorted(schema)
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            if not where:
                raise ConfigError(f"{path}: unknown table [{key}]{hint} (the tables are "
                                  f"{', '.join(f'[{k}]' for k in known)})")
            raise ConfigError(f"{path}: unknown setting {key!r} in [{where}]{hint} (the "
                              f"settings there are {', '.join(known)})")
        spec = schema[key]
        is_table = isinstance(value, dict)
        if spec is None:
            if is_table:
                raise ConfigError(f"{path}: [{name}] is a setting, not a table: write "
                                  f"{key} = <value> in [{where}]")
            continue
        if not is_table:
            raise ConfigError(f"{path}: {name} must be a table ([{name}]), got {value!r}")
        if isinstance(spec, dict):
            _check_tables(value, spec, path, name)
        elif spec == "derived":
            _check_tables(value, dict.fromkeys(Topics().derived), path, name)
        # "any" (librdkafka properties) and "keys" (parse_gateway_keys) are checked by readers


def _with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with each secret variable that is unset taken from its ``_FILE`` variable."""
    loaded = {}
    for name, file_variable in SECRET_FILE_VARIABLES.items():
        if env.get(name) or not env.get(file_variable):
            continue
        path = Path(env[file_variable])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"{file_variable}: cannot read {path} ({reason})") from None
        value = text.rstrip("\r\n")
        if not value:
            raise ConfigError(f"{file_variable}: {path} is empty")
        loaded[name] = value
    return {**env, **loaded} if loaded else env


# -- kinds of values: parse a string (environment) or a TOML value, or say what was expected ----
@dataclass(frozen=True)
class _Kind:
    parse: Any  # value -> converted value; raises ValueError or TypeError
    expected: str  # "a whole number of at least 1"


def _int(minimum: int | None = None, maximum: int | None = None) -> _Kind:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            value = int(value)
        number = int(value.strip()) if isinstance(value, str) else value
        if not isinstance(number, int):
            raise TypeError
        if (minimum is not None and number < minimum) or (maximum is not None
                                                           and number > maximum):
            raise ValueError
        return number

    bounds = (f" from {minimum} to {maximum}" if minimum is not None and maximum is not None
              else f" of at least {minimum}" if minimum is not None else "")
    return _Kind(parse, "a whole number" + bounds)


def _float(positive: bool = False, minimum: float | None = None) -> _Kind:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        number = float(value.strip()) if isinstance(value, str) else float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError
        if (positive and number <= 0) or (minimum is not None and number < minimum):
            raise ValueError
        return number

    return _Kind(parse, "a number" + (" above 0" if positive else f" of at least {minimum}"
                                      if minimum is not None else ""))


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError


def _str(nonempty: bool = False) -> _Kind:
    def parse(value: Any) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError
        text = str(value)
        if nonempty and not text:
            raise ValueError
        return text

    return _Kind(parse, "a non-empty string" if nonempty else "a string")


def _choice(options: tuple[str, ...]) -> _Kind:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise ValueError
        return value.strip().lower()

    return _Kind(parse, "one of " + ", ".join(options))


_STR = _str()
_BOOL = _Kind(_parse_bool, "true or false")
_PORT = _int(0, 65535)


class _Reader:
    """One setting at a time: the environment variable (when set and not empty) over the
    config file's key over the default, converted and checked as ``kind`` says."""

    def __init__(self, data: Mapping[str, Any], env: Mapping[str, str], path: Any):
        self.data, self.env, self.path = data, env, path

    def table(self, *names: str) -> Mapping[str, Any]:
        table: Any = self.data
        for name in names:
            table = table.get(name, {}) if isinstance(table, Mapping) else {}
        return table if isinstance(table, Mapping) else {}

    def value(self, kind: _Kind, variable: str | None, section: str, key: str, default: Any,
              secret: bool = False) -> Any:
        raw = self.env.get(variable) if variable else None
        if raw is not None and raw != "":
            where, value = variable, raw
        else:
            table = self.table(*section.split("."))
            if key not in table:
                return default
            where, value = f"{self.path}: [{section}] {key}", table[key]
        try:
            return kind.parse(value)
        except (TypeError, ValueError):
            shown = "" if secret else f", got {value!r}"
            raise ConfigError(f"{where} must be {kind.expected}{shown}") from None


# -- the ingest gateway's settings -------------------------------------------------------------
_KEY_FIELDS = {"sha256", "channels", "event_types", "rate", "burst"}
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _gateway_settings(table: Mapping[str, Any], env: Mapping[str, str],
                      path: Any, read: "_Reader | None" = None) -> dict[str, Any]:
    """The gateway_* fields of Settings from the TOML ``[gateway]`` table and the environment."""
    read = read or _Reader({"gateway": table}, env, path)
    keys = {k.name: k for k in parse_gateway_keys(table.get("keys", {}),
                                                  f"{path}: [gateway.keys]")}
    keys_file = env.get("CXLEDGER_GATEWAY_KEYS_FILE")
    if keys_file:
        keys.update((k.name, k) for k in _gateway_keys_file(Path(keys_file)))
    if env.get("CXLEDGER_GATEWAY_KEYS"):
        try:
            entries = json.loads(env["CXLEDGER_GATEWAY_KEYS"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CXLEDGER_GATEWAY_KEYS is not valid JSON ({exc.msg}); it holds "
                              '{"<name>": {"sha256": ..., "channels": [...], '
                              '"event_types": [...]}}') from None
        keys.update((k.name, k) for k in parse_gateway_keys(entries, "CXLEDGER_GATEWAY_KEYS"))
    return {
        "gateway_keys": tuple(keys.values()),
        "gateway_max_body_bytes": read.value(_int(1), "CXLEDGER_GATEWAY_MAX_BODY_BYTES",
                                             "gateway", "max_body_bytes", 10 * 1024 * 1024),
        "gateway_max_events": read.value(_int(1), "CXLEDGER_GATEWAY_MAX_EVENTS", "gateway",
                                         "max_events", 10_000),
        "gateway_ack_timeout": read.value(_float(positive=True), "CXLEDGER_GATEWAY_ACK_TIMEOUT",
                                          "gateway", "ack_timeout", 10.0),
        "gateway_shutdown_flush": read.value(_float(minimum=0),
                                             "CXLEDGER_GATEWAY_SHUTDOWN_FLUSH", "gateway",
                                             "shutdown_flush", 5.0),
        "gateway_rate": read.value(_float(positive=True), "CXLEDGER_GATEWAY_RATE", "gateway",
                                   "rate", 5_000.0),
        "gateway_burst": read.value(_int(1), "CXLEDGER_GATEWAY_BURST", "gateway", "burst",
                                    10_000),
    }


def _gateway_keys_file(path: Path) -> list[GatewayKey]:
    where = f"CXLEDGER_GATEWAY_KEYS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        if path.suffix == ".json":
            return parse_gateway_keys(json.loads(text), where)
        return parse_gateway_keys(tomllib.loads(text).get("gateway", {}).get("keys", {}), where)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_gateway_keys(entries: Any, where: str) -> list[GatewayKey]:
    """GatewayKey per ``name -> entry``; ConfigError saying which entry is wrong and how."""
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{where}: must map key names to entries, got {type(entries).__name__}")
    keys = []
    for name, entry in entries.items():
        at = f"{where}: key {name!r}"
        if not _KEY_NAME.match(str(name)):
            raise ConfigError(f"{at}: a key name is 1-64 letters, digits, '_' or '-'")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: must be a table with sha256, channels and event_types")
        unknown = sorted(set(entry) - _KEY_FIELDS)
        if unknown:
            raise ConfigError(f"{at}: unknown field {unknown[0]!r}; the fields are "
                              f"{', '.join(sorted(_KEY_FIELDS))}")
        digest = str(entry.get("sha256", "")).lower()
        if not _SHA256.match(digest):
            raise ConfigError(f"{at}: sha256 must be the 64 hex digits of the key's SHA-256; "
                              "`cxledger gateway key` prints a whole entry")
        scope = {}
        for field_name in ("channels", "event_types"):
            values = entry.get(field_name)
            if (not isinstance(values, list) or not values
                    or not all(isinstance(v, str) and v for v in values)):
                raise ConfigError(f'{at}: {field_name} must be a non-empty list of names (["*"] '
                                  "for all)")
            scope[field_name] = tuple(values)
        try:
            rate = float(entry["rate"]) if entry.get("rate") is not None else None
            burst = int(entry["burst"]) if entry.get("burst") is not None else None
        except (TypeError, ValueError):
            raise ConfigError(f"{at}: rate and burst must be numbers") from None
        if (rate is not None and rate <= 0) or (burst is not None and burst < 1):
            raise ConfigError(f"{at}: rate must be > 0 events/s and burst at least 1")
        keys.append(GatewayKey(str(name), digest, scope["channels"], scope["event_types"],
                               rate, burst))
    return keys


# -- security settings: TLS of the query endpoint, PII pseudonyms, redaction --------
PII_KEY_MIN_CHARS = 32


def _security_settings(data: Mapping[str, Any], env: Mapping[str, str],
                       path: Any) -> dict[str, Any]:
    """The query endpoint's TLS files and the PII key, from ``[query.tls]``, ``[pii]`` and
    CXLEDGER_QUERY_TLS_CERT / _KEY, CXLEDGER_PII_HMAC_KEY / CXLEDGER_PII_HMAC_KEY_FILE."""
    tls = data.get("query", {}).get("tls", {})
    cert = env.get("CXLEDGER_QUERY_TLS_CERT") or tls.get("cert")
    key = env.get("CXLEDGER_QUERY_TLS_KEY") or tls.get("key")
    if bool(cert) != bool(key):
        raise ConfigError("the query endpoint's TLS needs both a certificate and its key "
                          "(CXLEDGER_QUERY_TLS_CERT and CXLEDGER_QUERY_TLS_KEY, or cert and key "
                          "in [query.tls])")
    return {"query_tls_cert": Path(cert) if cert else None,
            "query_tls_key": Path(key) if key else None,
            "pii_hmac_key": _secret_key(env, "CXLEDGER_PII_HMAC_KEY", data.get("pii", {}),
                                        "pii", "hmac_key", "the PII key", path),
            "seal_key": _secret_key(env, "CXLEDGER_SEAL_KEY", data.get("seal", {}), "seal",
                                    "key", "the seal key", path)}


def _secret_key(env: Mapping[str, str], variable: str, table: Mapping[str, Any],
                table_name: str, name: str, what: str, path: Any) -> str | None:
    """A key from ``variable``, its ``_FILE`` variable, or ``name`` / ``name_file`` in the
    config file's ``[table_name]``, in that order; at least PII_KEY_MIN_CHARS characters."""
    value, where = env.get(variable), variable
    key_file = env.get(f"{variable}_FILE")
    if not value and key_file:
        value, where = _read_key_file(Path(key_file), f"{variable}_FILE"), key_file
    if not value and table.get(name):
        value, where = str(table[name]), f"{path}: [{table_name}] {name}"
    if not value and table.get(f"{name}_file"):
        where = f"{path}: [{table_name}] {name}_file"
        value = _read_key_file(Path(table[f"{name}_file"]), where)
    if value is not None and len(value) < PII_KEY_MIN_CHARS:
        # (the message names where the key came from, never the key)
        raise ConfigError(f"{where}: {what} is {len(value)} characters; it must be at "
                          f"least {PII_KEY_MIN_CHARS} random characters, e.g. the output of "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return value or None


def _read_key_file(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read the key file {path} ({reason})") from None


def kafka_logger() -> logging.Logger:
    """The standard-library logger every librdkafka client of ours logs through (``logger=`` in
    ``Settings.kafka_conf``): cxledger.logs renders its lines like every other log line."""
    return logging.getLogger("librdkafka")


def is_secret_kafka_key(key: str) -> bool:
    """True for librdkafka properties that hold a secret (sasl.password, ssl.key.password,
    ssl.key.pem, ssl.keystore.password, sasl.oauthbearer.client.secret, ...)."""
    key = key.lower()
    return ("password" in key or "secret" in key or key.endswith("key.pem")
            or key in ("sasl.oauthbearer.config", "sasl.jaas.config"))


def redact_dsn(dsn: str) -> str:
    """The DSN with its password as ``***`` (``http://reader:***@host:8123/cx``)."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # not a URL we can take apart: hide everything between // and @
        return re.sub(r"//[^/@]*@", "//***@", dsn)


def redact(text: str, settings: Settings) -> str:
    """``text`` with every secret of ``settings`` replaced by ``***``: for error messages that
    quote something the user configured (a DSN, a client configuration)."""
    for secret in settings.secrets():
        text = text.replace(secret, "***")
    return text
