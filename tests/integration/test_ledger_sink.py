"""Real broker -> ledger sink -> real ClickHouse engine (chDB)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from producers.sdk import LedgerProducer
from sinks.ledger_sink import ledger_sink

from tests.integration.ledger_helpers import (assert_ledger_holds_exactly, drain, make_events,
                                              read_topic)

pytestmark = pytest.mark.integration




def test_published_events_arrive_in_clickhouse_exactly(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 2_000)
    with LedgerProducer(settings) as producer:
        rejected = producer.publish_many(events)
    assert rejected == []
    sink = ledger_sink(settings, clickhouse, batch_rows=700)
    try:
        drain(sink, producer.positions)
    finally:
        sink.close()
    assert_ledger_holds_exactly(clickhouse, events, prefix, settings.topics.partitions)


class CrashBeforeCommit(Exception):
    pass


def test_a_redelivered_batch_does_not_duplicate_rows(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 600)
    with LedgerProducer(settings) as producer:
        producer.publish_many(events)
    published = producer.positions

    crashing = ledger_sink(settings, clickhouse, batch_rows=10_000, batch_seconds=3.0)

    def crash(offsets):
        raise CrashBeforeCommit()

    crashing._commit = crash  # the process dies after ClickHouse accepted the batch
    with pytest.raises(CrashBeforeCommit):
        drain(crashing, published)
    crashing.consumer.close()
    count = "SELECT count() FROM {t:Identifier} WHERE customer_id LIKE {p:String}"
    params = {"p": f"{prefix}-%"}
    assert clickhouse.query(count, parameters={**params, "t": "ledger"}).result_rows[0][0] == 600

    restarted = ledger_sink(settings, clickhouse, batch_rows=250)  # other batch boundaries
    try:
        drain(restarted, published)
    finally:
        restarted.close()
    assert restarted.stats.consumed == 600  # everything was delivered again
    assert clickhouse.query(count, parameters={**params, "t": "ledger"}).result_rows[0][0] == 600
    clickhouse.command("OPTIMIZE TABLE ledger_events FINAL")
    assert clickhouse.query(count, parameters={**params, "t": "ledger_events"}).result_rows[0][0] == 600


def test_undecodable_messages_go_to_the_dead_letter_topic(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    raw = Producer(settings.kafka_conf())
    with LedgerProducer(settings) as producer:
        raw.produce(settings.topics.ledger, key=f"{prefix}-x".encode(), value=b"not avro at all")
        raw.produce(settings.topics.ledger, key=f"{prefix}-y".encode(),
                    value=b"\x00\x00\x00\x10\x92" + b"\x01" * 8)  # unknown schema id 4242
        raw.flush(10)
        producer.publish_many(make_events(prefix, 20))
    sink = ledger_sink(settings, clickhouse)
    try:
        drain(sink, producer.positions)
    finally:
        sink.close()
    assert clickhouse.query("SELECT count() FROM ledger WHERE customer_id LIKE {p:String}",
                            parameters={"p": f"{prefix}-%"}).result_rows[0][0] == 20
    dead = clickhouse.query(
        "SELECT key, reason FROM deadletter_events FINAL WHERE source_topic = {t:String}"
        " ORDER BY key", parameters={"t": settings.topics.ledger}).result_rows
    assert dead == [(f"{prefix}-x", "bad magic byte 110 (expected 0: Confluent wire format)"),
                    (f"{prefix}-y", "unknown schema id 4242")]
    got = read_topic(settings, settings.topics.deadletter, expected=2)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in got)
    assert reasons == ["bad magic byte 110 (expected 0: Confluent wire format)",
                       "unknown schema id 4242"]


def test_each_sink_gathers_its_batches_for_its_own_time(settings, clickhouse):
    """The ledger sink waits ``[sink] batch_seconds`` to fill a batch; the derived sink, whose
    rows are what dashboards show live, ``derived_batch_seconds``; an explicit argument wins."""
    from sinks.derived_sink import derived_sink

    settings = settings.with_(sink_batch_seconds=0.5, sink_derived_batch_seconds=0.15)
    sinks = [ledger_sink(settings, clickhouse), derived_sink(settings, clickhouse),
             derived_sink(settings, clickhouse, batch_seconds=2.0)]
    try:
        assert [sink.batch_seconds for sink in sinks] == [0.5, 0.15, 2.0]
    finally:
        for sink in sinks:
            sink.close()
