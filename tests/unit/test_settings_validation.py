"""Settings are validated: a typo in the config file, a value of the wrong kind
in a variable, a secret in a file; every existing name keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxledger.config import (DEFAULT_METRICS_PORT, SECRET_FILE_VARIABLES, ConfigError,
                             load_settings)

ROOT = Path(__file__).resolve().parents[2]

# every numeric or boolean variable, with a value of the wrong kind
NUMERIC_OR_BOOLEAN = ["CXLEDGER_LEDGER_PARTITIONS", "CXLEDGER_QUERY_PORT",
                      "CXLEDGER_QUERY_MAX_EXECUTION_TIME", "CXLEDGER_GATEWAY_PORT",
                      "CXLEDGER_BROKER_PORT", "CXLEDGER_GATEWAY_MAX_BODY_BYTES",
                      "CXLEDGER_GATEWAY_MAX_EVENTS", "CXLEDGER_GATEWAY_ACK_TIMEOUT",
                      "CXLEDGER_GATEWAY_SHUTDOWN_FLUSH", "CXLEDGER_GATEWAY_RATE",
                      "CXLEDGER_GATEWAY_BURST", "CXLEDGER_METRICS_PORT", "CXLEDGER_LIVE_CLOCK"]


def test_every_numeric_and_boolean_variable_is_known_to_the_settings():
    text = (ROOT / "cxledger" / "config.py").read_text(encoding="utf-8")
    for name in NUMERIC_OR_BOOLEAN:
        assert f'"{name}"' in text, name


@pytest.mark.parametrize("name", NUMERIC_OR_BOOLEAN)
@pytest.mark.parametrize("value", ["abc", "1.5e400x"])
def test_a_variable_of_the_wrong_kind_is_one_line_naming_it(name, value):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(name) and repr(value) in message


@pytest.mark.parametrize("name, value, expected", [
    ("CXLEDGER_LEDGER_PARTITIONS", "0", "at least 1"),
    ("CXLEDGER_QUERY_PORT", "70000", "from 0 to 65535"),
    ("CXLEDGER_GATEWAY_RATE", "-5", "above 0"),
    ("CXLEDGER_LOG_LEVEL", "verbose", "debug, info, warning, error"),
    ("CXLEDGER_LOG_FORMAT", "xml", "console, json"),
])
def test_out_of_range_values_say_what_is_allowed(name, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ={name: value})


def test_the_cli_answers_a_bad_variable_with_one_line_and_no_traceback(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    out = subprocess.run([sys.executable, "-m", "cxledger.cli", "status"], cwd=tmp_path,
                         env={**env, "CXLEDGER_LEDGER_PARTITIONS": "abc"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "cxledger: CXLEDGER_LEDGER_PARTITIONS must be a whole number of at least 1, got 'abc'"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cxledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, named", [
    ("[sink]\nbatch_rowz = 5\n", ["'batch_rowz'", "[sink]", "did you mean 'batch_rows'"]),
    ("[sinks]\nbatch_rows = 5\n", ["[sinks]", "did you mean 'sink'"]),
    ("[query.tls]\ncertificate = 'a'\n", ["'certificate'", "[query.tls]"]),
    ("[topics.derived]\nsatisfaction_score = 'x'\n", ["'satisfaction_score'"]),
    ("[kafka]\nbootstrap = 'a:1'\nclient = 'x'\n", ["kafka.client must be a table"]),
    ("[sink.batch_rows]\nx = 1\n", ["[sink.batch_rows] is a setting"]),
    ("[sink]\nbatch_rows = 'many'\n", ["[sink] batch_rows must be a whole number", "'many'"]),
    ("[processors]\nlive_clock = 'sometimes'\n", ["[processors] live_clock must be true or false"]),
    ("[topics]\npartitions = 0\n", ["[topics] partitions must be a whole number of at least 1"]),
    ("[metrics]\nport = 'nine'\n", ["[metrics] port"]),
])
def test_the_config_file_is_checked_key_by_key(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for part in named:
        assert part in message, (part, message)


def test_every_key_that_settings_write_is_read_back(tmp_path):
    """What `up` hands its children (Settings.to_toml) passes the check, value for value."""
    from cxledger.config import GatewayKey, Topics

    settings = load_settings(environ={}).with_(
        kafka_bootstrap="k:9092", kafka_client={"client.rack": "a", "sasl.password": "pw"},
        schema_registry_url="http://r:8081", schema_registry_auth="u:p",
        clickhouse_dsn="http://w:pw@ch:8123/cx", topics=Topics(partitions=12, replication_factor=3),
        rules_path=Path("/etc/rules.toml"), log_format="json", log_level="warning",
        sink_batch_rows=5000, sink_batch_seconds=2.0, sink_derived_batch_seconds=1.0,
        live_clock=False, query_password="q",
        broker_port=9999, acks_wait_for_store=True, metrics_port=9200, metrics_host="0.0.0.0",
        gateway_keys=(GatewayKey("k", "a" * 64),), gateway_shutdown_flush=0.0,
        pii_hmac_key="x" * 40, seal_key="s" * 40)
    again = load_settings(write(tmp_path, settings.to_toml()), environ={})
    assert again == settings


def test_the_documented_names_keep_working(tmp_path):
    path = write(tmp_path, """
