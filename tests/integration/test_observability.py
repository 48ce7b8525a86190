"""Health, metrics and logs of the long-running services on the real broker:
``cxledger sink`` and ``cxledger process`` as deployed (subprocesses, ``--log-format
json``), the query endpoint, the schema id check at start, and views that follow the rules."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from cxledger.localstack import LocalBroker, free_port
from producers.sdk import LedgerProducer
from tests.integration.ledger_helpers import make_events

pytestmark = pytest.mark.integration

GARBAGE = b"not avro at all"


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(url: str) -> list:
    """Every sample of ``url``/metrics (which must parse as Prometheus text)."""
    code, body = get(f"{url}/metrics")
    assert code == 200
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def metric(found: list, name: str, **labels) -> float:
    """The sum of ``name``'s samples with these labels (0 when there is none)."""
    return sum(s.value for s in found if s.name == name
               and all(s.labels.get(k) == str(v) for k, v in labels.items()))


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(interval)


def readiness_until_ready(url: str, proc: subprocess.Popen, timeout: float) -> list[str]:
    """The /readyz reasons seen until it answers 200 (the port opens early: 503s first)."""
    reasons, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            code, body = get(f"{url}/readyz", timeout=5)
        except OSError:  # not listening yet
            time.sleep(0.05)
            continue
        if code == 200:
            return reasons
        assert code == 503
        reasons.append(json.loads(body)["reason"])
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout:.0f}s: {reasons[-3:]}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def assert_json_lines(path: Path) -> int:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            raise AssertionError(f"{path.name}:{number} is not a JSON object: {line[:300]!r}")
    return len(lines)


def start(command: list[str], settings, tmp_path: Path, name: str, **env_extra):
    config = tmp_path / f"{name}.toml"
    config.write_text(settings.to_toml(), encoding="utf-8")
    port = free_port()
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxledger.cli", "--config", str(config), "--log-format", "json",
         *command, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1", **env_extra})
    return proc, f"http://127.0.0.1:{port}", log


def publish_with_garbage(settings, prefix: str, n: int) -> list[dict]:
    """``n`` valid events, then one undecodable message; returns the events."""
    events = make_events(prefix, n)
    with LedgerProducer(settings) as producer:
        producer.publish_many(events)
    raw = Producer(settings.kafka_conf())
    raw.produce(settings.topics.ledger, key=f"{prefix}-0".encode(), value=GARBAGE)
    raw.flush(10)
    return events


def test_the_sink_serves_health_and_metrics_and_logs_json(settings, tmp_path):
    """`cxledger sink` as deployed: /readyz 503 until its partitions are assigned, then 200;
    /metrics parses and its counters follow the events; every output line is JSON."""
    prefix = f"o{uuid.uuid4().hex[:6]}"
    own = settings.with_(store=tmp_path / "store")  # a store of its own (one process per chDB)
    proc, url, log = start(["sink"], own, tmp_path, "sink")
    try:
        reasons = readiness_until_ready(url, proc, timeout=90)
        assert reasons and any("partition" in r or "no sink started" in r for r in reasons)
        assert get(f"{url}/healthz")[0] == 200
        ledger, group = settings.topics.ledger, "cxledger-ledger-sink"

        def ledger_sink_assigned():  # ready once either sink has partitions; each reports its
            now = samples(url)      # own after its first poll (the derived sink's is shorter)
            return now if metric(now, "cxledger_consumer_assigned_partitions",
                                 group=group) else None

        before = wait_until(ledger_sink_assigned, 30, "the ledger sink's partitions")
        assert metric(before, "cxledger_consumer_assigned_partitions", group=group) == 3
        publish_with_garbage(settings, prefix, 120)
        found = wait_until(lambda: (lambda s: s if metric(
            s, "cxledger_events_in_total", consumer=group, topic=ledger) >= 121 else None)(
            samples(url)), 30, "the sink consumed the events")
        assert metric(found, "cxledger_sink_rows_written_total", sink=group,
                      table="ledger_events") >= 120
        assert metric(found, "cxledger_dead_letters_total", reason="decode", consumer=group) >= 1
        assert metric(found, "cxledger_events_out_total", producer=group,
                      topic=settings.topics.deadletter) >= 1
        assert metric(found, "cxledger_sink_batch_messages_count", sink=group) >= 1
        assert metric(found, "cxledger_sink_write_seconds_count", sink=group) >= 1
        assert metric(found, "cxledger_sink_store_fault", sink=group) == 0
        assert metric(found, "process_resident_memory_bytes") > 0
        lag = wait_until(lambda: [s for s in samples(url) if s.name == "cxledger_consumer_lag"
                                  and s.labels.get("topic") == ledger], 10, "lag per partition")
        assert {s.labels["partition"] for s in lag} == {"0", "1", "2"}
        assert all(s.labels["group"] == group for s in lag)
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert assert_json_lines(log) >= 3


