"""The one loop every sink runs: consume a batch, write it to ClickHouse, then commit.

Order per batch (the only place that owns it):
  1. poll until ``batch_rows`` messages or ``batch_seconds`` elapsed (``[sink] batch_seconds``
     for the ledger sink, ``derived_batch_seconds`` for the derived sink);
  2. decode each message; undecodable ones become dead letters with the reason, and so do
     those the sink's check refuses (the ledger sink: the SDK's checks, unless the message
     carries the SDK's valid seal, ``schemas.seal``). A sealed message of a type with an
     ``AvroInlet`` is not decoded here: ClickHouse decodes it in step 4 (if it does not take
     it, it is decoded here then);
  3. screen the rows (the ledger sink keeps the first version of an event id: a later one with
     other content becomes a dead letter, an identical one is dropped);
  4. insert the rows, table by table, with a deduplication token per (topic, partition,
     positions), then the dead letters into ``deadletter_events``; then send the dead letters
     to the dead-letter topic;
  5. commit the Kafka offsets only after ClickHouse accepted all of it.
``run`` keeps two batches in hand: while a store thread screens and inserts one (steps 3-4;
the engine runs without the GIL), the loop polls and decodes the next (1-2). Steps 3-5 of a
batch still come after those of the batch before it, and only the loop's thread touches the
consumer (it sends the dead letters and commits, and retries a batch the store refused).

Faults: a store that refuses or times out (a transient fault) gets the same batch again, with
bounded exponential backoff and jitter, for as long as it takes; the consumer is paused
meanwhile (it stays in its group and fetches nothing), nothing is committed, and the fault shows
in the log and in ``stats.fault`` until the store takes the batch. Rows a table refuses for a
data reason (a value it cannot hold) are split off by halving the insert until each refused row
stands alone; those become dead letters and the rest is written. A crash between 4 and 5
redelivers the batch: tables are ReplacingMergeTree keyed by event_id, so what users query
(FINAL / the dedup views) never shows an event twice.

Positions: a row records where its message sits in its partition of the ledger as
``offset_base[(topic, partition)] + Kafka offset``. On Kafka the base is 0. The single-machine
broker keeps topics in memory, so every start of the stack begins at offset 0 again; the stack
then passes as base the position after the last one stored, and positions keep growing across
restarts (replay reads the ledger back in position order).
"""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from cxledger.config import Settings
from cxledger.metrics import Metrics, process_metrics
from schemas.codec import DecodeError, WireCodec
from schemas.container import items_in, object_container
from schemas.deadletter import deadletter_message
from schemas.seal import Sealer, is_sealed
from sinks.ledger_inlets import InletSchema, first_string

log = structlog.get_logger("cxledger.sink")

# (table, column names) -> rows
Rows = dict[tuple[str, tuple[str, ...]], list[list[Any]]]
# Turns one decoded message into rows: (record, schema_id, partition, position)
#   -> [(table, columns, row)]
RowMapper = Callable[[dict[str, Any], int, int, int],
                     Iterable[tuple[str, tuple[str, ...], list[Any]]]]

# Screens a table's rows before they are inserted: (client, table, columns, rows) ->
# (indexes of the rows to insert, [(index, reason)] of the rows to dead-letter)
Screen = Callable[[Client, str, tuple[str, ...], list[list[Any]]],
                  tuple[list[int], list[tuple[int, str]]]]

# Checks a decoded record and its message key: the reason to dead-letter it, or None.
Check = Callable[[dict[str, Any], bytes | None], str | None]

# A message with this header is a position marker (see cxledger.pipeline), not data.
FENCE_HEADER = "cxledger-fence"

DEADLETTER_COLUMNS = ("source_topic", "source_partition", "source_offset", "reason", "key",
                      "value_hex")

STATS_INTERVAL_MS = 2_000  # librdkafka statistics: partition ends for the lag metric

RETRY_FIRST_S = 0.5   # a batch the store refused is tried again after this, doubling each time,
RETRY_MAX_S = 30.0    # up to this, with jitter

