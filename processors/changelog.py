"""The processors' state as faust keeps it, written from outside faust.

The workers keep each ledger partition's fold state in the faust table ``fold-state``, backed
by the compacted topic ``<app>-fold-state-changelog`` (app: ``topics.processors_app``, by
default ``cxledger-processors``): one record per key
``"<partition>/<customer>"`` (``"<partition>/"`` for the partition's own state: clock, window
partials), value the state as JSON bytes, on the changelog partition of the ledger partition.
A worker assigned a partition rebuilds the table from that topic (processors.app).

The single-machine broker starts empty, so ``cxledger up`` folds the ledger in the store and
writes the result here before any worker starts: ``seed_state``. Tansu 0.6 reports a
partition's end offset as its last record batch's base offset + 1, and faust's recovery reads
up to that end; each partition's own state is therefore written last and alone in its batch,
which makes the reported end the true one.
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cxledger.config import Settings
from processors.batch import PARTITION_STATE_KEY, PartitionFolds, encode_state, state_key

log = structlog.get_logger("cxledger.processors")

STATE_TABLE = "fold-state"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.topics.processors_app}-{STATE_TABLE}-changelog"


def create_changelog_topic(settings: Settings, timeout: float = 15.0) -> None:
    admin = AdminClient(settings.kafka_conf())
    topic = NewTopic(changelog_topic(settings), num_partitions=settings.topics.partitions,
                     replication_factor=settings.topics.replication_factor,
                     config={"cleanup.policy": "compact"})
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
                 encode_state(fold.customer_state(customer_id)))
            written += 1
    _settle(producer, failures, timeout, topic)
    for partition, fold in folds.folds.items():  # last, one record per batch (see above)
        snapshot = fold.snapshot_partition()
        snapshot["position"] = 0  # the state holds the store's ledger; the broker's is empty
        send(partition, state_key(partition, PARTITION_STATE_KEY), encode_state(snapshot))
        written += 1
    _settle(producer, failures, timeout, topic)
    log.info("processor state seeded", records=written, partitions=len(folds.folds))
    return written


def _settle(producer: Producer, failures: list[str], timeout: float, topic: str) -> None:
    if producer.flush(timeout) or failures:
        raise RuntimeError(f"could not write the processors' state to {topic}: "
                           f"{failures[:3] or 'not acknowledged in time'}")