def test_the_worker_serves_health_and_metrics_and_logs_json(tmp_path):
    """`cxledger process` on a broker of its own: /readyz 503 before partitions are assigned,
    200 once they are, 503 again when Kafka goes away; /metrics counts what flows through;
    every output line (faust's, aiokafka's and librdkafka's included) is JSON."""
    from cxledger.config import load_settings
    from cxledger.topics import create_topics

    broker = LocalBroker(log_file=tmp_path / "tansu.log")
    bootstrap = broker.start()
    try:
        settings = load_settings(environ={}).with_(kafka_bootstrap=bootstrap, live_clock=False)
        settings = settings.with_(topics=settings.topics.__class__(partitions=2))
        create_topics(settings)
        proc, url, log = start(["process"], settings, tmp_path, "worker")
        try:
            reasons = readiness_until_ready(url, proc, timeout=120)
            assert any("partition" in r for r in reasons), reasons
            prefix = f"w{uuid.uuid4().hex[:6]}"
            events = publish_with_garbage(settings, prefix, 60)
            group, ledger = settings.topics.processors_app, settings.topics.ledger
            scored = settings.topics.for_derived("satisfaction.scored")
            # events in are counted when a batch arrives, events out once the broker has
            # acknowledged the batch's derived events: wait for both, not only the first
            found = wait_until(lambda: (lambda s: s if metric(
                s, "cxledger_events_in_total", consumer=group, topic=ledger) >= 61 and metric(
                s, "cxledger_dead_letters_total", reason="decode", consumer=group) >= 1
                and metric(s, "cxledger_events_out_total", producer=group, topic=scored) >= 1
                else None)(samples(url)), 60, "the worker folded the events")
            derived = {s.labels["topic"] for s in found if s.name == "cxledger_events_out_total"
                       and s.value > 0}
            assert scored in derived
            assert settings.topics.deadletter in derived
            assert metric(found, "cxledger_fold_customers") >= 1
            assert metric(found, "cxledger_fold_ids_remembered") == 60
            with LedgerProducer(settings) as producer:  # the same events again: none folded
                producer.publish_many(events)

            def all_skipped():
                now = samples(url)
                return now if metric(now, "cxledger_fold_duplicates") >= 60 else None

            again = wait_until(all_skipped, 60, "the worker skipped the events published again")
            assert metric(again, "cxledger_fold_duplicates") == 60
            assert metric(again, "cxledger_fold_ids_remembered") == 60
            assert metric(found, "cxledger_consumer_assigned_partitions", group=group) == 2
            assert metric(found, "cxledger_processor_batch_seconds_count") >= 1
            wait_until(lambda: {s.labels["partition"] for s in samples(url)
                                if s.name == "cxledger_consumer_lag"} == {"0", "1"}, 10,
                       "lag of both partitions")
            broker.stop()  # Kafka goes away
            code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(
                get(f"{url}/readyz")), 30, "readyz says Kafka is gone")
            assert json.loads(body)["reason"].startswith("kafka: no answer from")
            assert get(f"{url}/healthz")[0] == 200  # alive: nothing to restart for
        finally:
            stop(proc, timeout=3)  # faust's shutdown waits for a Kafka that is gone: kill it
    finally:
        broker.stop()
    assert assert_json_lines(log) >= 3


def test_the_query_endpoint_measures_its_queries(store_dir, clickhouse):
    import base64

    from cxledger.metrics import Metrics
    from cxledger.query_endpoint import QueryEndpoint

    metrics = Metrics(process=False)
    endpoint = QueryEndpoint(store_dir, {"reader": "pw"}, port=0, metrics=metrics)
    endpoint.start()
    auth = {"Authorization": "Basic " + base64.b64encode(b"reader:pw").decode()}
    try:
        for query, headers in [("SELECT 1 FORMAT JSONEachRow", auth),
                               ("SELECT nonsense(", auth), ("SELECT 1", {})]:
            request = urllib.request.Request(f"{endpoint.url}/", data=query.encode(),
                                             headers=headers)
            try:
                urllib.request.urlopen(request, timeout=30).read()
            except urllib.error.HTTPError:
                pass
    finally:
        endpoint.stop()
    found = [s for f in text_string_to_metric_families(metrics.render().decode())
             for s in f.samples]
    name = "cxledger_query_duration_seconds_count"
    assert metric(found, name, outcome="ok", format="JSONEachRow") == 1
    assert metric(found, name, outcome="client_error") == 2  # a syntax error, no credentials
    assert metric(found, "cxledger_queries_in_flight") == 0


