"""Helpers for integration tests: drive a sink until it caught up with a producer."""

from __future__ import annotations

import threading
import time

from sinks.kafka_sink import ClickHouseSink


def drain(sink: ClickHouseSink, targets: dict[tuple[str, int], int], timeout: float = 60.0) -> None:
    """Run ``sink`` batch by batch until it passed ``targets`` ((topic, partition) -> offset)."""
    deadline = time.monotonic() + timeout
    while not _passed(sink, targets):
        assert time.monotonic() < deadline, f"sink stuck at {sink.stats.positions}, want {targets}"
        sink.write(sink.poll_batch())


def run_until(sink: ClickHouseSink, targets: dict[tuple[str, int], int],
              timeout: float = 60.0) -> None:
    """Run ``sink`` with its production loop (``run``: the next batch polled and decoded
    while the store thread writes the one before) until it passed ``targets``; it is closed
    after."""
    deadline = time.monotonic() + timeout
    sink.run(threading.Event(),
             until=lambda: time.monotonic() > deadline or _passed(sink, targets))
    assert _passed(sink, targets), f"sink stuck at {sink.stats.positions}, want {targets}"


def _passed(sink: ClickHouseSink, targets: dict[tuple[str, int], int]) -> bool:
    return all(sink.stats.positions.get(tp, 0) >= end for tp, end in targets.items())



def read_topic(settings, topic: str, expected: int, timeout: float = 20.0) -> list:
    """Every message of ``topic`` (by partition assignment: no consumer-group join to wait for)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka_conf(**{"group.id": "test-reader",
                                               "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            got += [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
        return got
    finally:
        consumer.close()


def read_until_idle(settings, topics, idle: float = 2.0, first: float = 15.0,
                    timeout: float = 60.0) -> list:
    """Every message of ``topics`` once their writers have stopped: one reader by partition
    assignment, until nothing new has come for ``idle`` seconds after the first messages
    (``first`` seconds for those: the assignment and the first fetch). The local broker's end
    offsets cannot be trusted (see the README's known limits)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka_conf(**{"group.id": "test-reader",
                                               "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
        got: list = []
        deadline = time.monotonic() + timeout
        last, wait = time.monotonic(), first
        while time.monotonic() < deadline and time.monotonic() - last < wait:
            batch = [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
            if batch:
                got += batch
                last, wait = time.monotonic(), idle
        return got
    finally:
        consumer.close()


def make_events(prefix: str, n: int) -> list[dict]:
    """``n`` valid events of four types over 37 customers named ``<prefix>-<i>``."""
    from tests.unit.events import billing, contact, envelope, survey

    makers = [contact, survey, billing,
              lambda **kw: envelope("complaint.filed", complaint_id=f"{prefix}-cp",
                                    category="logistics", severity="urgent", **kw)]
    return [makers[i % len(makers)](customer_id=f"{prefix}-{i % 37}",
                                    occurred_at=1_741_000_000_000 + i * 1_000)
            for i in range(n)]


def assert_ledger_holds_exactly(client, events: list[dict], prefix: str, partitions: int) -> None:
    """ClickHouse's ``ledger`` holds each of ``events`` once, with the same contents, and each
    customer's events on one partition in time order."""
    import json

    from schemas.jsonform import to_json_form
    from schemas.validation import normalize_event

    rows = client.query(
        "SELECT toString(event_id), event_type, toUnixTimestamp64Milli(occurred_at), customer_id,"
        " channel, city, agent_id, payload, schema_id, kafka_partition FROM ledger"
        " WHERE customer_id LIKE {p:String}", parameters={"p": f"{prefix}-%"}).result_rows
    assert len(rows) == len(events)
    expected = {e["event_id"]: normalize_event(e) for e in events}
    for event_id, event_type, occurred_ms, customer, channel, city, agent, payload, sid, part in rows:
        record = expected.pop(event_id)
        assert (event_type, occurred_ms, customer, channel, city, agent) == (
            record["event_type"], record["occurred_at"], record["customer_id"],
            record["channel"], record["city"], record["agent_id"])
        assert json.loads(payload) == json.loads(json.dumps(to_json_form(record)))
        assert sid > 0 and 0 <= part < partitions
    assert expected == {}
    per_customer = client.query(
        "SELECT customer_id, uniqExact(kafka_partition),"
        " arraySort(x -> x.1, groupArray((kafka_offset, occurred_at))) AS seq"
        " FROM ledger WHERE customer_id LIKE {p:String} GROUP BY customer_id",
        parameters={"p": f"{prefix}-%"}).result_rows
    for _, used_partitions, seq in per_customer:
        assert used_partitions == 1
        times = [t for _, t in seq]
        assert times == sorted(times)