[kafka]
bootstrap = "kafka:9092"
[kafka.client]
"client.rack" = "zone-a"
"enable.ssl.certificate.verification" = false
[schema_registry]
url = "http://registry:8081"
[clickhouse]
store = "/var/lib/cx"
[topics]
replication_factor = 3
[topics.derived]
churn_risk = "cx.churn"
[rules]
path = "/etc/rules.toml"
[log]
level = "INFO"
[sink]
batch_rows = 20000
batch_seconds = 2
derived_batch_seconds = 1
[processors]
live_clock = true
[query]
port = 8123
[query.tls]
cert = "c.pem"
key = "k.pem"
[gateway]
rate = 100
[broker]
port = 9092
[metrics]
port = 9109
host = "127.0.0.1"
""")
    s = load_settings(path, environ={"CXLEDGER_LEDGER_PARTITIONS": "24",
                                     "CXLEDGER_LIVE_CLOCK": "off"})
    assert s.kafka_client == {"client.rack": "zone-a",
                              "enable.ssl.certificate.verification": "false"}
    assert (s.topics.partitions, s.topics.replication_factor) == (24, 3)
    assert s.topics.derived["churn_risk"] == "cx.churn" and s.log_level == "info"
    assert s.sink_batch_seconds == 2.0 and s.live_clock is False and s.gateway_rate == 100.0
    assert s.sink_derived_batch_seconds == 1.0
    assert load_settings(environ={}).sink_derived_batch_seconds == 0.15
    assert s.metrics_address() == ("127.0.0.1", 9109)
    assert load_settings(environ={}).metrics_address() == ("0.0.0.0", DEFAULT_METRICS_PORT)
    assert load_settings(environ={}).metrics_address("127.0.0.1") == ("127.0.0.1", 9108)


def _secret(settings, variable: str):
    return {"CXLEDGER_KAFKA_SASL_PASSWORD": settings.kafka_client.get("sasl.password"),
            "CXLEDGER_SCHEMA_REGISTRY_AUTH": settings.schema_registry_auth,
            "CXLEDGER_CLICKHOUSE_DSN": settings.clickhouse_dsn,
            "CXLEDGER_QUERY_PASSWORD": settings.query_password}[variable]


@pytest.mark.parametrize("variable", sorted(SECRET_FILE_VARIABLES))
def test_every_secret_can_be_read_from_a_file(tmp_path, variable):
    value = ("http://w:s3cr%40t@ch:8123/cx" if variable == "CXLEDGER_CLICKHOUSE_DSN"
             else "s3cr@t:value")
    secret = tmp_path / "secret"
    secret.write_text(value + "\n", encoding="utf-8")  # as mounted: with a final newline
    settings = load_settings(environ={SECRET_FILE_VARIABLES[variable]: str(secret)})
    assert _secret(settings, variable) == value
    assert "s3cr" not in repr(settings)
    # the variable itself wins over its file (which is then not even read)
    direct = value.replace("s3cr", "other")
    both = load_settings(environ={variable: direct,
                                  SECRET_FILE_VARIABLES[variable]: str(tmp_path / "missing")})
    assert _secret(both, variable) == direct


def test_an_unreadable_secret_file_is_named_and_its_content_never_shown(tmp_path):
    with pytest.raises(ConfigError, match="CXLEDGER_QUERY_PASSWORD_FILE: cannot read"):
        load_settings(environ={"CXLEDGER_QUERY_PASSWORD_FILE": str(tmp_path / "nope")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(environ={"CXLEDGER_QUERY_PASSWORD_FILE": str(empty)})
    with pytest.raises(ConfigError) as info:  # a secret of the wrong kind is not echoed
        load_settings(write(tmp_path, "[query]\npassword = ['hunter2']\n"), environ={})
    assert "[query] password must be a string" in str(info.value)
    assert "hunter2" not in str(info.value)
