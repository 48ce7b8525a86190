"""The worker's input: one librdkafka consumer in the processors' group (``topics.processors_app``).

The worker reads the ledger (and the hall-month closes, processors.hall_app) through
confluent-kafka rather than through faust's own consumer. faust's consumer hands every message
to the agent through two new asyncio tasks; on the benchmark's 1,000,000 events that loop took
56% of the worker's time, and the worker reached 3.8k events/s where the same folds on a plain
librdkafka loop (benchmarks/peer.py) reached 12.5k. faust still runs the app: its lifecycle,
signals, logging and timers (processors.app).

Partitions move between workers by the group's own rebalancing (eager, range). The rebalance
callbacks run inside :meth:`ProcessorSource.poll`, that is between two batches of this worker,
never during one: ``on_assign`` returns where each assigned partition starts (the worker reads
each ledger partition's state back and starts at its ``position``), ``on_revoke`` drops what
the worker held. Every call on the consumer runs on one thread of its own, in order, so that
closing it never races a poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from cxledger.config import Settings
from sinks.kafka_sink import consumer_conf

log = structlog.get_logger("cxledger.processors")

Partition = tuple[str, int]  # (topic, partition)

# How far librdkafka reads ahead of the worker, per partition. Its defaults (100,000 messages,
# up to 64 MB) held about 90 MB more in a worker that lagged during the reliability soak; two
# batches' worth still keeps the next batch ready.
PREFETCH = {"queued.min.messages": 20_000, "queued.max.messages.kbytes": 16_384}


class ProcessorSource:
    """Batches of messages of ``topics`` for this worker, with their offsets committed on
    request. ``on_assign(partitions)`` returns {partition: offset to start at} for those whose
    start the worker knows (the rest start at the group's committed offset, or the earliest);
    ``on_revoke(partitions)`` is told what this worker no longer holds."""

    def __init__(self, settings: Settings, topics: list[str], *,
                 on_assign: Callable[[list[Partition]], dict[Partition, int]],
                 on_revoke: Callable[[list[Partition]], None],
                 batch_size: int = 10_000, batch_within: float = 0.2):
        self.group = settings.topics.processors_app
        self.topics = topics
        self.batch_size = batch_size
        self.batch_within = batch_within
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.assignment: frozenset[Partition] = frozenset()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="processor-source")
        self._consumer = Consumer(consumer_conf(settings, self.group, **PREFETCH))
        self._consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    # -- rebalancing (called by librdkafka from within poll) -----------------------------------
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        given = [(tp.topic, tp.partition) for tp in partitions]
        starts = self._on_assign(given)
        for tp in partitions:
            start = starts.get((tp.topic, tp.partition))
            if start is not None:
                tp.offset = start
        consumer.assign(partitions)
        self.assignment = frozenset(given)
        log.info("partitions assigned", group=self.group, partitions=sorted(given),
                 starts={f"{t}/{p}": o for (t, p), o in sorted(starts.items())})

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        taken = [(tp.topic, tp.partition) for tp in partitions]
        self._on_revoke(taken)
        self.assignment = self.assignment - set(taken)
        log.info("partitions revoked", group=self.group, partitions=sorted(taken))

    # -- on the consumer's thread ---------------------------------------------------------------
    def _poll(self) -> list[Message]:
        out = []
        for msg in self._consumer.consume(self.batch_size, timeout=self.batch_within):
            error = msg.error()
            if error is None:
                out.append(msg)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", group=self.group, error=str(error))
        return out

    def _commit(self, ends: dict[Partition, int]) -> None:
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, end)
                                           for (t, p), end in ends.items()],
                                  asynchronous=False)
        except Exception as exc:  # e.g. a rebalance under way: the next batch commits again
            log.warning("offsets not committed", group=self.group, error=str(exc))

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def poll(self) -> list[Message]:
        """The next batch: up to ``batch_size`` messages or ``batch_within`` seconds."""
        return await self._run(self._poll)

    async def commit(self, ends: dict[Partition, int]) -> None:
        """Commit the offsets after each partition's last processed message (for the group's
        lag and for a worker given a partition without state; the state's own position is what
        a worker starts from)."""
        await self._run(self._commit, ends)

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The partition's end as the consumer last fetched it (no request), or None."""
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                          cached=True)
        except Exception:
            return None
        return high if high >= 0 else None

    def close(self) -> None:
        """Leave the group (after any poll in progress), so the partitions move at once."""
        self._thread.submit(self._consumer.close)
        self._thread.shutdown(wait=True)
