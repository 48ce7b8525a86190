"""The faust-streaming worker: the ledger topic folded into derived topics.

    cxledger process            # one worker; start more with the same settings to scale out

Per batch (``stream.take_events``), in this order, which is the whole at-least-once story:
  1. decode with our Avro codec; undecodable messages go to the dead-letter topic with the reason;
  2. fold each partition's records in offset order (processors.batch), drain what changed;
  3. persist the changed customer states (and each partition's own state) to a faust table,
     one entry per changed key, JSON-encoded; the table's changelog is what a restarted or
     rebalanced worker recovers from;
  4. send the derived events as Avro to their topics and wait for the broker's acks (through
     librdkafka: aiokafka's producer tops out near 11k messages/s on the local broker, and a
     batch of backfill can derive more events than it folds);
  5. return: faust acks the batch's events and commits their offsets on its interval.
A crash before 5 replays the batch: derived event ids are deterministic and every sink
deduplicates by id, so a replay changes nothing users see. Hot state lives in memory as plain
data; the table is written once per batch, never read on the hot path.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import defaultdict
from typing import Any

import faust
import structlog
from faust.tables.table import Table

from cxledger.config import Settings
from processors.batch import PartitionFolds, partition_of_key, settle_heap, tune_gc_for_folds
from processors.changelog import APP_ID, STATE_TABLE
from processors.ledger import live_clock_target
from processors.rules import Rules, load_rules
from confluent_kafka import Producer

from producers.sdk import PRODUCER_DEFAULTS, make_codec
from schemas.codec import DecodeError

log = structlog.get_logger("cxledger.processors")



class PartitionKeyedTable(Table):
    """A table whose keys say their partition ("<partition>/<customer>"): each entry goes to the
    changelog partition of the ledger partition it belongs to, even when written from a batch
    rather than from inside one event's iteration."""

    def partition_for_key(self, key: Any) -> int:
        return partition_of_key(key.decode() if isinstance(key, bytes) else key)


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    client = settings.kafka_client
    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=client.get("ssl.ca.location"))
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=client.get("sasl.username"),
                                     password=client.get("sasl.password"),
                                     mechanism=client.get("sasl.mechanism", "PLAIN"),
                                     ssl_context=context)
    return faust.SSLCredentials(context)


class DerivedProducer:
    """librdkafka producer for derived and dead-letter events: ``send`` queues, ``settle``
    waits (off the event loop) until every queued message is acknowledged or raises."""

    def __init__(self, settings: Settings):
        self._producer = Producer(settings.kafka_conf(**PRODUCER_DEFAULTS))
        self._failures: list[str] = []
        self._lock = threading.Lock()

    def _delivered(self, err, msg) -> None:
        if err is not None:
            with self._lock:
                self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def settle(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(None, self._producer.flush, timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining or failures:
            # Raising fails the batch before it is acked: the worker stops and a restart
            # processes it again (derived ids are deterministic, sinks deduplicate).
            raise RuntimeError(f"derived events not acknowledged: {remaining} in flight, "
                               f"failures: {failures[:3]}")


def create_app(settings: Settings, rules: Rules | None = None, *, batch_size: int = 10000,
               batch_within: float = 0.2, live_clock_interval: float = 10.0) -> faust.App:
    rules = rules or load_rules(settings.rules_path)
    tune_gc_for_folds()
    bootstrap = ";".join(f"kafka://{b}" for b in settings.kafka_bootstrap.split(","))
    app = faust.App(
        APP_ID,
        broker=bootstrap,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A new group waits about one rebalance timeout (the poll interval) before it is
        # assigned: keep it short so a worker starts in seconds.
        broker_max_poll_interval=120.0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=5,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
    )
    # A batch queues one changelog write per changed customer at once; faust's producer buffer
    # warns and flushes piecemeal past 100 queued messages by default.
    app.producer.buffer.max_messages = max(10_000, batch_size * 4)
    codec = make_codec(settings)  # registry ids when a registry is configured
    folds = PartitionFolds(rules)
    ledger = app.topic(settings.topics.ledger, key_type=bytes, value_type=bytes,
                       partitions=settings.topics.partitions)
    producer = DerivedProducer(settings)
    state = app.tables.add(PartitionKeyedTable(
        app, name=STATE_TABLE, default=None, partitions=settings.topics.partitions,
        key_type=bytes, value_type=bytes))
    restored: set[int] = set()

    @app.agent(ledger)
    async def fold_ledger(stream):
        async for events in stream.take_events(batch_size, within=batch_within):
            batch: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for event in events:
                msg = event.message
                try:
                    record, _ = codec.decode(msg.value)
                except DecodeError as exc:
                    producer.send(settings.topics.deadletter, msg.key, msg.value, headers=[
                        ("reason", str(exc).encode()), ("dead_lettered_by", APP_ID.encode()),
                        ("source_topic", msg.topic.encode()),
                        ("source_partition", str(msg.partition).encode()),
                        ("source_offset", str(msg.offset).encode())])
                    log.warning("dead-lettered", partition=msg.partition, offset=msg.offset,
                                reason=str(exc))
                    continue
                if msg.partition not in restored:
                    recover(msg.partition)
                batch[msg.partition].append(record)
            derived = folds.fold_batch(batch)
            await persist_and_send(derived, batch)  # acknowledged before the batch is acked
            del derived
            settle_heap()

    async def persist_and_send(derived: list[dict[str, Any]], partitions) -> None:
        for key, value in folds.changed_state(partitions):
            state[key.encode()] = value
        topic_for = settings.topics.for_derived
        for record in derived:
            producer.send(topic_for(record["event_type"]),
                          (record["customer_id"] or record["city"]).encode(),
                          codec.encode(record))
        await producer.settle()

    async def advance_idle_clocks() -> None:
        """Live mode: an idle partition's clock follows wall time less the allowed lateness,
        only while its event time is within the live lag of wall time (never in a backfill:
        there the event time is far behind, and ``live_clock_target`` says no)."""
        now_ms = int(time.time() * 1000)
        derived, moved = [], []
        for partition, fold in list(folds.folds.items()):
            target = live_clock_target(fold.clock, now_ms, rules)
            if target is not None:
                derived += fold.advance_clock(target)
                derived += fold.drain_windows() + fold.drain_complaints()
                moved.append(partition)
        if moved:
            await persist_and_send(derived, moved)

    if settings.live_clock:
        app.timer(interval=live_clock_interval)(advance_idle_clocks)

    def recover(partition: int) -> None:
        """Rebuild a newly assigned partition's fold from the (recovered) table."""
        prefix = f"{partition}/".encode()
        entries = [(k.decode(), v) for k, v in state.data.items() if k.startswith(prefix) and v]
        folds.restore(partition, entries)
        restored.add(partition)
        log.info("partition state restored", partition=partition, keys=len(entries))

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        for tp in revoked:
            if tp.topic == settings.topics.ledger:
                folds.drop(tp.partition)
                restored.discard(tp.partition)

    app.cxledger_folds = folds  # for tests and diagnostics
    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run one worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = create_app(settings)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
