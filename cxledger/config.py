"""Settings: built once from a TOML file and the environment, then passed down as data.

Nothing below the CLI reads environment variables. Precedence: defaults < config file
(``--config`` or ``CXLEDGER_CONFIG``) < environment variables < command-line flags.

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
  CXLEDGER_RULES                    path of a rules file (default: the shipped rules)
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

Security (TOML ``[query.tls]`` cert/key, ``[pii]`` hmac_key or hmac_key_file):
  CXLEDGER_QUERY_TLS_CERT, _KEY     PEM certificate (chain) and key: the query endpoint serves
                                    HTTPS instead of HTTP
  CXLEDGER_PII_HMAC_KEY             key (at least 32 characters) of the producer's PII
                                    pseudonyms: with it, phone numbers, national id numbers,
                                    e-mail addresses and labelled names in events are replaced
                                    by keyed hashes; without it they are refused
                                    (schemas.validation)
  CXLEDGER_PII_HMAC_KEY_FILE        a file holding that key (a mounted secret)
Kafka TLS client certificates and other librdkafka properties go in ``[kafka.client]``
(e.g. "ssl.certificate.location", "ssl.key.location"); faust gets the same settings.
Secrets (passwords, keys, the DSN's password, the registry's user:password) never appear in
``repr(settings)``; ``Settings.secrets()`` lists them and ``redact(text, settings)`` hides them.
"""

from __future__ import annotations

