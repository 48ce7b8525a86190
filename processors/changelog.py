"""The processors' state on Kafka: a compacted changelog topic, written and read by the
workers themselves.

``<app>-fold-state-changelog`` (app: ``topics.processors_app``, by default
``cxledger-processors``) holds one record per key ``"<partition>/<customer>"`` and
``"<partition>/"`` (the partition's own state: clock, window partials, and ``position``, the
ledger offset after the last message folded), on the changelog partition of the ledger
partition, value the state as JSON. Every customer record carries ``pos``, the partition
position of the batch that wrote it; a customer the fold forgot is a record
``{"forgotten": true}``. The open satisfaction window rows of one bucket (window, window_start
and city: one minute or one day of a city, at most one row per channel and tier) are a record
of their own, ``"<partition>/\x1fbucket<window>/<window_start>/<city>"``
(``processors.batch.window_bucket_key``; the partition record would otherwise grow with every
open window, past what a Kafka message may hold, and a record per row cost the broker and the
worker a message per row: at 5,000 events/s, 0.8 per ledger event). A bucket is written whole
when one of its rows changed, with ``pos`` like a customer; a bucket closed for good is deleted
(a tombstone) one batch after a partition record whose clock closed it. Records of one row
each, ``"<partition>/\x1fwindow[...key]"``, are the layout before buckets: read back, written
again as buckets, then deleted. The ids of the customer events folded on the partition
(processors.folded_ids: a duplicate of a recent event is not folded) are records of 64 ids,
in fold order, ``"<partition>/\x1fids/<n>"`` (``processors.batch.folded_ids_key``), with
``pos`` like a customer: a batch writes the last, partial one again, and the ones it filled;
the chunks of a generation of ids forgotten are deleted one batch later, as window buckets
are.

Per batch a worker writes the changed customers first and the partition record last, each
batch only after its derived events were acknowledged. A worker killed in the middle leaves a
torn batch: customer records newer than the last partition record. ``read_state`` therefore
reads the whole partition of the log, takes the last partition record (position P), and for
each customer the last record with ``pos`` <= P: exactly the state at P, whatever was cut short,
and whatever the broker reports as the end of the log (Tansu 0.6 reports the last batch's base
offset + 1, so the log is read until it is exhausted, not up to that figure). The worker then
skips input below P and folds again any input between P and where its consumer starts.

The single-machine broker starts empty, so ``cxledger up`` folds the ledger in the store and
writes the result here (``seed_state``, position 0: the broker's ledger is empty) before any
worker starts.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterable

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cxledger.config import Settings
from processors.batch import (PARTITION_STATE_KEY, PartitionFolds, decode_state, encode_state,
                              folded_ids_key, state_key, window_bucket_key, window_state_key)
from processors.folded_ids import to_plain as folded_to_plain

log = structlog.get_logger("cxledger.processors")

STATE_TABLE = "fold-state"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.topics.processors_app}-{STATE_TABLE}-changelog"


def create_changelog_topic(settings: Settings, timeout: float = 15.0) -> None:
    create_compacted_topic(settings, changelog_topic(settings), settings.topics.partitions,
                           timeout)


def create_compacted_topic(settings: Settings, name: str, partitions: int,
                           timeout: float = 15.0) -> None:
    """Create a compacted topic (a state changelog) unless it exists."""
    admin = AdminClient(settings.kafka_conf())
    topic = NewTopic(name, num_partitions=partitions,
                     replication_factor=settings.topics.replication_factor,
                     config={"cleanup.policy": "compact",  # as cxledger.topics sets it
                             "min.compaction.lag.ms": "3600000"})
    for future in admin.create_topics([topic], request_timeout=timeout).values():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def seed_state(settings: Settings, folds: PartitionFolds, timeout: float = 60.0) -> int:
    """Write every customer's and partition's state of ``folds`` to the changelog; returns
    the number of records written."""
    create_changelog_topic(settings)
    topic = changelog_topic(settings)
    producer = Producer(settings.kafka_conf(**{"enable.idempotence": True, "acks": "all",
                                               "linger.ms": 20, "compression.type": "lz4"}))
    failures: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(str(err))

    def send(partition: int, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value,
                                 partition=partition, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.05)

    written = 0
    for partition, fold in folds.folds.items():
        for customer_id in fold.customers:
            send(partition, state_key(partition, customer_id),
                 encode_state({**fold.customer_state(customer_id), "pos": 0}))
            written += 1
        for chunk, ids in fold.folded.all_chunks():
            send(partition, folded_ids_key(partition, chunk),
                 encode_state({"ids": folded_to_plain(ids), "pos": 0}))
            written += 1
        windows = fold.windows
        for bucket, rows in windows.buckets.items():
            send(partition, window_bucket_key(partition, bucket),
                 encode_state({"windows": [[list(key), *windows.row_plain(row)]
                                           for key, row in rows.items()], "pos": 0}))
            written += 1
    _settle(producer, failures, timeout, topic)
    for partition, fold in folds.folds.items():  # last, one record per batch (see above)
        snapshot = fold.snapshot_partition(window_rows=False)
        snapshot["position"] = 0  # the state holds the store's ledger; the broker's is empty
        send(partition, state_key(partition, PARTITION_STATE_KEY), encode_state(snapshot))
        written += 1
    _settle(producer, failures, timeout, topic)
    if folds.hall_months is not None:  # the hall-months fold (processors.hall_app)
        from processors.hall_app import seed_hall_months_state

        seed_hall_months_state(settings, folds.hall_months)
        written += 1
    log.info("processor state seeded", records=written, partitions=len(folds.folds))
    return written


def _settle(producer: Producer, failures: list[str], timeout: float, topic: str) -> None:
    if producer.flush(timeout) or failures:
        raise RuntimeError(f"could not write the processors' state to {topic}: "
                           f"{failures[:3] or 'not acknowledged in time'}")


def state_records(folds: PartitionFolds, partitions: Iterable[int]
                  ) -> list[tuple[int, str, bytes]]:
    """(partition, key, value) of what changed in ``partitions`` since the last call: the
    changed customers (with ``pos``), then each partition's own record; marks them clean."""
    out: list[tuple[int, str, bytes]] = []
    for partition in partitions:
        fold = folds.folds[partition]
        pos = fold.position
        for customer_id in fold.dirty_customers():
            plain = fold.customer_state(customer_id)
            plain = {"forgotten": True} if plain is None else plain
            out.append((partition, state_key(partition, customer_id),
                        encode_state({**plain, "pos": pos})))
        chunks, forgotten = fold.folded.take_changes()
        out += [(partition, folded_ids_key(partition, chunk),
                 encode_state({"ids": folded_to_plain(ids), "pos": pos})) for chunk, ids in chunks]
        out += [(partition, folded_ids_key(partition, chunk), None) for chunk in forgotten]
        changed, deleted, legacy = fold.window_changes()
        out += [(partition, window_bucket_key(partition, bucket),
                 encode_state({"windows": rows, "pos": pos})) for bucket, rows in changed]
        out += [(partition, window_bucket_key(partition, bucket), None) for bucket in deleted]
        out += [(partition, window_state_key(partition, key), None) for key in legacy]
        out.append((partition, state_key(partition, PARTITION_STATE_KEY),
                    encode_state(fold.snapshot_partition(window_rows=False))))
        fold.clear_dirty()
    return out