# ClickHouse errors that are about the data, not the store: the same rows will always fail.
DATA_ERRORS = frozenset({
    "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING",
    "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_UUID",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", "CANNOT_CONVERT_TYPE", "TYPE_MISMATCH",
    "INCORRECT_DATA", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", "ARGUMENT_OUT_OF_BOUND",
    "DECIMAL_OVERFLOW", "TOO_LARGE_STRING_SIZE", "ILLEGAL_COLUMN", "BAD_ARGUMENTS",
})


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` says the rows themselves cannot be stored (client-side conversion
    of a value to its column type, or a ClickHouse error about the data)."""
    if isinstance(exc, (ValueError, TypeError, OverflowError, struct.error, UnicodeError)):
        return True
    if isinstance(exc, DatabaseError):
        name = getattr(exc, "name", None) or ""
        if not name:
            for known in DATA_ERRORS:
                if f"({known})" in str(exc):
                    name = known
        return name in DATA_ERRORS
    return False


def backoff(attempt: int, first: float = RETRY_FIRST_S, cap: float = RETRY_MAX_S) -> float:
    """Bounded exponential backoff with full jitter: attempt 1 waits up to ``first``."""
    return random.uniform(0, min(cap, first * 2 ** (attempt - 1)))


def consumer_conf(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Consumer settings for at-least-once: manual commits, short group timeouts.

    ``max.poll.interval.ms`` is also the rebalance timeout a new group waits for; a small one
    makes a worker join in seconds rather than half a minute.

    ``fetch.wait.max.ms`` is how long the broker may hold a fetch that finds nothing new. Each
    fetch names every partition the consumer holds (the derived sink: ten topics), and the local
    broker's cost grows with fetches times partitions. With 50 ms it used 0.17 cores under an
    idle ``cxledger up`` and 0.6 under the benchmark's 5,000 events/s; with 200 ms, 0.06 and
    0.38, for 0.03 s more latency at 1,000 events/s and none measurable at 5,000. A Kafka
    broker answers as soon as data arrives, so the figure costs nothing there.
    """
    return settings.kafka_conf(**{
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 10_000,
        "session.timeout.ms": 6_000,
        "fetch.wait.max.ms": 200,
        **extra,
    })


@dataclass
class SinkStats:
    consumed: int = 0
    written: int = 0
    via_inlets: int = 0  # of those, rows ClickHouse decoded itself (AvroInlet)
    deadlettered: int = 0
    batches: int = 0
    last_write: float | None = None  # wall time of the last batch written
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next Kafka offset
    retries: int = 0  # batches tried again after a store fault, since start
    fault: str | None = None  # the store fault being retried now, if any
    fault_since: float | None = None


@dataclass(frozen=True)
class AvroInlet:
    """Where a type's sealed messages go undecoded: ``table`` takes them ``FORMAT Avro``
    (ClickHouse decodes them: a Null table whose materialized view writes the rows into
    ``rows_table``). ``rows_in``: the array field whose items are those rows, counted as rows
    written to ``rows_table``, as the sink's own inserts are; None: one row a message.
    ``framing``: the messages of all schema ids go in one container of this schema, each with
    its position in front (``sinks.ledger_inlets``: the table's view writes it into the row);
    a schema the table has no branch for is decoded here."""
    table: str
    rows_table: str
    rows_in: str | None = None
    framing: InletSchema | None = None


# Before the sealed messages of framing inlets are inserted: (client, [(event id, partition,
# position)], rows already decoded, their sources) -> the indexes of the messages to decode
# in Python instead (the ledger sink: those whose event id the store or the batch has already).
# The event id is the record's first field (None: the body does not start with a string).
RawScreen = Callable[[Client, list[tuple[str | None, int, int]], Rows,
                      dict[tuple[str, tuple[str, ...]], list[tuple[Message, int]]]], set[int]]
# A message bound for an inlet: (message, position, its record in the inlet's container, the
# event id for the raw screen)
_Raw = tuple[Message, int, bytes, "str | None"]


@dataclass
class _Pending:
    """One batch on its way to the store: rows per table, each with its source message, and
    the messages that go to an inlet as they are, per (inlet, schema id; 0 for a framing
    inlet, which takes all its schema ids at once)."""
    rows: dict[tuple[str, tuple[str, ...]], list[list[Any]]]
    sources: dict[tuple[str, tuple[str, ...]], list[tuple[Message, int]]]
    dead: list[tuple[Message, int, str]]
    offsets: dict[tuple[str, int], tuple[int, int]]
    token: str
    raw: dict[tuple[AvroInlet, int], list[_Raw]] = field(default_factory=dict)
    raw_rows: Counter = field(default_factory=Counter)  # table -> rows the inlets' views wrote
    done: set = field(default_factory=set)  # tables already written


def _is_fence(msg: Message) -> bool:
    return any(name == FENCE_HEADER for name, _ in (msg.headers() or ()))


class ClickHouseSink:
    def __init__(self, settings: Settings, client: Client, topics: list[str], group_id: str,
                 mapper: RowMapper, codec: WireCodec | None = None,
                 batch_rows: int | None = None, batch_seconds: float | None = None,
                 consumer_extra: dict[str, Any] | None = None,
                 offset_base: Mapping[tuple[str, int], int] | None = None,
                 screen: Screen | None = None, check: Check | None = None,
                 sealer: Sealer | None = None, metrics: Metrics | None = None,
                 inlets: Mapping[str, AvroInlet] | None = None,
                 raw_screen: RawScreen | None = None):
        self.settings = settings
        self.client = client
        self.topics = topics
        self.mapper = mapper
        self.codec = codec or WireCodec()
        self.batch_rows = batch_rows or settings.sink_batch_rows
        self.batch_seconds = batch_seconds or settings.sink_batch_seconds
        self.name = group_id
        # metrics (cxledger.metrics): librdkafka's statistics every STATS_INTERVAL_MS give the
        # partitions' ends; the lag is computed against what this sink has written
        self.metrics = metrics or process_metrics()
        self.assignment: list[tuple[str, int]] = []  # this consumer's partitions
        self._lag: dict[tuple[str, int], int] = {}
        self.consumer = Consumer(consumer_conf(settings, group_id, **{
            "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self._on_stats,
            **(consumer_extra or {})}))
        self.deadletter = Producer(settings.kafka_conf(**{"enable.idempotence": True,
                                                         "linger.ms": 5}))
        self.offset_base = dict(offset_base or {})
        self.screen = screen
        self.check = check
        self.sealer = sealer  # a message with its valid seal needs no ``check`` (schemas.seal)
        # event type -> the inlet its sealed messages go to undecoded (ClickHouse decodes them)
        self.inlets = dict(inlets or {}) if sealer is not None else {}
        # schema id -> (its inlet, its definition, its branch in the inlet's framing)
        self._inlet_of_id: dict[int, tuple[AvroInlet, dict[str, Any], int] | None] = {}
        self.raw_screen = raw_screen
        self.stats = SinkStats()
        self._stop = threading.Event()  # set by ``run``'s caller: give up retrying, commit nothing
        self._subscribed = False
        self.metrics.add_source(self, lag=self._lag_values, assigned=self._assigned_values,
                                sink=self._sink_values)

    # -- metrics (read at scrape time from another thread: plain values only) ----------------
    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics (in this sink's thread): the end of each assigned
        partition; lag = end - the position after what the store holds (what is committed, or
        where the consumer started). On Tansu the end is the last batch's base offset + 1
        (README, Known limits), so it is also at least what this sink has read."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        written = self.stats.positions
        lag: dict[tuple[str, int], int] = {}
        for topic, info in stats.get("topics", {}).items():
            for key, part in info.get("partitions", {}).items():
                partition = int(key)
                if partition < 0 or not part.get("desired"):
                    continue
                tp = (topic, partition)
                end = max(int(part.get("hi_offset", -1)), written.get(tp, -1))
                base = max(written.get(tp, -1), int(part.get("committed_offset", -1001)))
                if base < 0:  # nothing written or committed yet: from the partition's start
                    base = max(0, int(part.get("lo_offset", 0)))
                if end >= 0:
                    lag[tp] = max(0, end - base)
        self._lag = lag

    def _lag_values(self):
        assigned = set(self.assignment)
        return [(self.name, t, p, v) for (t, p), v in self._lag.items() if (t, p) in assigned]

    def _assigned_values(self):
        return [(self.name, len(self.assignment))]

    def _sink_values(self):
        return [(self.name, self.stats.last_write, self.stats.fault is not None)]

    def poll_batch(self, store_done: Callable[[], bool] | None = None) -> list[Message]:
        """Up to ``batch_rows`` messages, within ``batch_seconds``. ``store_done``: while the
        store thread writes the batch before, whether it has finished; when it has and nothing
        came meanwhile, the (empty) batch ends early so that the one written is committed."""
        if not self._subscribed:
            self.consumer.subscribe(self.topics)
            self._subscribed = True
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        wait = self.batch_seconds if store_done is None else 0.05
        while len(batch) < self.batch_rows:
            left = deadline - time.monotonic()
            if left <= 0 or (not batch and store_done is not None and store_done()):
                break
            msgs = self.consumer.consume(min(self.batch_rows - len(batch), 5000),
                                         timeout=min(left, wait))
            good = [msg for msg in msgs if msg.error() is None]
            batch += good
            if len(good) < len(msgs):
                for msg in msgs:
                    err = msg.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error", sink=self.name, error=str(err))
        self.assignment = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        return batch

    def write(self, batch: list[Message]) -> None:
        """Decode, screen, store (retrying store faults), dead-letter and commit one batch
        (steps 2-5 above). Returns without committing only when asked to stop mid-fault."""
        if not batch:
            return
        pending = self._prepare(batch)
        started = time.monotonic()
        if not self._store(pending):
            return  # stopping during a store fault: nothing committed, Kafka redelivers it
        self._complete(batch, pending, started)

    def _complete(self, batch: list[Message], pending: _Pending, started: float) -> None:
        """After the store took a batch: its dead letters to the topic, its offsets committed,
        the counts."""
        self.metrics.write_seconds.labels(self.name).observe(time.monotonic() - started)
        self._send_dead_letters(pending.dead)
        offsets = pending.offsets
        self._commit([TopicPartition(t, p, hi + 1) for (t, p), (_, hi) in offsets.items()])
        self._count(batch, pending)
        self.stats.consumed += len(batch)
        via_inlets = sum(pending.raw_rows.values())
        self.stats.via_inlets += via_inlets
        self.stats.written += sum(len(r) for r in pending.rows.values()) + via_inlets
        self.stats.deadlettered += len(pending.dead)
        self.stats.batches += 1
        self.stats.last_write = time.time()
        for (t, p), (_, hi) in offsets.items():
            self.stats.positions[(t, p)] = hi + 1
        log.debug("batch written", sink=self.name, messages=len(batch),
                  deadlettered=len(pending.dead))

    def _count(self, batch: list[Message], pending: _Pending) -> None:
        m = self.metrics
        for topic, n in Counter(map(Message.topic, batch)).items():
            m.events_in.labels(self.name, topic).inc(n)
        for (table, _), rows in pending.rows.items():
            if rows:
                m.rows_written.labels(self.name, table).inc(len(rows))
        for table, n in pending.raw_rows.items():
            m.rows_written.labels(self.name, table).inc(n)
        m.batch_messages.labels(self.name).observe(len(batch))

    def _prepare(self, batch: list[Message]) -> _Pending:
        rows: dict = defaultdict(list)
        sources: dict = defaultdict(list)
        dead: list[tuple[Message, int, str]] = []
        raw: dict[tuple[AvroInlet, int], list[_Raw]] = {}
        offsets: dict[tuple[str, int], tuple[int, int]] = {}
        base = self.offset_base
        for msg in batch:
            tp = (msg.topic(), msg.partition())
            lo_hi = offsets.get(tp)
            offsets[tp] = (msg.offset(), msg.offset()) if lo_hi is None else (lo_hi[0], msg.offset())
            if msg.value() is None and _is_fence(msg):
                continue
            position = msg.offset() + base.get(tp, 0)
            sealed = is_sealed(self.sealer, msg)
            if sealed and self.inlets:
                inlet = self._inlet(msg.value())
                if inlet is not None:
                    raw.setdefault(inlet, []).append(self._raw(inlet[0], msg, position))
                    continue
            self._decode_into(rows, sources, dead, msg, position, sealed)
        # Positions, not offsets: on the local broker offsets start again at 0 after a restart,
        # and a token seen before would make ClickHouse drop a new batch as a duplicate.
        token = ",".join(f"{t}:{p}:{lo + base.get((t, p), 0)}-{hi + base.get((t, p), 0)}"
                         for (t, p), (lo, hi) in sorted(offsets.items()))
        return _Pending(rows, sources, dead, offsets, token, raw)

    def _decode_into(self, rows: dict, sources: dict, dead: list, msg: Message, position: int,
                     sealed: bool) -> None:
        """Decode, check and map one message into ``rows`` (or ``dead``)."""
        try:
            record, schema_id = self.codec.decode(msg.value(), sealed)
        except DecodeError as exc:
            dead.append((msg, position, str(exc)))
            return
        refusal = (self.check(record, msg.key())
                   if self.check is not None and not sealed else None)
        if refusal:
            dead.append((msg, position, refusal))
            return
        for table, columns, row in self.mapper(record, schema_id, msg.partition(), position):
            rows[(table, columns)].append(row)
            sources[(table, columns)].append((msg, position))

    def _raw(self, inlet: AvroInlet, msg: Message, position: int) -> _Raw:
        """A message bound for ``inlet``, with its record as the container holds it (here, in
        the polling thread: the store thread's time is the engine's)."""
        value = msg.value()
        body = value[5:]
        if inlet.framing is None:
            return msg, position, body, None
        schema_id = int.from_bytes(value[1:5], "big")
        try:
            event_id = first_string(body) if self.raw_screen is not None else None
        except (ValueError, IndexError, UnicodeDecodeError):
            event_id = None
        return (msg, position, inlet.framing.framed(msg.partition(), position, schema_id,
                                                    self._inlet_of_id[schema_id][2], body),
                event_id)

    def _inlet(self, value: bytes | None) -> tuple[AvroInlet, int] | None:
        """(inlet, schema id) for a message of a type that has an inlet, else None."""
        if value is None or len(value) < 5 or value[0] != 0:
            return None
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in self._inlet_of_id:
            try:
                event_type, definition = self.codec.ids.schema_for_id(schema_id)
            except KeyError:
                event_type, definition = None, {}
            inlet = self.inlets.get(event_type)
            branch = 0
            if inlet is not None and inlet.framing is not None:
                branch = inlet.framing.branch(definition)
                if branch is None:
                    inlet = None
            self._inlet_of_id[schema_id] = (None if inlet is None
                                            else (inlet, definition, branch))
        found = self._inlet_of_id[schema_id]
        if found is None:
            return None
        # a framing inlet takes the messages of all its schema ids in one container
        return found[0], (0 if found[0].framing is not None else schema_id)

    def _store(self, pending: _Pending, failed: Exception | None = None) -> bool:
        """Write the batch's rows and dead letters, retrying store faults; False if asked to
        stop before the store took it. ``failed``: a first attempt (the store thread's) failed
        with it."""
        attempt = 0
        while True:
            if failed is None:
                try:
                    self._write_once(pending)
                    break
                except Exception as exc:
                    failed = exc
            attempt += 1
            delay = backoff(attempt)
            now = time.time()
            if self.stats.fault is None:
                self.stats.fault_since = now
            self.stats.fault = f"{type(failed).__name__}: {str(failed).strip()[:300]}"
            self.stats.retries += 1
            self.metrics.store_retries.labels(self.name).inc()
            log.error("the store refused the batch; trying it again", sink=self.name,
                      attempt=attempt, retry_in_s=round(delay, 2), error=self.stats.fault,
                      failing_for_s=round(now - self.stats.fault_since, 1))
            failed = None
            if not self._wait_paused(delay):
                return False
        if self.stats.fault is not None:
            log.info("the store took the batch again", sink=self.name, attempts=attempt + 1,
                     failed_for_s=round(time.time() - self.stats.fault_since, 1))
            self.stats.fault = self.stats.fault_since = None
        return True

    def _write_once(self, pending: _Pending) -> None:
        """One attempt at writing the batch (what is already written is not written again)."""
        self._write_tables(pending)
        if pending.dead:
            self.client.insert("deadletter_events",
                               [self._deadletter_row(m, pos, why) for m, pos, why in pending.dead],
                               column_names=list(DEADLETTER_COLUMNS))

    def _wait_paused(self, seconds: float) -> bool:
        """Wait while the consumer stays in its group and fetches nothing; False if stopped."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if self._stop.is_set():
                    return False
                self.consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            return not self._stop.is_set()
        finally:
            if assignment:
                self.consumer.resume(assignment)

    def _write_tables(self, pending: _Pending) -> None:
        if self.raw_screen is not None and "screened" not in pending.done:
            self._screen_raw(pending)
            pending.done.add("screened")
        for key in list(pending.raw):  # first: a batch the store cannot read comes back as rows
            if key not in pending.done:
                self._insert_raw(pending, *key)
                pending.done.add(key)
        for key in list(pending.rows):
            if key in pending.done:
                continue
            table, columns = key
            rows, sources = pending.rows[key], pending.sources[key]
            if self.screen is not None:
                kept, refused = self.screen(self.client, table, columns, rows)
                pending.dead += [(*sources[i], why) for i, why in refused]
                if len(kept) < len(rows):
                    rows = [rows[i] for i in kept]
                    sources = [sources[i] for i in kept]
                    pending.rows[key], pending.sources[key] = rows, sources
            token = f"{self.name}/{table}/{pending.token}"
            pending.dead += self._insert_isolating(table, columns, rows, sources, token)
            pending.done.add(key)

    def _screen_raw(self, pending: _Pending) -> None:
        """Take the messages ``raw_screen`` names out of the framing inlets' groups and decode
        them into ``pending.rows``, which are then put back in (partition, position) order."""
        keys = [key for key in pending.raw if key[0].framing is not None]
        found = [(key, item) for key in keys for item in pending.raw[key]]
        if not found:
            return
        moved = self.raw_screen(self.client, [(event_id, msg.partition(), position)
                                              for _, (msg, position, _, event_id) in found],
                                pending.rows, pending.sources)
        if not moved:
            return
        for key in keys:
            pending.raw[key] = []
        for index, (key, item) in enumerate(found):
            if index in moved:
                self._decode_into(pending.rows, pending.sources, pending.dead, item[0], item[1],
                                  sealed=True)
            else:
                pending.raw[key].append(item)
        for key in keys:
            if not pending.raw[key]:
                del pending.raw[key]
        for key, rows in pending.rows.items():
            order = sorted(range(len(rows)), key=lambda i, s=pending.sources[key]:
                           (s[i][0].partition(), s[i][1]))
            pending.rows[key] = [rows[i] for i in order]
            pending.sources[key] = [pending.sources[key][i] for i in order]

    def _insert_raw(self, pending: _Pending, inlet: AvroInlet, schema_id: int) -> None:
        """The messages of one inlet and schema id, undecoded, as one Avro object container
        (ClickHouse decodes it). If the store does not take it, for whatever reason, they are
        decoded here into ``pending.rows`` instead, where a bad one becomes a dead letter (and
        a store fault is retried as for any rows)."""
        messages = pending.raw[(inlet, schema_id)]
        definition = (inlet.framing.container if inlet.framing is not None
                      else self._inlet_of_id[schema_id][1])
        bodies = [body for _, _, body, _ in messages]
        token = f"{self.name}/{inlet.table}/{pending.token}"
        try:
            self.client.raw_insert(inlet.table, insert_block=object_container(definition, bodies),
                                   fmt="Avro", settings={"insert_deduplication_token": token})
        except Exception as exc:
            log.warning("the store did not take the messages as Avro; decoding them here",
                        sink=self.name, table=inlet.table, messages=len(messages),
                        error=str(exc).strip()[:300])
            for msg, position, _, _ in messages:
                self._decode_into(pending.rows, pending.sources, pending.dead, msg, position,
                                  sealed=True)
            return
        pending.raw_rows[inlet.rows_table] += (
            len(bodies) if inlet.rows_in is None
            else sum(items_in(definition, body, inlet.rows_in) for body in bodies))

    def _insert_isolating(self, table: str, columns: tuple[str, ...], rows: list[list[Any]],
                          sources: list[tuple[Message, int]],
                          token: str) -> list[tuple[Message, int, str]]:
        """Insert ``rows``; if the table refuses them for a data reason, halve until each
        refused row stands alone. Returns the refused rows as dead letters."""
        if not rows:
            return []
        try:
            # by columns: clickhouse-connect then encodes each column without first taking
            # the rows apart itself (the benchmark's clickhouse_insert details: a third faster)
            self.client.insert(table, list(zip(*rows)), column_names=list(columns),
                               column_oriented=True,
                               settings={"insert_deduplication_token": token})
            return []
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(rows) == 1:
                reason = f"refused by {table}: {str(exc).strip()[:500]}"
                log.warning("row refused by the store", sink=self.name, table=table,
                            reason=reason)
                return [(*sources[0], reason)]
        mid = len(rows) // 2
        return (self._insert_isolating(table, columns, rows[:mid], sources[:mid], token + "/a")
                + self._insert_isolating(table, columns, rows[mid:], sources[mid:], token + "/b"))

    def _send_dead_letters(self, dead: list[tuple[Message, int, str]]) -> None:
        """To the dead-letter topic, after deadletter_events holds them: a dead letter the
        topic does not take is logged, never a reason to stop (the table has it)."""
        def delivered(err, msg) -> None:
            if err is not None:
                log.error("dead letter not taken by the topic; deadletter_events has it",
                          sink=self.name, error=str(err))

        for msg, position, reason in dead:
            value, headers = deadletter_message(msg.value(), reason, self.name, msg.topic(),
                                                msg.partition(), position)
            try:
                self.deadletter.produce(self.settings.topics.deadletter, value=value,
                                        key=(msg.key() or b"")[:1024] or None, headers=headers,
                                        on_delivery=delivered)
            except (BufferError, KafkaException) as exc:
                delivered(exc, msg)
            log.warning("dead-lettered", sink=self.name, topic=msg.topic(),
                        partition=msg.partition(), offset=msg.offset(), reason=reason[:500])
            self.metrics.dead_letter(reason, self.name)
        if dead:
            self.deadletter.flush(30)
            self.metrics.events_out.labels(self.name, self.settings.topics.deadletter).inc(
                len(dead))

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. the group moved on while the store was away
            log.warning("offsets not committed; the batch will be delivered again and "
                        "deduplicated", sink=self.name, error=str(exc))

    @staticmethod
    def _deadletter_row(msg: Message, position: int, reason: str) -> list[Any]:
        value = msg.value() or b""
        key = msg.key()
        return [msg.topic(), msg.partition(), position, reason,
                key.decode(errors="replace") if key else None, value.hex()]

    def run(self, stop: threading.Event, until: Callable[[], bool] | None = None,
            after_batch: Callable[[], None] | None = None) -> None:
        """Write batches until ``stop`` is set (or ``until()`` is true); the last batch is
        written before returning (unless the store is failing then). An unexpected error ends
        the thread after it is logged: whoever runs the sink must then end the process
        (cxledger.pipeline). ``after_batch`` is called after each batch is committed.

        Two batches are in hand at a time: while a store thread writes one (the engine works
        without the GIL), this thread polls and decodes the next. The order of the steps per
        batch does not change: a batch is stored after the one before it (so the first-version
        screen sees that one), and committed only after the store took it. Only this thread
        touches the consumer: a batch the store thread could not write is retried here, with
        the consumer paused, before the next batch goes to the store."""
        self._stop = stop
        log.info("sink started", sink=self.name, topics=self.topics)
        storing = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-store")
        # the batch the store thread has: (messages, pending, when it went, its future)
        in_store: tuple[list[Message], _Pending, float, Future] | None = None
        try:
            while not stop.is_set() and not (until is not None and until()):
                batch = self.poll_batch(None if in_store is None else in_store[3].done)
                pending = self._prepare(batch) if batch else None
                if in_store is not None:
                    taken = self._finish(*in_store)
                    in_store = None
                    if not taken:
                        break  # stopped during a store fault: nothing more is written
                    if after_batch is not None:
                        after_batch()
                if pending is not None:
                    in_store = (batch, pending, time.monotonic(),
                                storing.submit(self._write_once, pending))
            if in_store is not None and self._finish(*in_store) and after_batch is not None:
                after_batch()
        except Exception:
            log.exception("sink failed", sink=self.name)
            raise
        finally:
            storing.shutdown(wait=True)
            self.close()

    def _finish(self, batch: list[Message], pending: _Pending, started: float,
                future: Future) -> bool:
        """Wait for the store thread's attempt at ``batch``; retry it here if it failed; then
        commit it. False when stopped before the store took it."""
        failed = future.exception()
        if failed is not None and not self._store(pending, failed):
            return False
        self._complete(batch, pending, started)
        return True

    def close(self) -> None:
        if self.deadletter is None:
            return  # already closed
        self.metrics.remove_source(self)
        self.assignment = []
        try:
            self.consumer.close()
        finally:
            self.deadletter.flush(10)
            self.deadletter = None  # release its connections now, while the broker is up
        log.info("sink stopped", sink=self.name, consumed=self.stats.consumed,
                 written=self.stats.written, via_inlets=self.stats.via_inlets,
                 deadlettered=self.stats.deadlettered)


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
