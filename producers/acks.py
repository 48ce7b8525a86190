"""Per-request acknowledgements over the gateway's one shared LedgerProducer.

Concurrent requests share one producer (one set of Kafka connections, one idempotent
sequence), but each request waits only for its own events: no lock is held while waiting.

    batch = Batch(loop)                      # in the request's event loop
    results = publisher.submit(batch, events)   # in a worker thread: validate and send
    outcome = await publisher.settle(batch, timeout)

How: before an event is handed to ``LedgerProducer.publish`` its event_id is known (the
gateway fills a missing one, as ``normalize_event`` would), and the request registers that it
waits for it. The producer's ``on_delivered`` hook and its delivery failures, served by one
poll thread, pop the first request waiting for that id. When a request has its last
acknowledgement it notes the producer's ``positions`` (the offset after the last acknowledged
event per partition: they cover this request's events); with ``acks_wait_for_store`` it then
waits until the ledger sink has committed past them (``producers.store_watch``).

Reaching into the SDK: ``GatewayProducer`` adds ``poll``, ``take_failures`` and ``abandon`` to
LedgerProducer through its private ``_producer``, ``_failures`` and ``_release``. A public
``LedgerProducer.poll(timeout)``, an ``on_failed(event_id, reason)`` hook and a bounded
``close(timeout)`` that purges what is left would make this subclass unnecessary.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
from confluent_kafka import KafkaError, KafkaException

from cxledger.config import Settings
from producers.sdk import DeliveryError, LedgerProducer
from producers.store_watch import StoreWatch
from schemas.validation import EventValidationError

log = structlog.get_logger("cxledger.gateway")

# Events sent and not yet acknowledged past which new publishes get 503 at once: with Kafka
# away, the producer's queue would otherwise fill and block the request threads.
MAX_IN_FLIGHT = 100_000

# How long librdkafka keeps trying to deliver an event: longer than a request waits, so that an
# event answered 503 may still arrive (a retry with its event_id is then deduplicated).
MESSAGE_TIMEOUT_MS = 60_000


class GatewayProducer(LedgerProducer):
    """LedgerProducer with what a long-running server needs (see the module docstring)."""

    def poll(self, timeout: float) -> None:
        """Serve delivery reports (``on_delivered`` and failures) for up to ``timeout`` s."""
        self._producer.poll(timeout)

    def take_failures(self) -> list[tuple[str, str]]:
        """The delivery failures reported since the last call: (event_id, reason)."""
        failures, self._failures = self._failures, []
        return failures

    def abandon(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for Kafka, drop what is still queued, release the client.
        Returns how many events were dropped (their failures are then reported)."""
        remaining = self._producer.flush(timeout)
        if remaining:
            self._producer.purge()
            self._producer.poll(0)
        self._release()
        return remaining


@dataclass(eq=False)
class Batch:
    """One request's events on their way to Kafka."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future = field(init=False)
    pending: Counter = field(default_factory=Counter)  # event_id -> acknowledgements awaited
    failed: dict[str, str] = field(default_factory=dict)  # event_id -> why Kafka refused it
    positions: dict[tuple[str, int], int] | None = None  # producer positions at the last ack
    sealed: bool = False  # every event of the request was handed to the producer

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def _finish(self) -> None:
        def resolve() -> None:
            if not self.done.done():
                self.done.set_result(None)

        try:
            self.loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


class Acks:
    """Which request waits for which event_id; fed by the producer's delivery reports."""

    def __init__(self, positions: Callable[[], dict[tuple[str, int], int]]):
        self._positions = positions
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Batch]] = {}
        self._in_flight: Counter = Counter()  # sent, not yet reported: for the shutdown log
        self.in_flight_total = 0

    def expect(self, batch: Batch, event_id: str) -> None:
        with self._lock:
            batch.pending[event_id] += 1
            self._waiting.setdefault(event_id, deque()).append(batch)
            self._in_flight[event_id] += 1
            self.in_flight_total += 1

    def cancel(self, batch: Batch, event_id: str) -> None:
        """The event was not sent after all (validation refused it)."""
        with self._lock:
            self._unwait(batch, event_id)
            self._count_reported(event_id)

    def seal(self, batch: Batch) -> None:
        """Every event of ``batch`` is sent: it is done when the last report comes."""
        with self._lock:
            batch.sealed = True
            self._maybe_done(batch)

    def delivered(self, event_id: str) -> None:
        self._report(event_id, None)

    def failed(self, event_id: str, reason: str) -> None:
        self._report(event_id, reason)

    def forget(self, batch: Batch) -> None:
        """Stop waiting for ``batch`` (timed out or cancelled); later reports pass it by."""
        with self._lock:
            for event_id, count in list(batch.pending.items()):
                for _ in range(count):
                    self._unwait(batch, event_id, count_down=False)

    def abort(self, reason: str) -> int:
        """Fail every request still waiting (the gateway is stopping): each answers 503 now.
        Returns how many requests were waiting."""
        with self._lock:
            batches = {id(b): b for queue in self._waiting.values() for b in queue}
            for batch in batches.values():
                for event_id in batch.pending:
                    batch.failed.setdefault(event_id, reason)
                batch.pending.clear()
            self._waiting.clear()
            for batch in batches.values():
                self._maybe_done(batch)
            return len(batches)

    def unreported(self) -> list[str]:
        """Ids of the events sent and neither acknowledged nor failed yet."""
        with self._lock:
            return [event_id for event_id, n in self._in_flight.items() if n > 0]

    def _report(self, event_id: str, failure: str | None) -> None:
        with self._lock:
            self._count_reported(event_id)
            queue = self._waiting.get(event_id)
            if not queue:
                return  # nobody waits any more (the request timed out)
            batch = queue.popleft()
            if not queue:
                del self._waiting[event_id]
            batch.pending[event_id] -= 1
            if batch.pending[event_id] <= 0:
                del batch.pending[event_id]
            if failure is not None:
                batch.failed[event_id] = failure
            self._maybe_done(batch)

    def _count_reported(self, event_id: str) -> None:
        if self._in_flight.get(event_id, 0) > 0:
            self._in_flight[event_id] -= 1
            if not self._in_flight[event_id]:
                del self._in_flight[event_id]
            self.in_flight_total -= 1

    def _unwait(self, batch: Batch, event_id: str, count_down: bool = True) -> None:
        queue = self._waiting.get(event_id)
        if queue is not None:
            try:
                queue.remove(batch)
            except ValueError:
                pass
            if not queue:
                del self._waiting[event_id]
        if count_down and batch.pending.get(event_id, 0) > 0:
            batch.pending[event_id] -= 1
            if not batch.pending[event_id]:
                del batch.pending[event_id]

    def _maybe_done(self, batch: Batch) -> None:
        if batch.sealed and not batch.pending and not batch.done.done():
            batch.positions = dict(self._positions())
            batch._finish()


