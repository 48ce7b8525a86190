"""Helpers for integration tests: drive a sink until it caught up with a producer."""

from __future__ import annotations

import time

from sinks.kafka_sink import ClickHouseSink


def drain(sink: ClickHouseSink, targets: dict[tuple[str, int], int], timeout: float = 60.0) -> None:
    """Run ``sink`` batch by batch until it passed ``targets`` ((topic, partition) -> offset)."""
    deadline = time.monotonic() + timeout
    while any(sink.stats.positions.get(tp, 0) < end for tp, end in targets.items()):
        assert time.monotonic() < deadline, f"sink stuck at {sink.stats.positions}, want {targets}"
        sink.write(sink.poll_batch())



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