# -- schema ids at start ----------------------------------------------------------------------
def registry_framed(settings, n: int = 3) -> None:
    """``n`` valid events framed with a fresh registry's ids (tests/unit/test_schema_ids.py)."""
    from schemas.validation import normalize_event
    from tests.unit.test_schema_ids import registry_codec_with_other_ids

    codec = registry_codec_with_other_ids()
    raw = Producer(settings.kafka_conf())
    for event in make_events(f"r{uuid.uuid4().hex[:6]}", n):
        record = normalize_event(event)
        raw.produce(settings.topics.ledger, key=record["customer_id"].encode(),
                    value=codec.encode(record))
    raw.flush(10)


def test_a_process_refuses_to_start_on_another_mapping_of_schema_ids(settings, tmp_path):
    from cxledger.schema_ids import SchemaIdError, check_schema_ids
    from producers.sdk import make_codec

    codec = make_codec(settings)
    topics = [settings.topics.ledger]
    check_schema_ids(settings, codec, topics)  # empty topics: nothing to say
    publish_with_garbage(settings, f"g{uuid.uuid4().hex[:6]}", 5)
    check_schema_ids(settings, codec, topics)  # our ids, and garbage: fine
    registry_framed(settings)
    with pytest.raises(SchemaIdError) as info:
        check_schema_ids(settings, codec, topics)
    message = str(info.value)
    assert message.startswith(f"refusing to start: {settings.topics.ledger} partition ")
    assert "schemas/ids.json" in message and "CXLEDGER_SCHEMA_REGISTRY_URL" in message
    # the command itself: one line, a non-zero exit, nothing consumed
    proc, _, log = start(["process"], settings, tmp_path, "refused")
    assert proc.wait(timeout=60) != 0
    text = log.read_text()
    assert "refusing to start" in text and "Traceback" not in text, text[-2000:]


def test_a_registry_without_our_schemas_is_refused(settings):
    from cxledger.schema_ids import SchemaIdError, check_schema_ids
    from producers.sdk import make_codec

    with_registry = settings.with_(schema_registry_url="mock://empty")  # nothing registered
    with pytest.raises(SchemaIdError, match="cxledger schemas register"):
        check_schema_ids(with_registry, make_codec(with_registry), [settings.topics.ledger])


# -- views, alerts and dashboards follow the configured rules -----------------------------------
def rules_file(tmp_path: Path, red: int) -> Path:
    from processors.rules import DEFAULT_RULES_PATH

    text = re.sub(r"(?m)^red_below = \d+", f"red_below = {red}",
                  DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    path = tmp_path / f"rules-{red}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def alert_threshold(client) -> float:
    query = client.query("SELECT as_select FROM system.tables WHERE database = currentDatabase()"
                         " AND name = 'satisfaction_alerts'").result_rows[0][0]
    return float(re.search(r"composite < (\d+(?:\.\d*)?)", query).group(1))


def test_the_pipeline_builds_the_views_from_the_configured_rules(settings, clickhouse, tmp_path):
    from cxledger.pipeline import Pipeline
    from sinks.clickhouse import create_tables

    try:
        with Pipeline(settings.with_(rules_path=rules_file(tmp_path, 70))):
            assert alert_threshold(clickhouse) == 70
    finally:
        create_tables(clickhouse)  # the shipped rules again, for the other tests
    assert alert_threshold(clickhouse) == 80


def test_db_migrate_recreates_the_views_when_the_rules_change(tmp_path):
    """A store made with one rules file, migrated with another: the views follow."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}

    def migrate(red: int | None) -> str:
        extra = {"CXLEDGER_RULES": str(rules_file(tmp_path, red))} if red else {}
        out = subprocess.run([sys.executable, "-m", "cxledger.cli", "--log-format", "json", "db",
                              "migrate", "--store", str(store)], env={**env, **extra},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stderr

    def threshold() -> float:
        script = ("import chdb, sys; print(chdb.connect(sys.argv[1]).query(\"SELECT as_select "
                  "FROM system.tables WHERE name = 'satisfaction_alerts'\", 'TSVRaw').bytes()"
                  ".decode())")
        text = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True,
                              text=True, timeout=60).stdout
        return float(re.search(r"composite < (\d+(?:\.\d*)?)", text).group(1))

    migrate(70)
    assert threshold() == 70
    log = migrate(None)  # the shipped rules: 80
    assert "views recreated" in log and "satisfaction_alerts" in log
    assert threshold() == 80