def read_state(settings: Settings, partition: int, idle_s: float = 0.5,
               timeout: float = 120.0) -> list[tuple[str, bytes]]:
    """The consistent state of one ledger partition in the changelog (module docstring):
    (key, value) of the partition record and of each customer as of its position."""
    return consistent_state(partition, read_log(settings, changelog_topic(settings), partition,
                                                idle_s, timeout))


def read_log(settings: Settings, topic: str, partition: int, idle_s: float = 0.5,
             timeout: float = 120.0) -> list[tuple[str, bytes | None]]:
    """Every (key, value) of a state topic's partition, in log order, read until the log is
    exhausted: past the reported end, or at the partition's end, and then quiet for
    ``idle_s`` (Tansu 0.6 reports the last batch's base offset + 1 as the end)."""
    consumer = Consumer(settings.kafka_conf(**{
        "group.id": f"{settings.topics.processors_app}-state-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "enable.partition.eof": True}))
    records: list[tuple[str, bytes | None]] = []
    try:
        tp = TopicPartition(topic, partition, 0)
        _, reported_end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        consumer.assign([tp])
        deadline = time.monotonic() + timeout
        last_seen, quiet_since, at_eof = -1, time.monotonic(), False
        while True:
            for msg in consumer.consume(1000, timeout=0.1):
                error = msg.error()
                if error is not None:
                    at_eof = at_eof or error.code() == KafkaError._PARTITION_EOF
                    continue
                last_seen, quiet_since = msg.offset(), time.monotonic()
                records.append((msg.key().decode(), msg.value()))
            done_reading = last_seen >= reported_end - 1 or reported_end == 0
            if (done_reading or at_eof) and time.monotonic() - quiet_since >= idle_s:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} partition {partition} within "
                                   f"{timeout:.0f}s")
    finally:
        consumer.close()
    return records


def consistent_state(partition: int, records: Iterable[tuple[str, bytes | None]]
                     ) -> list[tuple[str, bytes]]:
    """From a partition's changelog records (key, value) in log order: the partition record
    last written and, for every other key, its last record with ``pos`` at most that record's
    position, unless the key was deleted (value None) or forgotten (module docstring)."""
    versions: dict[str, list[tuple[int, bytes]]] = {}
    partition_record: bytes | None = None
    for key, value in records:
        if key.endswith("/"):
            partition_record = value
        elif value is None:  # deleted (a window row closed for good)
            versions.pop(key, None)
        else:
            versions.setdefault(key, []).append((decode_state(value).get("pos", 0), value))
    if partition_record is None:
        return []
    position = decode_state(partition_record).get("position")
    entries = [(state_key(partition, PARTITION_STATE_KEY), partition_record)]
    for key, history in versions.items():
        usable = [value for pos, value in history if position is None or pos <= position]
        if usable and not decode_state(usable[-1]).get("forgotten"):
            entries.append((key, usable[-1]))
    return entries
