"""The producer SDK: validate, encode and publish interaction events to the ledger topic.

    with LedgerProducer(settings) as producer:
        producer.publish({"event_type": "contact.completed", ...})

Every event is checked against its schema before anything is sent: a bad event raises
EventValidationError naming the field and nothing is sent for it. Events are keyed by
customer_id, so one customer's events stay in order on one partition. The underlying
librdkafka producer is idempotent (no duplicates or reordering on its internal retries) and
batches; delivery failures are collected and raised on flush/close, never dropped silently.

What an acknowledgement means: ``flush`` (and ``close``) return once the broker acknowledged
every event (acks=all). With ``settings.acks_wait_for_store`` (the single-machine stack, whose
broker keeps nothing across a restart: ``cxledger.stack.attach`` sets it) they return only once
the ledger sink has also written every event to the store, which it shows by committing its
Kafka offsets after each write.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable

import time

import structlog
from confluent_kafka import (Consumer, KafkaError, KafkaException, Message, Producer,
                             TopicPartition)

from cxledger.config import LEDGER_SINK_GROUP, Settings
from schemas.codec import WireCodec
from schemas.validation import EventValidationError, normalize_event

log = structlog.get_logger("cxledger.producer")


class DeliveryError(RuntimeError):
    """Events the broker did not accept; ``failures`` lists (event_id, reason)."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        first = ", ".join(f"{eid}: {why}" for eid, why in failures[:3])
        super().__init__(f"{len(failures)} event(s) not delivered ({first}); they were not "
                         "written to the ledger: publish them again (their event_id makes the "
                         "retry safe)")


class NotStoredError(DeliveryError):
    """Events the broker acknowledged that the store has not taken in time."""

    def __init__(self, behind: int, timeout: float):
        self.failures = [("(not stored)", f"{behind} events")]
        RuntimeError.__init__(
            self, f"{behind} acknowledged event(s) not yet in the store after {timeout:.0f}s; "
            "is the stack's ledger sink running (`cxledger status`)? Publishing them again is "
            "safe: their event_id makes the retry idempotent")


def make_codec(settings: Settings) -> WireCodec:
    """The codec for these settings: registry ids when a registry is configured."""
    if settings.schema_registry_url:
        from schemas.registry import RegistryIds, registry_client

        client = registry_client(settings.schema_registry_url, settings.schema_registry_auth)
        return WireCodec(RegistryIds(client))
    return WireCodec()


class _Closed:
    def __getattr__(self, name: str):
        raise RuntimeError("this LedgerProducer is closed; create a new one to publish")


PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
}


class LedgerProducer:
    def __init__(self, settings: Settings, *, topic: str | None = None,
                 codec: WireCodec | None = None,
                 on_delivered: Callable[[str], None] | None = None,
                 producer_conf: dict[str, Any] | None = None):
        self.settings = settings
        self.topic = topic or settings.topics.ledger
        self.codec = codec or make_codec(settings)
        self.on_delivered = on_delivered
        self._producer = Producer(settings.kafka_conf(**{**PRODUCER_DEFAULTS, **(producer_conf or {})}))
        self._store_watch: Consumer | None = None  # reads the ledger sink's committed offsets
        self._failures: list[tuple[str, str]] = []
        self.sent = 0
        self.delivered = 0
        # (topic, partition) -> offset after the last acknowledged event: what a consumer must
        # reach to have seen everything this producer published. Taken from delivery reports,
        # not from the broker's high watermark (Tansu 0.6 reports the last batch's base offset).
        self.positions: dict[tuple[str, int], int] = {}

    def _delivery(self, event_id: str, err: KafkaError | None, msg: Message) -> None:
        # (failed messages come back without their headers, so the id is bound per message)
        if err is not None:
            self._failures.append((event_id, str(err)))
            log.error("delivery failed", event_id=event_id, error=str(err))
        else:
            self.delivered += 1
            tp = (msg.topic(), msg.partition())
            if msg.offset() >= self.positions.get(tp, 0):
                self.positions[tp] = msg.offset() + 1
            if self.on_delivered:
                self.on_delivered(event_id)

    def publish(self, event: dict[str, Any]) -> str:
        """Validate and send one event (JSON form); returns its event_id.

        Raises EventValidationError (nothing sent) or DeliveryError for earlier failures.
        """
        record = normalize_event(event)
        self.publish_record(record)
        return record["event_id"]

    def publish_record(self, record: dict[str, Any]) -> None:
        """Send an already validated record-form event (no validation)."""
        value = self.codec.encode(record)
        headers = [("event_id", record["event_id"].encode())]
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=record["customer_id"].encode(),
                                       headers=headers,
                                       on_delivery=partial(self._delivery, record["event_id"]))
                break
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self._producer.poll(0)
        self._raise_failures()

    def publish_many(self, events: Iterable[dict[str, Any]]) -> list[EventValidationError]:
        """Publish every valid event; returns the validation errors of the others."""
        rejected = []
        for event in events:
            try:
                self.publish(event)
            except EventValidationError as exc:
                rejected.append(exc)
        return rejected

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(failures)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every sent event is acknowledged (or failed); raise on failures.
        With ``acks_wait_for_store``, also wait until they are in the store."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError([("(in flight)", f"{remaining} events still undelivered after "
                                  f"{timeout:.0f}s; is the broker up?")])
        self._raise_failures()
        if self.settings.acks_wait_for_store:
            self.wait_stored(timeout)

    def wait_stored(self, timeout: float = 60.0) -> None:
        """Block until the ledger sink has written every event this producer delivered."""
        targets = {tp: end for tp, end in self.positions.items() if tp[0] == self.topic}
        if not targets:
            return
        if self._store_watch is None:
            self._store_watch = Consumer(self.settings.kafka_conf(**{
                "group.id": LEDGER_SINK_GROUP, "enable.auto.commit": False}))
        partitions = [TopicPartition(t, p) for t, p in targets]
        deadline = time.monotonic() + timeout
        while True:
            try:
                committed = {(tp.topic, tp.partition): tp.offset for tp in
                             self._store_watch.committed(partitions, timeout=min(10, timeout))}
            except KafkaException as exc:  # the broker is away: not stored, as far as we know
                log.warning("cannot read what the store holds", error=str(exc))
                committed = {}
            behind = sum(max(0, end - committed.get(tp, 0)) for tp, end in targets.items())
            if not behind:
                return
            if time.monotonic() > deadline:
                raise NotStoredError(behind, timeout)
            time.sleep(0.05)

    def close(self) -> None:
        """Deliver everything, then release the client (its connections close now, not at
        garbage collection, which may be after the broker is gone)."""
        try:
            self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        self._producer = _Closed()
        if self._store_watch is not None:
            self._store_watch.close()
            self._store_watch = None

    def __enter__(self) -> "LedgerProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # still deliver what was accepted, but let the original error propagate
            try:
                self._producer.flush(30)
            except Exception:
                pass
            self._release()
