"""The one loop every sink runs: consume a batch, write it to ClickHouse, then commit.

Order per batch (the only place that owns it):
  1. poll until ``batch_rows`` messages or ``batch_seconds`` elapsed;
  2. decode each message; undecodable ones go to the dead-letter topic and table with the reason;
  3. insert the rows, table by table, with a deduplication token per (topic, partition, offsets)
     so a retried identical batch is dropped by ClickHouse;
  4. commit the Kafka offsets only after ClickHouse accepted the batch.
A crash between 3 and 4 redelivers the batch: tables are ReplacingMergeTree keyed by event_id,
so what users query (FINAL / the dedup views) never shows an event twice.

Positions: a row records where its message sits in its partition of the ledger as
``offset_base[(topic, partition)] + Kafka offset``. On Kafka the base is 0. The single-machine
broker keeps topics in memory, so every start of the stack begins at offset 0 again; the stack
then passes as base the position after the last one stored, and positions keep growing across
restarts (replay reads the ledger back in position order).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import structlog
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from cxledger.config import Settings
from schemas.codec import DecodeError, WireCodec

log = structlog.get_logger("cxledger.sink")

# (table, column names) -> rows
Rows = dict[tuple[str, tuple[str, ...]], list[list[Any]]]
# Turns one decoded message into rows: (record, schema_id, partition, position)
#   -> [(table, columns, row)]
RowMapper = Callable[[dict[str, Any], int, int, int],
                     Iterable[tuple[str, tuple[str, ...], list[Any]]]]

# A message with this header is a position marker (see cxledger.pipeline), not data.
FENCE_HEADER = "cxledger-fence"

DEADLETTER_COLUMNS = ("source_topic", "source_partition", "source_offset", "reason", "key",
                      "value_hex")


def consumer_conf(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Consumer settings for at-least-once: manual commits, short group timeouts.

    ``max.poll.interval.ms`` is also the rebalance timeout a new group waits for; a small one
    makes a worker join in seconds rather than half a minute.
    """
    return settings.kafka_conf(**{
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 10_000,
        "session.timeout.ms": 6_000,
        "fetch.wait.max.ms": 50,
        **extra,
    })


@dataclass
class SinkStats:
    consumed: int = 0
    written: int = 0
    deadlettered: int = 0
    batches: int = 0
    last_write: float | None = None  # wall time of the last batch written
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next Kafka offset


def _is_fence(msg: Message) -> bool:
    return any(name == FENCE_HEADER for name, _ in (msg.headers() or ()))


