"""Sinks under store faults: nothing lost, nothing committed early, bad rows isolated, and the
ledger keeps the first version of an event id. Faults are injected at the client layer
(tests/faults/store.py); broker, consumer, encoding and ClickHouse are the real ones."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from producers.sdk import LedgerProducer
from sinks.ledger_sink import LEDGER_GROUP, ledger_sink
from tests.faults.store import FaultyStore
from tests.reliability.report import record
from tests.integration.ledger_helpers import (assert_ledger_holds_exactly, drain, make_events,
                                              read_topic, run_until)

pytestmark = pytest.mark.integration


def committed(settings) -> int:
    consumer = Consumer(settings.kafka_conf(**{"group.id": LEDGER_GROUP}))
    try:
        parts = [TopicPartition(settings.topics.ledger, p)
                 for p in range(settings.topics.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def count(clickhouse, sql: str, **params) -> int:
    return clickhouse.query(sql, parameters=params).result_rows[0][0]


def test_a_store_that_refuses_for_a_while_gets_the_batch_again(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 1_000)
    with LedgerProducer(settings) as producer:
        producer.publish_many(events)
    store = FaultyStore(clickhouse, refuse=4)
    sink = ledger_sink(settings, store, batch_rows=5_000, batch_seconds=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        seen_fault = False
        deadline = time.monotonic() + 60
        while store.refuse and time.monotonic() < deadline:
            if sink.stats.fault:
                seen_fault = True
                assert "TIMEOUT_EXCEEDED" in sink.stats.fault
                assert committed(settings) == 0  # nothing committed for an unwritten batch
            time.sleep(0.1)
        assert seen_fault
        deadline = time.monotonic() + 60
        while sum(sink.stats.positions.values()) < len(events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert store.refused == 4 and sink.stats.retries == 4
    record("store_faults", faults=store.refused, kind="inserts refused or timed out")
    assert sink.stats.fault is None
    assert committed(settings) == len(events)
    assert_ledger_holds_exactly(clickhouse, events, prefix, settings.topics.partitions)


def test_rows_the_store_refuses_are_isolated_and_the_rest_is_written(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 600)
    poisoned = {f"{prefix}-3", f"{prefix}-20"}  # two of the 37 customers
    with LedgerProducer(settings) as producer:
        producer.publish_many(events)
    sink = ledger_sink(settings, FaultyStore(clickhouse, poison=poisoned), batch_rows=10_000)
    try:
        drain(sink, producer.positions)
    finally:
        sink.close()
    bad = [e for e in events if e["customer_id"] in poisoned]
    good = [e for e in events if e["customer_id"] not in poisoned]
    assert bad and sink.stats.deadlettered == len(bad)
    record("store_faults", faults=len(bad), dead_lettered=len(bad),
           kind="rows refused for a data reason")
    assert count(clickhouse, "SELECT count() FROM ledger WHERE customer_id LIKE {p:String}",
                 p=f"{prefix}-%") == len(good)
    rows = clickhouse.query(
        "SELECT reason, value_hex FROM deadletter_events FINAL WHERE source_topic = {t:String}",
        parameters={"t": settings.topics.ledger}).result_rows
    assert len(rows) == len(bad)
    assert all(reason.startswith("refused by ledger_events") and "INCORRECT_DATA" in reason
               for reason, _ in rows)
    dead_topic = read_topic(settings, settings.topics.deadletter, len(bad))
    assert sorted(m.value().hex() for m in dead_topic) == sorted(v for _, v in rows)


def test_the_ledger_keeps_the_first_version_of_an_event_id(settings, clickhouse):
    event_id = str(uuid.uuid4())
    first = {**make_events(f"c{uuid.uuid4().hex[:6]}", 1)[0], "event_id": event_id}
    other = {**first, "city": "lanzhou" if first["city"] != "lanzhou" else "hohhot"}
    for event in (first, other, first):  # three producers, as three channels' processes
        with LedgerProducer(settings) as producer:
            producer.publish(event)
    # one batch each, in the production loop: the second is decoded while the first is being
    # stored, and still screened against it
    sink = ledger_sink(settings, clickhouse, batch_rows=1)
    run_until(sink, producer.positions)
    stored = clickhouse.query("SELECT city FROM ledger_events WHERE event_id = {e:UUID}",
                              parameters={"e": event_id}).result_rows
    assert stored == [(first["city"],)]  # one physical row: the first version
    reasons = clickhouse.query(
        "SELECT reason FROM deadletter_events FINAL WHERE source_topic = {t:String}",
        parameters={"t": settings.topics.ledger}).result_rows
    assert len(reasons) == 1 and reasons[0][0].startswith(f"event_id conflict: {event_id}")
