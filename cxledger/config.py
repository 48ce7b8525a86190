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
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

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
                  f"acks_wait_for_store = {'true' if self.acks_wait_for_store else 'false'}"]
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
