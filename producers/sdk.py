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

Personal data (phone numbers, national id numbers, e-mail addresses, labelled names in free
text) never leaves the producer in clear: without a key an event carrying any is refused
(EventValidationError naming the field and the kind of data, never quoting it); with
``settings.pii_hmac_key`` (CXLEDGER_PII_HMAC_KEY or CXLEDGER_PII_HMAC_KEY_FILE) it is replaced by
its keyed pseudonym, ids wholly and free text in place, so that the same phone number gives the
same ``customer_id`` from every channel. What is found and how it is replaced, field by field:
``schemas.validation`` (module docstring). Files (``cxledger publish``) and the gateway publish
through this producer and get the same treatment.

With ``settings.seal_key``, each event ``publish`` validated carries the SDK's seal (a keyed
MAC of its key and value, ``schemas.seal``): the ledger sink and the processors, holding the same
key, do not check it again.

Two checks beyond the schema, both raising EventValidationError before anything is sent:
- **size**: an encoded event larger than the producer's ``message.max.bytes`` (librdkafka's
  default, ``MESSAGE_MAX_BYTES``) is refused naming the event and its largest field, instead
  of failing later inside librdkafka (``MSG_SIZE_TOO_LARGE``, which would end a file ingest).
- **event id conflict**: an event is immutable, so a second event with the event_id of an
  earlier one and other content is refused (``field 'event_id': event_id conflict: ...``,
  naming where the first came from). The same event again is a retry, and is sent again. The
  producer remembers the ids of its last ``RECENT_EVENT_IDS`` events (about 20 MB at most);
  across producers the ledger sink keeps the first version and dead-letters the other.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Iterable

import structlog
from confluent_kafka import (Consumer, KafkaError, KafkaException, Message, Producer,
                             TopicPartition)

from cxledger.config import LEDGER_SINK_GROUP, Settings
from schemas.codec import WireCodec
from schemas.seal import sealer_of
from schemas.validation import (EventValidationError, Pseudonymizer, normalize_event,
                                 partition_key, screen_pii)

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


MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
# What librdkafka adds to key + value + headers when it checks a message against
# message.max.bytes (RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD is 36), rounded up.
RECORD_OVERHEAD_BYTES = 64
RECENT_EVENT_IDS = 100_000  # event ids a producer remembers to detect a reused id
_DIGEST_BYTES = 8


class RecentEventIds:
    """The content of the last ``size`` events by event_id: (digest, where it came from).

    An OrderedDict in insertion order; the oldest id is forgotten first (``popitem(last=False)``
    is O(1); deleting a plain dict's first key is not: its iteration skips every slot deleted
    before it, which made a producer past its first 100,000 events four times slower). Each
    entry is the id and one small bytes value (digest + where), about 200 bytes.
    """

    def __init__(self, size: int = RECENT_EVENT_IDS):
        self.size = size
        self._seen: OrderedDict[str, bytes] = OrderedDict()

    @staticmethod
    def digest(value: bytes) -> bytes:
        return hashlib.blake2b(value, digest_size=_DIGEST_BYTES).digest()

    def conflict(self, event_id: str, digest: bytes) -> str | None:
        """Where an earlier event with this id and other content came from, else None."""
        seen = self._seen.get(event_id)
        if seen is None or seen[:_DIGEST_BYTES] == digest:
            return None
        return seen[_DIGEST_BYTES:].decode("utf-8", "replace")

    def remember(self, event_id: str, digest: bytes, where: str) -> None:
        if event_id in self._seen:
            return
        self._seen[event_id] = digest + where.encode("utf-8", "replace")
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


def _largest_field(record: dict[str, Any]) -> tuple[str, int]:
    sizes = [(len(v), k) for k, v in record.items() if isinstance(v, (str, bytes))]
    size, name = max(sizes, default=(0, "?"))
    return name, size


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
        # Personal data in events: pseudonymised with the settings' key, else refused.
        self.pseudonymizer = (Pseudonymizer(settings.pii_hmac_key) if settings.pii_hmac_key
                              else None)
        # With the settings' seal key, events this producer validated carry its seal: the
        # consumers holding the key do not check them again (schemas.seal).
        self.sealer = sealer_of(settings.seal_key)
        conf = settings.kafka_conf(**{**PRODUCER_DEFAULTS, **(producer_conf or {})})
        self._producer = Producer(conf)
        self.max_message_bytes = int(conf.get("message.max.bytes", MESSAGE_MAX_BYTES))
        self.recent_ids = RecentEventIds()
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

    def publish(self, event: dict[str, Any], *, source: str | None = None) -> str:
        """Validate and send one event (JSON form); returns its event_id.

        ``source`` says where the event came from (e.g. ``FILE:LINE``), for the error about a
        later event that reuses its id. Raises EventValidationError (nothing sent) or
        DeliveryError for earlier failures.
        """
        record = normalize_event(event, pseudonymize=self.pseudonymizer)
        self._send(record, source, checked=True)
        return record["event_id"]

    def publish_record(self, record: dict[str, Any], *, source: str | None = None) -> None:
        """Send an already validated record-form event (no schema validation; the personal
        data, size and event id checks of the module docstring apply: personal data is
        pseudonymised in a copy, or refused). Not sealed: the consumers check it."""
        record = dict(record)
        screen_pii(record, record["event_type"], pseudonymize=self.pseudonymizer)
        self._send(record, source, checked=False)

    def _send(self, record: dict[str, Any], source: str | None, checked: bool) -> None:
        value = self.codec.encode(record)
        event_id = record["event_id"]
        key = partition_key(record).encode()
        headers = [("event_id", event_id.encode())]
        if checked and self.sealer is not None:
            headers.append(self.sealer.header(key, value))
        self._check_size(record, value, key, headers)
        digest = self.recent_ids.digest(value)
        earlier = self.recent_ids.conflict(event_id, digest)
        if earlier is not None:
            raise EventValidationError(
                f"event_id conflict: {event_id} was already published with other content "
                f"({earlier}); an event is immutable: give the new one its own event_id, or "
                "send the first one unchanged", "event_id", record["event_type"], event_id)
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, headers=headers,
                                       on_delivery=partial(self._delivery, event_id))
                break
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)
        self.sent += 1
        self.recent_ids.remember(event_id, digest, source or f"event {self.sent} of this "
                                                            "producer")
        if self.sent % 1000 == 0:
            self._producer.poll(0)
        self._raise_failures()

    def _check_size(self, record: dict[str, Any], value: bytes, key: bytes,
                    headers: list[tuple[str, bytes]]) -> None:
        size = (len(value) + len(key) + RECORD_OVERHEAD_BYTES
                + sum(len(k) + len(v) + 10 for k, v in headers))
        if size > self.max_message_bytes:
            name, chars = _largest_field(record)
            raise EventValidationError(
                f"the encoded event is {size:,} bytes, over the producer's limit of "
                f"{self.max_message_bytes:,} (message.max.bytes); its largest field is "
                f"'{name}' ({chars:,} characters): shorten it", None, record.get("event_type"),
                record.get("event_id"))

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