class ClickHouseSink:
    def __init__(self, settings: Settings, client: Client, topics: list[str], group_id: str,
                 mapper: RowMapper, codec: WireCodec | None = None,
                 batch_rows: int | None = None, batch_seconds: float | None = None,
                 consumer_extra: dict[str, Any] | None = None,
                 offset_base: Mapping[tuple[str, int], int] | None = None):
        self.settings = settings
        self.client = client
        self.topics = topics
        self.mapper = mapper
        self.codec = codec or WireCodec()
        self.batch_rows = batch_rows or settings.sink_batch_rows
        self.batch_seconds = batch_seconds or settings.sink_batch_seconds
        self.name = group_id
        self.consumer = Consumer(consumer_conf(settings, group_id, **(consumer_extra or {})))
        self.deadletter = Producer(settings.kafka_conf(**{"enable.idempotence": True,
                                                         "linger.ms": 5}))
        self.offset_base = dict(offset_base or {})
        self.stats = SinkStats()
        self._subscribed = False

    def poll_batch(self) -> list[Message]:
        if not self._subscribed:
            self.consumer.subscribe(self.topics)
            self._subscribed = True
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = self.consumer.consume(min(self.batch_rows - len(batch), 5000), timeout=left)
            for msg in msgs:
                err = msg.error()
                if err is None:
                    batch.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", sink=self.name, error=str(err))
        return batch

    def write(self, batch: list[Message]) -> None:
        """Decode, insert, dead-letter and commit one batch (steps 2-4 above)."""
        if not batch:
            return
        rows: Rows = defaultdict(list)
        dead: list[list[Any]] = []
        offsets: dict[tuple[str, int], tuple[int, int]] = {}
        base = self.offset_base
        for msg in batch:
            tp = (msg.topic(), msg.partition())
            lo_hi = offsets.get(tp)
            offsets[tp] = (msg.offset(), msg.offset()) if lo_hi is None else (lo_hi[0], msg.offset())
            if msg.value() is None and _is_fence(msg):
                continue
            position = msg.offset() + base.get(tp, 0)
            try:
                record, schema_id = self.codec.decode(msg.value())
            except DecodeError as exc:
                dead.append(self._deadletter(msg, str(exc), position))
                continue
            for table, columns, row in self.mapper(record, schema_id, msg.partition(), position):
                rows[(table, columns)].append(row)
        # Positions, not offsets: on the local broker offsets start again at 0 after a restart,
        # and a token seen before would make ClickHouse drop a new batch as a duplicate.
        token = ",".join(f"{t}:{p}:{lo + base.get((t, p), 0)}-{hi + base.get((t, p), 0)}"
                         for (t, p), (lo, hi) in sorted(offsets.items()))
        for (table, columns), table_rows in rows.items():
            self.client.insert(table, table_rows, column_names=list(columns),
                               settings={"insert_deduplication_token": f"{self.name}/{table}/{token}"})
        if dead:
            self.client.insert("deadletter_events", dead, column_names=list(DEADLETTER_COLUMNS))
            self.deadletter.flush(30)
        self._commit([TopicPartition(t, p, hi + 1) for (t, p), (_, hi) in offsets.items()])
        self.stats.consumed += len(batch)
        self.stats.written += sum(len(r) for r in rows.values())
        self.stats.deadlettered += len(dead)
        self.stats.batches += 1
        self.stats.last_write = time.time()
        for (t, p), (_, hi) in offsets.items():
            self.stats.positions[(t, p)] = hi + 1
        log.debug("batch written", sink=self.name, messages=len(batch), deadlettered=len(dead))

    def _commit(self, offsets: list[TopicPartition]) -> None:
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def _deadletter(self, msg: Message, reason: str, position: int) -> list[Any]:
        value = msg.value() or b""
        key = msg.key()
        self.deadletter.produce(
            self.settings.topics.deadletter, value=value, key=key,
            headers=[("reason", reason.encode()), ("dead_lettered_by", self.name.encode()),
                     ("source_topic", msg.topic().encode()),
                     ("source_partition", str(msg.partition()).encode()),
                     ("source_offset", str(msg.offset()).encode())])
        log.warning("dead-lettered", sink=self.name, topic=msg.topic(),
                    partition=msg.partition(), offset=msg.offset(), reason=reason)
        return [msg.topic(), msg.partition(), position, reason,
                key.decode(errors="replace") if key else None, value.hex()]

    def run(self, stop: threading.Event) -> None:
        """Write batches until ``stop`` is set; the last batch is written before returning."""
        log.info("sink started", sink=self.name, topics=self.topics)
        try:
            while not stop.is_set():
                self.write(self.poll_batch())
        finally:
            self.close()

    def close(self) -> None:
        if self.deadletter is None:
            return  # already closed
        try:
            self.consumer.close()
        finally:
            self.deadletter.flush(10)
            self.deadletter = None  # release its connections now, while the broker is up
        log.info("sink stopped", sink=self.name, consumed=self.stats.consumed,
                 written=self.stats.written, deadlettered=self.stats.deadlettered)


def positions_in_store(client: Client, settings: Settings) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the position after the last one the store holds: the offset base
    for sinks reading a broker that started empty (see the module docstring)."""
    ledger = settings.topics.ledger
    out: dict[tuple[str, int], int] = {}
    rows = client.query(
        "SELECT {ledger:String}, kafka_partition, max(kafka_offset) + 1 FROM ledger_events "
        "GROUP BY kafka_partition UNION ALL "
        "SELECT toString(source_topic), source_partition, max(source_offset) + 1 "
        "FROM deadletter_events GROUP BY source_topic, source_partition",
        parameters={"ledger": ledger}).result_rows
    for topic, partition, after in rows:
        out[(topic, partition)] = max(out.get((topic, partition), 0), int(after))
    return out
