"""One JSON log stream, the metrics families, the health endpoints."""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.error
import urllib.request

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from cxledger.config import load_settings
from cxledger.health import (Cached, Health, HealthServer, KafkaProbe, MetricsPortError,
                             child_metrics)
from cxledger.logs import configure_logging
from cxledger.metrics import DEAD_LETTER_REASONS, Metrics, dead_letter_reason


@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    hooks = (threading.excepthook,)
    try:
        yield stream
    finally:
        threading.excepthook = hooks[0]
        configure_logging("console", "warning")


def lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    out = []
    for line in text.splitlines():
        out.append(json.loads(line))  # every line is one JSON object
    return out


def test_every_source_of_log_lines_is_one_json_stream(json_log):
    from confluent_kafka.admin import AdminClient

    structlog.get_logger("cxledger.test").info("ours", n=1)
    structlog.get_logger("cxledger.test").debug("below the level")
    logging.getLogger("faust").info("faust's chatter")  # below the libraries' floor
    logging.getLogger("faust").warning("faust says %s", "careful")
    logging.getLogger("aiokafka").error("aiokafka fails", exc_info=ValueError("inner"))
    logging.getLogger("uvicorn.error").warning("uvicorn warns")
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join()
    settings = load_settings(environ={"CXLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    admin = AdminClient(settings.kafka_conf())  # librdkafka's FAIL lines, through logging
    with pytest.raises(Exception):
        admin.list_topics(timeout=0.5)
    admin.poll(0.5)
    got = lines(json_log)
    events = [(e["logger"], e["level"], e["event"]) for e in got]
    assert ("cxledger.test", "info", "ours") in events
    assert ("faust", "warning", "faust says careful") in events
    assert ("uvicorn.error", "warning", "uvicorn warns") in events
    assert not any("below the level" in e or "chatter" in e for _, _, e in events)
    failed = next(e for e in got if e["logger"] == "aiokafka")
    assert "ValueError: inner" in failed["exception"]
    crash = next(e for e in got if e.get("thread") == "doomed")
    assert crash["level"] == "error" and "ZeroDivisionError" in crash["exception"]
    kafka = [e for e in got if e["logger"] == "librdkafka"]
    assert kafka and all(e["level"] in ("error", "warning") for e in kafka), kafka[:2]
    assert all("timestamp" in e for e in got)


def test_kafka_clients_log_through_the_standard_library():
    conf = load_settings(environ={"CXLEDGER_KAFKA_BOOTSTRAP": "k:1"}).kafka_conf(x=1)
    assert conf["logger"] is logging.getLogger("librdkafka")


@pytest.mark.parametrize("reason, category", [
    ("message too short for Confluent framing (0 bytes)", "decode"),
    ("bad magic byte 110 (expected 0: Confluent wire format)", "decode"),
    ("schema id 14: Avro body does not decode: EOFError()", "decode"),
    ("schema id 14: 2 trailing bytes after the record", "decode"),
    ("unknown schema id 4242", "schema"),
    ("schema ids disagree: schema id 14 is contact.completed here, the body is ...", "schema"),
    ("no message key: a ledger event is keyed by its customer_id ('c-1')", "key"),
    ("message key b'x' is not the event's customer_id 'c-1': publish with the SDK", "key"),
    ("event_id conflict: 123 is already in the ledger with other content", "conflict"),
    ("refused by ledger_events: Code: 53. Type mismatch", "store-refused"),
    ("field 'nps': must be between 0 and 10, got 11", "value"),
])
def test_dead_letter_reasons_are_a_few_categories(reason, category):
    assert dead_letter_reason(reason) == category
    assert category in DEAD_LETTER_REASONS


def families(text: bytes | str) -> dict:
    text = text.decode() if isinstance(text, bytes) else text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str, **labels) -> float | None:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_the_metrics_parse_as_prometheus_text_with_bounded_labels():
    metrics = Metrics()
    owner = object()
    metrics.add_source(owner, lag=lambda: [("g", "t", 0, 5), ("g", "t", 1, -3)],
                       assigned=lambda: [("g", 2)], folds=lambda: [(0, 10, 3, 40, 2)],
                       sink=lambda: [("s", 1_700_000_000.0, False)])
    metrics.events_in.labels("g", "t").inc(7)
    metrics.dead_letter("unknown schema id 9", "g")
    metrics.query_seconds.labels("ok", "JSONEachRow").observe(0.01)
    fams = families(metrics.render())
    assert value(fams, "cxledger_events_in", "cxledger_events_in_total", consumer="g") == 7
    assert value(fams, "cxledger_dead_letters", "cxledger_dead_letters_total",
                 reason="schema", consumer="g") == 1
    assert value(fams, "cxledger_consumer_lag", "cxledger_consumer_lag", partition="0") == 5
    assert value(fams, "cxledger_consumer_lag", "cxledger_consumer_lag", partition="1") == 0
    assert value(fams, "cxledger_fold_customers", "cxledger_fold_customers") == 10
    assert value(fams, "cxledger_fold_window_partials", "cxledger_fold_window_partials") == 3
    assert value(fams, "cxledger_fold_ids_remembered", "cxledger_fold_ids_remembered") == 40
    assert value(fams, "cxledger_fold_duplicates", "cxledger_fold_duplicates") == 2
    assert value(fams, "cxledger_query_duration_seconds",
                 "cxledger_query_duration_seconds_count", outcome="ok") == 1
    assert "process_resident_memory_bytes" in fams
    metrics.remove_source(owner)  # a closed sink leaves no series behind
    assert not families(metrics.render())["cxledger_consumer_lag"].samples


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_endpoints_answer_with_the_reason():
    state = {"ready": False}
    health = Health(Metrics(), alive={"loop": lambda: (True, "ok")},
                    ready={"partitions": lambda: (state["ready"], "none assigned yet")})
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        assert get(server.url + "/healthz")[0] == 200
        code, body = get(server.url + "/readyz")
        assert code == 503 and json.loads(body)["reason"] == "partitions: none assigned yet"
        state["ready"] = True
        code, body = get(server.url + "/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        code, body = get(server.url + "/metrics")
        assert code == 200 and "cxledger_events_in" in families(body)
        assert get(server.url + "/nothing")[0] == 404
        with pytest.raises(MetricsPortError, match="CXLEDGER_METRICS_PORT"):
            HealthServer(health, "127.0.0.1", server.port).start()
    finally:
        server.stop()


def test_readyz_says_kafka_is_unreachable():
    settings = load_settings(environ={"CXLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    health = Health(Metrics(process=False),
                    ready={"kafka": Cached(KafkaProbe(settings, timeout=0.5))})
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        code, body = get(server.url + "/readyz")
    finally:
        server.stop()
    assert code == 503
    assert json.loads(body)["reason"].startswith("kafka: no answer from 127.0.0.1:1 within 0.5s")


def test_up_merges_its_childrens_metrics_with_a_child_label():
    child = Metrics()
    child.events_in.labels("cxledger-processors", "cx.ledger").inc(3)
    child_server = HealthServer(Health(child), "127.0.0.1", 0).start()
    parent = Metrics()
    parent.events_in.labels("cxledger-ledger-sink", "cx.ledger").inc(2)
    health = Health(parent, extra=child_metrics(lambda: [("worker-0", child_server.url),
                                                         ("gone", "http://127.0.0.1:1")]))
    try:
        text = health.render_metrics().decode()
    finally:
        child_server.stop()
    fams = families(text)  # one family per name: the parser would refuse a second TYPE line
    assert text.count("# TYPE cxledger_events_in_total counter") + text.count(
        "# TYPE cxledger_events_in counter") == 1
    assert value(fams, "cxledger_events_in", "cxledger_events_in_total",
                 consumer="cxledger-ledger-sink") == 2
    assert value(fams, "cxledger_events_in", "cxledger_events_in_total", child="worker-0") == 3
    assert value(fams, "process_resident_memory_bytes", "process_resident_memory_bytes",
                 child="worker-0") > 0