@dataclass
class Outcome:
    """What became of a request's sent events: ``unacknowledged`` maps the event_ids Kafka
    refused or did not confirm in time to the reason; ``not_stored`` is the reason when Kafka
    confirmed all of them but the store did not in time (every one is then unacknowledged)."""

    unacknowledged: dict[str, str] = field(default_factory=dict)
    not_stored: str | None = None

    def reason(self, event_id: str) -> str | None:
        """Why ``event_id`` is not acknowledged, or None when it is."""
        return self.unacknowledged.get(event_id) or self.not_stored

    @property
    def complete(self) -> bool:
        return not self.unacknowledged and self.not_stored is None


class KafkaUnavailable(RuntimeError):
    """Publishing cannot start: too much is waiting for Kafka, or the producer failed."""


class Publisher:
    """Validate and send a request's events, and wait for their acknowledgements."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.acks = Acks(lambda: self.producer.positions)
        self.producer = GatewayProducer(settings, on_delivered=self.acks.delivered,
                                        producer_conf={"message.timeout.ms": MESSAGE_TIMEOUT_MS})
        self.store = StoreWatch(settings) if settings.acks_wait_for_store else None
        self._stop = threading.Event()
        self.settling = 0  # requests waiting in settle(): what a stopping gateway waits for
        self._poller = threading.Thread(target=self._poll, name="cxledger-gateway-acks",
                                        daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(0.1)
                for event_id, reason in self.producer.take_failures():
                    self.acks.failed(event_id, reason)
            except Exception:  # keep serving reports whatever one callback did
                log.exception("serving delivery reports failed")

    # -- in a worker thread -------------------------------------------------------------
    def submit(self, batch: Batch, events: list[Any]) -> list[dict[str, Any]]:
        """Validate and send each event; per event ``{"index", "status", ...}`` in order, with
        status "accepted" (sent, not yet acknowledged) or "rejected". Seals ``batch``."""
        if self.acks.in_flight_total > MAX_IN_FLIGHT:
            batch.sealed = True
            raise KafkaUnavailable(f"{self.acks.in_flight_total} events are waiting for Kafka")
        results = []
        try:
            for index, event in enumerate(events):
                results.append(self._submit_one(batch, index, event))
        except BaseException:
            self.acks.forget(batch)
            raise
        finally:
            self.acks.seal(batch)
        return results

    def _submit_one(self, batch: Batch, index: int, event: Any) -> dict[str, Any]:
        event, event_id = with_event_id(event)
        if event_id:
            self.acks.expect(batch, event_id)
        try:
            published = self.producer.publish(event)
        except EventValidationError as exc:
            if event_id:
                self.acks.cancel(batch, event_id)
            return {"index": index, "status": "rejected", "field": exc.field,
                    "reason": exc.reason}
        except (ValueError, ArithmeticError, TypeError) as exc:
            # What validation let through and the Avro encoder did not: a gap in validation
            # (logged to be fixed there), answered as a rejection rather than a server error.
            if event_id:
                self.acks.cancel(batch, event_id)
            log.warning("event passed validation but could not be encoded",
                        error_type=type(exc).__name__, error=str(exc)[:200])
            return {"index": index, "status": "rejected", "field": None,
                    "reason": f"cannot be encoded in the event's Avro schema: {str(exc)[:200]}"}
        except DeliveryError as exc:  # earlier events' failures, raised after this one was sent
            for failed_id, reason in exc.failures:
                self.acks.failed(failed_id, reason)
            published = event_id
            if published is None:
                return {"index": index, "status": "rejected", "field": "event_id",
                        "reason": "must be a UUID"}
        except KafkaException as exc:
            if event_id:
                self.acks.cancel(batch, event_id)
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                return {"index": index, "status": "rejected", "field": None,
                        "reason": "the event is larger than Kafka takes in one message; "
                                  "shorten its text fields"}
            raise KafkaUnavailable(f"the Kafka producer refused the event: {exc}") from None
        if published != event_id:  # the SDK chose another id than expected: wait for that one
            log.warning("event id differs from the one expected", expected=event_id,
                        published=published)
            if event_id:
                self.acks.cancel(batch, event_id)
            self.acks.expect(batch, published)
        return {"index": index, "status": "accepted", "event_id": published}

    # -- in the event loop --------------------------------------------------------------
    async def settle(self, batch: Batch, timeout: float) -> Outcome:
        """Wait up to ``timeout`` s for the batch's acknowledgements (and, with
        ``acks_wait_for_store``, for the store); what did not come is in the outcome."""
        self.settling += 1
        try:
            return await self._settle(batch, timeout)
        finally:
            self.settling -= 1

    async def _settle(self, batch: Batch, timeout: float) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(asyncio.shield(batch.done), timeout)
        except asyncio.TimeoutError:
            self.acks.forget(batch)
            reason = f"Kafka did not acknowledge it within {timeout:g}s"
            return Outcome({**{i: reason for i in list(batch.pending)}, **batch.failed})
        finally:
            if not batch.done.done():
                self.acks.forget(batch)
        if batch.failed or self.store is None or not batch.positions:
            return Outcome(dict(batch.failed))
        targets = {tp: end for tp, end in batch.positions.items()
                   if tp[0] == self.producer.topic}
        if targets and not await self.store.wait(targets, max(0.0, deadline - loop.time())):
            return Outcome(not_stored=(
                f"Kafka acknowledged it, but the ledger sink has not stored it within "
                f"{timeout:g}s; is the stack's ledger sink running (`cxledger status`)?"))
        return Outcome()

    def drain(self, timeout: float) -> None:
        """At shutdown: give the requests in flight up to ``timeout`` s to be acknowledged,
        then answer the ones still waiting (503: send again) so that they end now."""
        deadline = time.monotonic() + timeout
        while (self.settling or self.acks.in_flight_total) and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = self.acks.abort("the gateway is stopping and Kafka had not acknowledged it")
        if self.store is not None:
            waiting += self.store.abort()
        if waiting:
            log.warning("requests still waiting at shutdown were answered 503", requests=waiting)

    def close(self, timeout: float = 0.0) -> None:
        """Wait up to ``timeout`` s more for Kafka, drop what is left, release the clients,
        and say in the log which events Kafka did not acknowledge."""
        self._stop.set()
        self._poller.join(timeout=1)
        try:
            dropped = self.producer.abandon(timeout)
        except Exception as exc:  # already closed, or the client failed: nothing to wait for
            log.warning("closing the producer failed", error=str(exc))
            dropped = 0
        left = sorted(set(self.acks.unreported()) | {i for i, _ in self.producer.take_failures()
                                                     if not i.startswith("(")})
        if dropped or left:
            log.error("gateway stopped with events Kafka had not acknowledged; their requests "
                      "were answered 503 (or cut off) and are safe to send again with the same "
                      "event_id", events=max(dropped, len(left)), event_ids=left[:100],
                      more=max(0, len(left) - 100))
        if self.store is not None:
            self.store.close()


def with_event_id(event: Any) -> tuple[Any, str | None]:
    """``(event, event_id)`` with the id the SDK will publish it under: a fresh UUID when the
    event has none (set in a copy, as ``normalize_event`` would), the canonical form of a
    UUID it has, None when it is not an object or its id is no UUID (validation refuses it)."""
    if not isinstance(event, dict):
        return event, None
    raw = event.get("event_id")
    if raw is None or raw == "":
        event_id = str(uuid.uuid4())
        return {**event, "event_id": event_id}, event_id
    try:
        return event, str(uuid.UUID(str(raw)))
    except ValueError:
        return event, None
