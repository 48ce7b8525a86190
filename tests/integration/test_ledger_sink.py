"""Real broker -> ledger sink -> real ClickHouse engine (chDB)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from producers.sdk import LedgerProducer
from sinks.ledger_sink import ledger_sink

from tests.integration.ledger_helpers import (assert_ledger_holds_exactly, drain, make_events,
                                              read_topic, run_until)

pytestmark = pytest.mark.integration




def test_published_events_arrive_in_clickhouse_exactly(settings, clickhouse):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 2_000)
    with LedgerProducer(settings) as producer:
        rejected = producer.publish_many(events)
    assert rejected == []
    sink = ledger_sink(settings, clickhouse, batch_rows=700)
    run_until(sink, producer.positions)  # three batches or more, two in hand at a time
    assert sink.stats.batches >= 3
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


def test_what_the_sdk_sealed_is_not_checked_again_and_nothing_else_goes_unchecked(settings,
                                                                                  clickhouse):
    """With a seal key (schemas.seal), events the SDK published carry its seal and are stored;
    a message sealed with the key is not checked again (here: a key that is not its customer's,
    which the check refuses); a seal of another key, or of other bytes, is checked, and
    refused."""
    from schemas.codec import WireCodec
    from schemas.seal import SEAL_HEADER, Sealer
    from schemas.validation import normalize_event

    key = "k" * 40
    settings = settings.with_(seal_key=key)
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 30)
    with LedgerProducer(settings) as producer:
        assert producer.publish_many(events) == []
    sent = read_topic(settings, settings.topics.ledger, expected=30)
    assert all(Sealer(key).verifies(m.key(), m.value(), m.headers()) for m in sent)

    codec, positions = WireCodec(), dict(producer.positions)

    def delivered(err, msg):
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        positions[tp] = max(positions.get(tp, 0), msg.offset() + 1)

    def miskeyed(n: int) -> tuple[bytes, bytes]:
        record = normalize_event(make_events(f"{prefix}m{n}", 1)[0])
        return f"{prefix}-not-its-customer-{n}".encode(), codec.encode(record)

    raw = Producer(settings.kafka_conf())
    trusted_key, trusted = miskeyed(1)
    forged_key, forged = miskeyed(2)
    moved_key, moved = miskeyed(3)
    _, other = miskeyed(4)
    for k, v, seal in [(trusted_key, trusted, Sealer(key).seal(trusted_key, trusted)),
                       (forged_key, forged, Sealer("x" * 40).seal(forged_key, forged)),
                       (moved_key, moved, Sealer(key).seal(moved_key, other))]:
        raw.produce(settings.topics.ledger, key=k, value=v, headers=[(SEAL_HEADER, seal)],
                    on_delivery=delivered)
    raw.flush(10)

    sink = ledger_sink(settings, clickhouse)
    try:
        drain(sink, positions)
    finally:
        sink.close()
    stored = clickhouse.query("SELECT customer_id FROM ledger WHERE customer_id LIKE {p:String}",
                              parameters={"p": f"{prefix}%"}).result_rows
    assert len(stored) == 31 and (f"{prefix}m1-0",) in stored
    dead = clickhouse.query(
        "SELECT key, reason FROM deadletter_events FINAL WHERE source_topic = {t:String}"
        " ORDER BY key", parameters={"t": settings.topics.ledger}).result_rows
    assert [k for k, _ in dead] == [forged_key.decode(), moved_key.decode()]
    assert all("is not the event's customer_id" in reason for _, reason in dead)
