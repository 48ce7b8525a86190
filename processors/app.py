"""The processors' worker: the ledger topic folded into derived topics.

    cxledger process            # one worker; start more with the same settings to scale out

faust-streaming runs the worker (lifecycle, signals, logging, the live-clock and health
timers); the ledger comes in through one librdkafka consumer in the processors' group
(processors.source), and the derived events go out through a librdkafka producer.

Per batch (``ProcessorSource.poll``: up to 10,000 messages or 0.2 s), in this order, which is
the whole at-least-once story:
  1. skip what the partition's state already holds (offsets below its ``position``);
  2. decode with our Avro codec; undecodable messages go to the dead-letter topic with the reason,
     and so do records the SDK's checks refuse (``ledger_refusal``; not run again on a record
     carrying the SDK's valid seal, ``schemas.seal``);
  3. fold each partition's records in offset order (processors.batch), drain what changed;
  4. send the derived events as Avro to their topics and wait for the broker's acks. A batch
     whose events are not acknowledged is sent again, with backoff, until they are: it is never
     committed, and never leaves state behind, before that;
  5. write the changed customer states, then each partition's own state (clock, windows, the
     ``position`` after the batch), to the compacted changelog (processors.changelog), and wait
     for the broker's acks;
  6. commit the batch's offsets.
A crash before 5 completes replays the batch from the state before it: derived event ids are
deterministic and every sink deduplicates by id, so a replay changes nothing users see. A worker
given a partition reads its state back from the changelog as of the last partition record
(``read_state``: a batch cut short by a crash does not count) and starts reading the partition
at that state's position, whatever offset the group committed: nothing the state holds is
folded twice, nothing after it is skipped. Hot state lives in memory as plain data; the
changelog is written once per batch, read only on assignment.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import structlog

from cxledger.config import Settings
from cxledger.metrics import Metrics, process_metrics
from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
from processors.changelog import (changelog_topic, create_changelog_topic, read_state,
                                  state_records)
from processors.derived import message_key
from processors.hall_app import HallMonthsAgent
from processors.ledger import live_clock_target
from processors.rules import Rules, load_rules
from processors.source import ProcessorSource
from processors.window_batches import pack_window_partials
from confluent_kafka import Producer

from producers.sdk import PRODUCER_DEFAULTS, make_codec
from schemas.codec import DecodeError
from schemas.deadletter import deadletter_message
from schemas.seal import is_sealed, sealer_of
from schemas.validation import ledger_refusal

log = structlog.get_logger("cxledger.processors")

RETRY_FIRST_S = 0.5   # a batch not acknowledged is sent again after this, doubling each time,
RETRY_MAX_S = 30.0    # up to this, with jitter


class WorkerState:
    """What the worker's health endpoints read (cxledger.health; plain values, written on the
    event loop, read from the health server's thread)."""

    def __init__(self) -> None:
        self.assigned: frozenset[int] = frozenset()  # ledger partitions assigned to this worker
        self.lag: dict[int, int] = {}  # ledger partition -> messages behind its end
        self.last_tick: float | None = None  # monotonic time the event loop last ran our timer


class NotAcknowledged(RuntimeError):
    """Derived events the broker did not acknowledge."""