import json
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
    "complaint.sla_breached": "complaint_breaches",
    "complaint.state_changed": "complaint_state",
    "churn.risk_changed": "churn_risk",
    "tier.change_proposed": "tier_changes",
    "tier.changed": "tier_changes",
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

    # -- security settings (issue 7): TLS of the query endpoint, PII pseudonyms, redaction ----
    # The query endpoint serves HTTPS when both are set (PEM certificate chain, PEM key).
    query_tls_cert: Path | None = None
    query_tls_key: Path | None = None
    # The key of the producer's PII pseudonyms (HMAC-SHA256); None: the producer refuses PII.
    pii_hmac_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """Every field, with the secrets (see ``secrets``) shown as ``***``: settings may end up
        in a log line or a traceback, their secrets never."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("query_password", "pii_hmac_key", "schema_registry_auth"):
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
        found += [self.query_password, self.pii_hmac_key]
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
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_client, **extra}

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
        lines += self._security_toml()
        return "\n".join(lines) + "\n"


_KAFKA_ENV = {
    "CXLEDGER_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "CXLEDGER_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "CXLEDGER_KAFKA_SASL_USERNAME": "sasl.username",
    "CXLEDGER_KAFKA_SASL_PASSWORD": "sasl.password",
    "CXLEDGER_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}


class ConfigError(ValueError):
    pass


def load_settings(config_file: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, then the TOML file, then the environment."""
    env = os.environ if environ is None else environ
    path = config_file or env.get("CXLEDGER_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    kafka = data.get("kafka", {})
    topics_data = dict(data.get("topics", {}))
    derived = {**Topics().derived, **topics_data.pop("derived", {})}
    try:
        topics = Topics(**topics_data, derived=derived)
    except TypeError as exc:
        raise ConfigError(f"{path}: [topics]: {exc}") from None
    if env.get("CXLEDGER_LEDGER_PARTITIONS"):
        topics = replace(topics, partitions=int(env["CXLEDGER_LEDGER_PARTITIONS"]))
    client = {str(k): str(v) for k, v in kafka.get("client", {}).items()}
    client.update({key: env[name] for name, key in _KAFKA_ENV.items() if env.get(name)})
    registry = data.get("schema_registry", {})
    clickhouse = data.get("clickhouse", {})
    sink = data.get("sink", {})
    logs = data.get("log", {})
    query = data.get("query", {})
    gateway = data.get("gateway", {})
    broker = data.get("broker", {})
    broker_port = env.get("CXLEDGER_BROKER_PORT") or broker.get("port")
    rules = env.get("CXLEDGER_RULES") or data.get("rules", {}).get("path")
    return Settings(
        kafka_bootstrap=env.get("CXLEDGER_KAFKA_BOOTSTRAP") or kafka.get("bootstrap"),
        kafka_client=client,
        schema_registry_url=env.get("CXLEDGER_SCHEMA_REGISTRY_URL") or registry.get("url"),
        schema_registry_auth=env.get("CXLEDGER_SCHEMA_REGISTRY_AUTH") or registry.get("auth"),
        clickhouse_dsn=env.get("CXLEDGER_CLICKHOUSE_DSN") or clickhouse.get("dsn"),
        store=Path(env.get("CXLEDGER_STORE") or clickhouse.get("store") or ".cxledger/store"),
        topics=topics,
        rules_path=Path(rules) if rules else None,
        log_format=env.get("CXLEDGER_LOG_FORMAT") or logs.get("format"),
        log_level=env.get("CXLEDGER_LOG_LEVEL") or logs.get("level", "info"),
        sink_batch_rows=int(sink.get("batch_rows", 20_000)),
        sink_batch_seconds=float(sink.get("batch_seconds", 0.5)),
        live_clock=_flag("CXLEDGER_LIVE_CLOCK", env.get("CXLEDGER_LIVE_CLOCK"),
                         data.get("processors", {}).get("live_clock", True)),
        query_host=env.get("CXLEDGER_QUERY_HOST") or query.get("host", "127.0.0.1"),
        query_port=_number(int, "CXLEDGER_QUERY_PORT", env, query.get("port", 8123)),
        query_user=env.get("CXLEDGER_QUERY_USER") or query.get("user", "default"),
        query_password=env.get("CXLEDGER_QUERY_PASSWORD") or query.get("password"),
        query_max_execution_time=_number(float, "CXLEDGER_QUERY_MAX_EXECUTION_TIME", env,
                                         query.get("max_execution_time", 30.0)),
        gateway_host=env.get("CXLEDGER_GATEWAY_HOST") or gateway.get("host", "127.0.0.1"),
        gateway_port=_number(int, "CXLEDGER_GATEWAY_PORT", env, gateway.get("port", 8080)),
        acks_wait_for_store=bool(gateway.get("acks_wait_for_store", False)),
        broker_host=env.get("CXLEDGER_BROKER_HOST") or broker.get("host", "127.0.0.1"),
        broker_port=(_number(int, "CXLEDGER_BROKER_PORT", {"CXLEDGER_BROKER_PORT": broker_port},
                             None) if broker_port else None),
        **_gateway_settings(gateway, env, path),
        **_security_settings(data, env, path),
    )


def _number(kind, name: str, env: Mapping[str, str], default):
    value = env.get(name)
    if value is None or value == "":
        return kind(default)
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _flag(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return bool(default)
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


# -- the ingest gateway's settings -------------------------------------------------------------
_KEY_FIELDS = {"sha256", "channels", "event_types", "rate", "burst"}
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _gateway_settings(table: Mapping[str, Any], env: Mapping[str, str],
                      path: Any) -> dict[str, Any]:
    """The gateway_* fields of Settings from the TOML ``[gateway]`` table and the environment."""
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
    settings = {
        "gateway_keys": tuple(keys.values()),
        "gateway_max_body_bytes": _number(int, "CXLEDGER_GATEWAY_MAX_BODY_BYTES", env,
                                          table.get("max_body_bytes", 10 * 1024 * 1024)),
        "gateway_max_events": _number(int, "CXLEDGER_GATEWAY_MAX_EVENTS", env,
                                      table.get("max_events", 10_000)),
        "gateway_ack_timeout": _number(float, "CXLEDGER_GATEWAY_ACK_TIMEOUT", env,
                                       table.get("ack_timeout", 10.0)),
        "gateway_shutdown_flush": _number(float, "CXLEDGER_GATEWAY_SHUTDOWN_FLUSH", env,
                                          table.get("shutdown_flush", 5.0)),
        "gateway_rate": _number(float, "CXLEDGER_GATEWAY_RATE", env, table.get("rate", 5_000.0)),
        "gateway_burst": _number(int, "CXLEDGER_GATEWAY_BURST", env, table.get("burst", 10_000)),
    }
    for name in ("gateway_max_body_bytes", "gateway_max_events", "gateway_ack_timeout",
                 "gateway_rate", "gateway_burst"):
        if settings[name] <= 0:
            raise ConfigError(f"gateway setting {name.removeprefix('gateway_')} must be "
                              f"positive, got {settings[name]}")
    return settings


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


# -- security settings (issue 7): TLS of the query endpoint, PII pseudonyms, redaction --------
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
    pii = data.get("pii", {})
    hmac_key, where = env.get("CXLEDGER_PII_HMAC_KEY"), "CXLEDGER_PII_HMAC_KEY"
    key_file = env.get("CXLEDGER_PII_HMAC_KEY_FILE")
    if not hmac_key and key_file:
        hmac_key, where = _read_key_file(Path(key_file), "CXLEDGER_PII_HMAC_KEY_FILE"), key_file
    if not hmac_key and pii.get("hmac_key"):
        hmac_key, where = str(pii["hmac_key"]), f"{path}: [pii] hmac_key"
    if not hmac_key and pii.get("hmac_key_file"):
        where = f"{path}: [pii] hmac_key_file"
        hmac_key = _read_key_file(Path(pii["hmac_key_file"]), where)
    if hmac_key is not None and len(hmac_key) < PII_KEY_MIN_CHARS:
        # (the message names where the key came from, never the key)
        raise ConfigError(f"{where}: the PII key is {len(hmac_key)} characters; it must be at "
                          f"least {PII_KEY_MIN_CHARS} random characters, e.g. the output of "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return {"query_tls_cert": Path(cert) if cert else None,
            "query_tls_key": Path(key) if key else None,
            "pii_hmac_key": hmac_key or None}


def _read_key_file(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read the key file {path} ({reason})") from None


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