def backoff(attempt: int, first: float = RETRY_FIRST_S, cap: float = RETRY_MAX_S) -> float:
    """Bounded exponential backoff with full jitter: attempt 1 waits up to ``first``."""
    return random.uniform(0, min(cap, first * 2 ** (attempt - 1)))


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's (aiokafka's) credentials from the librdkafka settings every other client of
    ours uses (``settings.kafka_client``), so that both speak to Kafka the same way:

    - ``security.protocol``: PLAINTEXT (None), SSL, SASL_PLAINTEXT or SASL_SSL;
    - ``sasl.mechanism`` PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (``sasl.username``,
      ``sasl.password``) or GSSAPI (``sasl.kerberos.service.name``); librdkafka's default,
      GSSAPI, when none is set;
    - TLS: ``ssl.ca.location`` (a CA file or directory; default: the system's CAs), a client
      certificate for mutual TLS (``ssl.certificate.location``, ``ssl.key.location``,
      ``ssl.key.password``), ``ssl.endpoint.identification.algorithm=none`` (no host name
      check) and ``enable.ssl.certificate.verification=false`` (no check at all), as librdkafka
      reads them.
    """
    client = settings.kafka_client

    def ssl_context() -> ssl.SSLContext:
        ca = client.get("ssl.ca.location")
        if ca and os.path.isdir(ca):
            context = ssl.create_default_context(capath=ca)
        else:
            context = ssl.create_default_context(cafile=ca or None)
        if client.get("ssl.certificate.location"):
            context.load_cert_chain(client["ssl.certificate.location"],
                                    client.get("ssl.key.location") or None,
                                    password=client.get("ssl.key.password") or None)
        if str(client.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
            context.check_hostname = False
        if str(client.get("enable.ssl.certificate.verification", "true")).lower() in ("false",
                                                                                     "0"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise ValueError(f"security.protocol {protocol!r}: expected PLAINTEXT, SSL, "
                         "SASL_PLAINTEXT or SASL_SSL")
    context = ssl_context() if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = client.get("sasl.mechanism", "GSSAPI").upper()
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(
            kerberos_service_name=client.get("sasl.kerberos.service.name", "kafka"),
            ssl_context=context)
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ValueError(f"sasl.mechanism {mechanism!r} is not supported by the faust worker: "
                         "use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or GSSAPI")
    return faust.SASLCredentials(username=client.get("sasl.username"),
                                 password=client.get("sasl.password"),
                                 mechanism=mechanism, ssl_context=context)


def _faust_datadir(settings: Settings) -> str:
    """faust makes a tables directory even for the memory store: keep it out of the working
    directory (the state itself is in our changelog topic)."""
    return os.path.join(tempfile.gettempdir(), f"{settings.topics.processors_app}-faust")


def faust_app(settings: Settings) -> faust.App:
    """A faust app that consumes the ledger with faust's own consumer (aiokafka), configured as
    a production worker would be: what the benchmark's do-nothing worker runs to measure
    faust's ceiling (benchmarks/faust_null.py). The worker itself consumes through librdkafka
    (``worker_app``, processors.source)."""
    bootstrap = ";".join(f"kafka://{b}" for b in settings.kafka_bootstrap.split(","))
    return faust.App(
        settings.topics.processors_app,
        broker=bootstrap,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        # How many fetched messages wait for the agent (faust's default 4,096 is less than
        # one batch): with 65,536 the next batch is fetched while this one is taken; a worker
        # on faust's consumer ran 15% faster with it (3.9k -> 4.5k events/s on 100k events).
        stream_buffer_maxsize=65_536,
        datadir=_faust_datadir(settings),
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


class DerivedProducer:
    """librdkafka producer for derived and dead-letter events: ``send`` queues, ``settle``
    waits (off the event loop) until every queued message is acknowledged or raises
    NotAcknowledged; ``reset`` starts a new client after a failure."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._producer = Producer(settings.kafka_conf(**PRODUCER_DEFAULTS))
        # with the settings' seal key, the derived events carry the seal: the derived sink
        # then hands them to ClickHouse undecoded where it can (sinks.kafka_sink.AvroInlet)
        self._sealer = sealer_of(settings.seal_key)
        self._failures: list[str] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        """A new librdkafka client (an idempotent producer can be left in a fatal state)."""
        self._producer = Producer(self._settings.kafka_conf(**PRODUCER_DEFAULTS))
        with self._lock:
            self._failures = []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            with self._lock:
                self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None
             ) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=self._delivered, **extra)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def settle(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(None, self._producer.flush, timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining or failures:
            raise NotAcknowledged(f"derived events not acknowledged: {remaining} in flight, "
                                  f"failures: {failures[:3]}")

    async def deliver(self, messages: list[tuple[str, bytes | None, bytes, int | None]],
                      what: str, sealed: bool = False) -> int:
        """Send (topic, key, value, partition) messages and wait until all are acknowledged,
        sending them all again with bounded backoff until they are (a retry may write some
        twice: the consumers keep the first copy). Returns the attempts it took. ``sealed``:
        the values are what our encoder wrote from our folds; they carry the seal, if the
        settings have a key (schemas.seal)."""
        sealer = self._sealer if sealed else None
        headers = [None if sealer is None else [sealer.header(key, value)]
                   for _, key, value, _ in messages]
        attempt = 0
        while True:
            for (topic, key, value, partition), seal in zip(messages, headers):
                self.send(topic, key, value, seal, partition=partition)
            try:
                await self.settle()
                break
            except NotAcknowledged as exc:
                attempt += 1
                delay = backoff(attempt)
                log.error(f"{what} not acknowledged; sending the batch again",
                          attempt=attempt, retry_in_s=round(delay, 2), error=str(exc))
                await asyncio.sleep(delay)
                self.reset()
        if attempt:
            log.info(f"{what} acknowledged after retries", attempts=attempt + 1)
        return attempt + 1


class _RuntimeOnly(faust.App.BootStrategy):
    """faust without its own Kafka clients or web server: the worker consumes through
    processors.source and produces through DerivedProducer."""
    enable_kafka = False
    enable_web = False


def worker_app(settings: Settings) -> faust.App:
    """The worker's faust app: lifecycle, signals, logging and timers."""
    app = faust.App(settings.topics.processors_app, store="memory://", web_enabled=False,
                    datadir=_faust_datadir(settings))
    app.boot_strategy = _RuntimeOnly(app)
    return app


def create_app(settings: Settings, rules: Rules | None = None, *, batch_size: int = 10000,
               batch_within: float = 0.2, live_clock_interval: float = 10.0,
               metrics: Metrics | None = None, metrics_interval: float = 2.0) -> faust.App:
    rules = rules or load_rules(settings.rules_path)
    metrics = metrics or process_metrics()
    group = settings.topics.processors_app
    ledger_topic = settings.topics.ledger
    health = WorkerState()
    tune_gc_for_folds()
    app = worker_app(settings)
    codec = make_codec(settings)  # registry ids when a registry is configured
    sealer = sealer_of(settings.seal_key)  # what the SDK sealed is not checked again
    folds = PartitionFolds(rules)
    producer = DerivedProducer(settings)
    create_changelog_topic(settings)
    state_topic = changelog_topic(settings)
    halls = HallMonthsAgent(settings, rules, codec)  # the second fold: hall months (halls.py)

    def dead_letter(msg_key, value, reason: str, partition: int, offset: int) -> None:
        value, headers = deadletter_message(value, reason, settings.topics.processors_app,
                                            ledger_topic, partition, offset)
        producer.send(settings.topics.deadletter, (msg_key or b"")[:1024] or None, value,
                      headers)
        log.warning("dead-lettered", partition=partition, offset=offset, reason=reason[:500])
        metrics.dead_letter(reason, group)
        metrics.events_out.labels(group, settings.topics.deadletter).inc()

    # -- rebalancing: called from within source.poll, between two batches ----------------------
    def assigned(partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Read each assigned ledger partition's state back from the changelog (in parallel)
        and start reading the partition at its position: what the state holds is never read
        again, and nothing after it is skipped, whatever offset the group committed."""
        ledger = [p for t, p in partitions if t == ledger_topic]
        starts: dict[tuple[str, int], int] = {}
        with ThreadPoolExecutor(min(8, max(1, len(ledger)))) as pool:
            states = list(pool.map(lambda p: read_state(settings, p), ledger))
        for partition, entries in zip(ledger, states):
            fold = folds.restore(partition, entries)
            log.info("partition state restored", partition=partition, keys=len(entries),
                     position=fold.position)
            if fold.position is not None:  # a state that does not say: the committed offset
                starts[(ledger_topic, partition)] = fold.position
        if any(t == halls.topic for t, _ in partitions):
            halls.forget()  # read back before its first batch
        health.assigned = frozenset(ledger)
        return starts

    def revoked(partitions: list[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            if topic == ledger_topic:
                folds.drop(partition)
            elif topic == halls.topic:
                halls.forget()
        health.assigned = health.assigned - {p for t, p in partitions if t == ledger_topic}

    source = ProcessorSource(settings, [ledger_topic, halls.topic], on_assign=assigned,
                             on_revoke=revoked, batch_size=batch_size,
                             batch_within=batch_within)

    # The folds are touched by the poll loop (rebalancing included) and by the live-clock
    # timer, one at a time (this lock); the CPU-heavy steps (decoding, folding, encoding) run
    # in a thread, so that the event loop keeps its timers and health answers running however
    # long a batch takes.
    folds_lock = asyncio.Lock()

    def decode_batch(messages) -> tuple[dict[int, list[dict[str, Any]]], dict[int, int]]:
        """The batch's records per partition, and the offset after each partition's last
        message; what the state holds already is skipped, what cannot be folded dead-lettered."""
        batch: dict[int, list[dict[str, Any]]] = defaultdict(list)
        ends: dict[int, int] = {}
        for msg in messages:
            partition, offset = msg.partition(), msg.offset()
            position = folds.get(partition).position
            if position is not None and offset < position:
                continue  # the state holds it already
            ends[partition] = offset + 1
            value, key = msg.value(), msg.key()
            sealed = is_sealed(sealer, msg)
            try:
                record, _ = codec.decode(value, sealed)
            except DecodeError as exc:
                dead_letter(key, value, str(exc), partition, offset)
                continue
            refusal = None if sealed else ledger_refusal(record, key)
            if refusal:  # the ledger sink refuses it too: what is folded is what is stored
                dead_letter(key, value, refusal, partition, offset)
                continue
            batch[partition].append(record)
        return batch, ends

    async def fold_ledger(messages) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        metrics.events_in.labels(group, ledger_topic).inc(len(messages))
        batch, ends = await loop.run_in_executor(None, decode_batch, messages)
        if not ends:
            return
        derived = await loop.run_in_executor(None, folds.fold_batch, batch)
        for partition, end in ends.items():
            folds.get(partition).position = end
        await send_and_persist(derived, ends)  # acknowledged before the batch is committed
        del derived
        metrics.processor_batch_seconds.observe(time.monotonic() - started)

    @app.task
    async def poll_and_fold() -> None:
        """The worker's loop: poll a batch, fold it, commit it (module docstring)."""
        try:
            while True:
                async with folds_lock:
                    messages = await source.poll()
                    if not messages:
                        continue
                    ledger = [m for m in messages if m.topic() == ledger_topic]
                    if ledger:
                        await fold_ledger(ledger)
                    if len(ledger) < len(messages):
                        await halls.fold([m for m in messages if m.topic() == halls.topic])
                    ends = {(m.topic(), m.partition()): m.offset() + 1 for m in messages}
                    del messages, ledger
                    await source.commit(ends)
                settle_heap()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker is of no use without its loop: stop it
            log.exception("the worker's loop failed; stopping the worker", error=str(exc))
            await app.crash(exc)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, source.close)

    async def send_and_persist(derived: list[dict[str, Any]], partitions) -> None:
        """Send ``derived`` until acknowledged (never giving up: the batch must not be committed
        without them), then the changed state of ``partitions`` to the changelog, likewise."""
        topic_for = settings.topics.for_derived
        loop = asyncio.get_running_loop()

        def encode_derived():  # the window partials of a drain in few messages
            return [(topic_for(record["event_type"]), message_key(record), codec.encode(record),
                     None) for record in pack_window_partials(derived)]

        def encode_state():
            return [(state_topic, key.encode(), value, partition)
                    for partition, key, value in state_records(folds, partitions)]

        await deliver(await loop.run_in_executor(None, encode_derived), "derived events",
                      sealed=True)
        await deliver(await loop.run_in_executor(None, encode_state), "state")

    async def deliver(messages: list[tuple[str, bytes, bytes, int | None]], what: str,
                      sealed: bool = False) -> None:
        await producer.deliver(messages, what, sealed)  # every message acknowledged, or sent again
        for topic, n in Counter(topic for topic, _, _, _ in messages).items():
            metrics.events_out.labels(group, topic).inc(n)

    async def advance_idle_clocks() -> None:
        """Live mode: an idle partition's clock follows wall time less the allowed lateness,
        only while its event time is within the live lag of wall time (never in a backfill:
        there the event time is far behind, and ``live_clock_target`` says no)."""
        async with folds_lock:
            now_ms = int(time.time() * 1000)
            derived, moved = [], []
            for partition, fold in list(folds.folds.items()):
                target = live_clock_target(fold.clock, now_ms, rules)
                if target is not None:
                    derived += fold.advance_clock(target)
                    derived += fold.drain_windows() + fold.drain_complaints()
                    moved.append(partition)
            if moved:
                await send_and_persist(derived, moved)

    if settings.live_clock:
        app.timer(interval=live_clock_interval)(advance_idle_clocks)

    # -- health and metrics (cxledger.health reads ``health``; nothing here touches a batch) ---
    @app.timer(interval=metrics_interval)
    async def sample_health() -> None:
        """The event loop turns (``last_tick``); each assigned partition's lag: its end (the
        high watermark the consumer last fetched) less the position of its state (restored on
        assignment, moved by each batch); a partition that had no state has none until its
        first batch."""
        health.last_tick = time.monotonic()
        lag = {}
        for partition in health.assigned:
            end = source.high_watermark(ledger_topic, partition)
            fold = folds.folds.get(partition)
            position = fold.position if fold is not None else None
            if end is not None and position is not None:
                lag[partition] = max(0, end - position)
        health.lag = lag

    def lag_values():
        return [(group, settings.topics.ledger, p, v) for p, v in health.lag.items()
                if p in health.assigned]

    def fold_values():
        return [(p, len(fold.customers), len(fold.windows.rows), len(fold.folded),
                 fold.duplicates) for p, fold in list(folds.folds.items())]

    metrics.add_source(app, lag=lag_values, folds=fold_values,
                       assigned=lambda: [(group, len(health.assigned))])

    app.cxledger_folds = folds  # for tests and diagnostics
    app.cxledger_health = health
    app.cxledger_metrics = metrics
    return app


def worker_health(settings: Settings, state_of, metrics: Metrics,
                  stall_seconds: float = 120.0):
    """/healthz and /readyz of a worker (cxledger.health): alive while its event loop turns;
    ready when Kafka answers and ledger partitions are assigned to it. ``state_of()`` is the
    app's WorkerState, or None while the app is being created."""
    from cxledger.health import Cached, Health, KafkaProbe

    def loop() -> tuple[bool, Any]:
        state = state_of()
        if state is None or state.last_tick is None:
            return True, "starting"
        idle = time.monotonic() - state.last_tick
        if idle > stall_seconds:
            return False, f"the worker's event loop has not run for {idle:.0f}s"
        return True, "ok"

    def partitions() -> tuple[bool, Any]:
        state = state_of()
        if state is None:
            return False, "starting"
        if not state.assigned:
            return False, (f"no partition of {settings.topics.ledger} assigned to this worker "
                           f"yet (group {settings.topics.processors_app}; a worker beyond the "
                           "ledger's partitions gets none)")
        return True, sorted(state.assigned)

    return Health(metrics, alive={"worker": loop},
                  ready={"kafka": Cached(KafkaProbe(settings), 2.0), "partitions": partitions})


def run_worker(settings: Settings, loglevel: str = "warning", *,
               metrics_host: str = "0.0.0.0") -> None:
    """Run one worker until SIGINT/SIGTERM, with /healthz, /readyz and /metrics on the metrics
    port (served from the start, so a probe sees a worker that is still starting)."""
    import logging

    from faust.worker import Worker

    from cxledger.health import serve_health
    from cxledger.schema_ids import check_schema_ids

    metrics = process_metrics()
    holder: dict[str, Any] = {}
    health = worker_health(settings, lambda: holder.get("state"), metrics)
    server = serve_health(health, settings, metrics_host)
    try:
        check_schema_ids(settings, make_codec(settings), [settings.topics.ledger])
        app = create_app(settings, metrics=metrics)
        holder["state"] = app.cxledger_health
        # faust and mode log through cxledger.logs' handler (one JSON stream), at this level
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(loglevel.upper())
        worker = Worker(app, loglevel=loglevel, quiet=True, override_logging=False,
                        redirect_stdouts=False)
        worker.spinner = None  # it writes terminal control codes even to a pipe or a file
        worker.execute_from_commandline()
    finally:
        server.stop()
