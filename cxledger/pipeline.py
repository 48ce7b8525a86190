"""The whole pipeline in one process tree: broker, sinks, processors, and the wait for them.

``Pipeline`` is what ``cxledger demo``, ``cxledger up`` and the integration tests run. With no
Kafka configured it starts the local Tansu broker as a child process; with no ClickHouse DSN it
opens the embedded store. The sinks run as threads of this process, because one process owns a
chDB directory; processors and the gateway run as child processes (``Child``).

Health and metrics: ``sink_health`` is what ``cxledger sink`` (and ``up``) serve on /healthz,
/readyz and /metrics (cxledger.health); each processor started here serves its own on a free
loopback port (``Child.metrics_url``), which ``up`` folds into its /metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Consumer, Producer, TopicPartition
from tqdm import tqdm

from cxledger.config import Settings
from cxledger.localstack import LocalBroker, die_with_parent, free_port, supervised_child
from cxledger.topics import create_topics
from producers.sdk import make_codec
from sinks.clickhouse import connect, create_tables, view_params
from sinks.kafka_sink import FENCE_HEADER, ClickHouseSink
from sinks.derived_sink import derived_sink
from sinks.ledger_sink import ledger_sink

log = structlog.get_logger("cxledger.pipeline")


class PipelineError(RuntimeError):
    pass


@dataclass
class _Running:
    sink: ClickHouseSink
    thread: threading.Thread


def is_worker_command(cmdline: str) -> bool:
    """Whether a process's command line (arguments joined by spaces) is a processor worker that
    a pipeline started (``python -m cxledger.cli ... process ...``): for tools that watch them."""
    words = cmdline.split()
    return "cxledger.cli" in words and "process" in words


@dataclass
class Child:
    """A child process of the pipeline: what it is, how to start it again, where it logs."""
    name: str
    argv: list[str]
    log: Path | None
    proc: subprocess.Popen
    restarts: int = 0
    restarted_at: list[float] = field(default_factory=list)  # monotonic times of restarts
    metrics_url: str | None = None  # where it serves /healthz, /readyz and /metrics

    def crash_looping(self, limit: int = 5, within_s: float = 60.0) -> bool:
        """True when it was restarted ``limit`` times within the last ``within_s``."""
        recent = [t for t in self.restarted_at if time.monotonic() - t < within_s]
        return len(recent) >= limit


class Pipeline:
    """``with Pipeline(settings) as p:`` -> p.settings has a live bootstrap; p.client the store.

    ``supervised``: children get a process group of their own and die with this process
    (``cxledger up``); otherwise they share its group (``demo``, tests)."""

    def __init__(self, settings: Settings, *, broker_log=None, supervised: bool = False,
                 config_dir: Path | None = None):
        self.settings = settings
        self.broker_log = broker_log
        self.preexec = supervised_child if supervised else die_with_parent
        self.config_dir = config_dir
        self.local_broker = False  # True when this pipeline started the (empty) broker
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._sinks: list[_Running] = []
        self._workers: list[Child] = []
        self._config: Path | None = None
        self.client = None

    def __enter__(self) -> "Pipeline":
        try:
            if not self.settings.kafka_bootstrap:
                broker = self._stack.enter_context(LocalBroker(
                    host=self.settings.broker_host, port=self.settings.broker_port,
                    log_file=self.broker_log, preexec=self.preexec))
                self.settings = self.settings.with_(kafka_bootstrap=broker)
                self.local_broker = True
            create_topics(self.settings)
            self.client = connect(self.settings.dsn)
            from processors.rules import load_rules

            # the views' thresholds are the configured rules' (recreated when they changed)
            create_tables(self.client, view_params(load_rules(self.settings.rules_path)))
            self.codec = make_codec(self.settings)
        except BaseException:
            self._stack.close()
            raise
        return self

    def start_sinks(self, offset_base: dict[tuple[str, int], int] | None = None) -> None:
        """The ledger and derived sinks as threads; ``offset_base``: see sinks.kafka_sink.
        First the topics' tails are checked for messages framed with schema ids this process
        maps otherwise (cxledger.schema_ids: SchemaIdError, nothing started)."""
        from cxledger.schema_ids import check_schema_ids

        t = self.settings.topics
        check_schema_ids(self.settings, self.codec, [t.ledger, *dict.fromkeys(t.derived.values())])
        self._start(ledger_sink(self.settings, self.client, codec=self.codec,
                                offset_base=offset_base))
        self._start(derived_sink(self.settings, self.client, codec=self.codec,
                                 offset_base=offset_base))

    @property
    def sinks(self) -> list[ClickHouseSink]:
        return [running.sink for running in self._sinks]

    def dead_sinks(self) -> list[str]:
        """Names of the sinks whose thread ended without being asked to stop."""
        if self._stop.is_set():
            return []
        return [r.sink.name for r in self._sinks if not r.thread.is_alive()]

    def sink_health(self, extra_ready: dict | None = None, extra_metrics=None):
        """/healthz, /readyz and /metrics of the sinks (cxledger.health): alive while every
        sink thread runs; ready when Kafka answers, ClickHouse answers and takes the batches,
        and partitions are assigned to a sink of this process."""
        from cxledger.health import Cached, ClickHouseProbe, Health, KafkaProbe
        from cxledger.metrics import process_metrics

        def sinks_alive():
            dead = self.dead_sinks()
            return (False, f"sink {dead[0]} stopped") if dead else (True, "ok")

        def partitions():
            counts = {sink.name: len(sink.assignment) for sink in self.sinks}
            if not counts:
                return False, "no sink started"
            if not any(counts.values()):
                return False, ("no partition assigned to the sinks of this process yet: "
                               + ", ".join(f"{n} 0" for n in counts))
            return True, counts

        ready = {"kafka": Cached(KafkaProbe(self.settings), 2.0),
                 "clickhouse": Cached(ClickHouseProbe(self.settings, lambda: self.sinks), 2.0),
                 "partitions": partitions, **(extra_ready or {})}
        return Health(process_metrics(), alive={"sinks": sinks_alive}, ready=ready,
                      extra=extra_metrics)

    def _start(self, sink: ClickHouseSink) -> None:
        thread = threading.Thread(target=sink.run, args=(self._stop,), name=sink.name, daemon=True)
        thread.start()
        self._sinks.append(_Running(sink, thread))

    def wait_for_sinks(self, targets: dict[tuple[str, int], int], timeout: float = 300.0,
                       show_progress: bool = True) -> None:
        """Block until the sinks reached ``targets`` ((topic, partition) -> next offset), e.g.
        a producer's ``positions`` after flush: everything it published is then in ClickHouse."""
        def positions() -> dict[tuple[str, int], int]:
            out: dict[tuple[str, int], int] = {}
            for running in self._sinks:
                out.update(running.sink.stats.positions)
                if not running.thread.is_alive() and not self._stop.is_set():
                    raise PipelineError(f"sink {running.sink.name} stopped unexpectedly; "
                                        "see the log above")
            return out

        _wait_for_positions(positions, targets, "into ClickHouse", timeout, 0.1, show_progress)

    # -- child processes ------------------------------------------------------------------
    def _config_file(self) -> Path:
        """These settings as a config file for the children (mode 0600: it may hold
        credentials); in ``config_dir`` if given, else a temporary file."""
        if self._config is None:
            if self.config_dir is not None:
                self.config_dir.mkdir(parents=True, exist_ok=True)
                config = self.config_dir / "children.toml"
                config.touch(mode=0o600)
                config.chmod(0o600)
            else:
                config = Path(tempfile.mkstemp(prefix="cxledger-", suffix=".toml")[1])
            config.write_text(self.settings.to_toml(), encoding="utf-8")
            self._stack.callback(config.unlink, missing_ok=True)
            self._config = config
        return self._config

    def spawn(self, name: str, command: list[str], log: Path | None) -> Child:
        """Start ``cxledger <command>`` with these settings as a child process."""
        argv = [sys.executable, "-m", "cxledger.cli", "--config", str(self._config_file()),
                "--log-format", "json", *command]
        return Child(name, argv, log, self._popen(argv, log))

    def respawn(self, child: Child) -> None:
        child.proc = self._popen(child.argv, child.log)
        child.restarts += 1
        child.restarted_at = [*child.restarted_at[-9:], time.monotonic()]

    def _popen(self, argv: list[str], log_path: Path | None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=self.preexec,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            if log_path:
                out.close()

    # -- processors -----------------------------------------------------------------------
    def start_processors(self, workers: int = 1, log_dir: Path | None = None) -> None:
        """Start ``workers`` faust workers (``cxledger process``) as child processes, each with
        /healthz, /readyz and /metrics on a free port of 127.0.0.1 (``Child.metrics_url``)."""
        for n in range(workers):
            port = free_port("127.0.0.1")
            child = self.spawn(f"worker-{n}", ["process", "--metrics-host", "127.0.0.1",
                                               "--metrics-port", str(port)],
                               log_dir / f"worker-{n}.log" if log_dir else None)
            child.metrics_url = f"http://127.0.0.1:{port}"
            self._workers.append(child)
        self._stack.callback(self.stop_processors)
        log.info("processors started", workers=workers)

    @property
    def workers(self) -> list[Child]:
        return list(self._workers)

    def wait_for_processor_group(self, timeout: float = 60.0) -> None:
        """Block until the processors' consumer group is STABLE (every worker started
        together has its partitions), so no partition moves while the first events flow."""
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka_conf())
        group = self.settings.topics.processors_app
        deadline = time.monotonic() + timeout
        while True:
            self._check_workers()
            try:
                described = admin.describe_consumer_groups([group])[group].result(timeout=5)
                if described.state == ConsumerGroupState.STABLE:
                    log.info("processors ready", group=group)
                    return
            except Exception as exc:  # the group does not exist until the first join
                log.debug("processor group not described yet", error=str(exc))
            if time.monotonic() > deadline:
                raise PipelineError(f"the processors did not join group {group} within "
                                    f"{timeout:.0f}s; see the worker logs")
            time.sleep(0.5)

    def _check_workers(self) -> None:
        for child in self._workers:
            if child.proc.poll() is not None:
                raise PipelineError(f"a processor exited with code {child.proc.returncode}"
                                    + (f"; see {child.log}" if child.log else ""))

    def stop_processors(self, timeout: float = 20.0) -> None:
        workers, self._workers = self._workers, []
        stop_children(workers, timeout)

    def processed_offsets(self, group_id: str, topic: str) -> dict[tuple[str, int], int]:
        """Offsets committed by the processors' consumer group on ``topic``."""
        consumer = Consumer(self.settings.kafka_conf(**{"group.id": group_id}))
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
        finally:
            consumer.close()

    def wait_for_processors(self, targets: dict[tuple[str, int], int], timeout: float = 300.0,
                            show_progress: bool = True) -> None:
        """Block until the processors committed ``targets`` on the ledger: every derived event
        of those ledger events has then been acknowledged by the broker."""
        def committed() -> dict[tuple[str, int], int]:
            self._check_workers()
            return self.processed_offsets(self.settings.topics.processors_app,
                                          self.settings.topics.ledger)

        _wait_for_positions(committed, targets, "processing", timeout, 0.5, show_progress)

    def wait_for_hall_months(self, timeout: float = 300.0, show_progress: bool = True) -> None:
        """Block until the hall-months fold (the processors' second agent, processors.hall_app)
        has read every month close written so far: a position marker on the closes' topic, then
        the processors' committed offsets past it. Call it after ``wait_for_processors``: what
        it decided is then acknowledged on its topic."""
        topic = self.settings.topics.for_derived("hall.survey_month_closed")
        targets = self.fence([topic])

        def committed() -> dict[tuple[str, int], int]:
            self._check_workers()
            return self.processed_offsets(self.settings.topics.processors_app, topic)

        _wait_for_positions(committed, targets, "hall months", timeout, 0.5, show_progress)

    def fence(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """Write a marker to every partition of ``topics``; returns the offsets just past them.

        A sink that passed a marker has seen everything written before it: a barrier that
        needs no high watermarks (which Tansu 0.6 reports per batch, not per record).
        """
        producer = Producer(self.settings.kafka_conf(**{"enable.idempotence": True}))
        positions: dict[tuple[str, int], int] = {}

        def delivered(err, msg):
            if err is None:
                positions[(msg.topic(), msg.partition())] = msg.offset() + 1

        meta = producer.list_topics(timeout=10)
        for topic in topics:
            for p in meta.topics[topic].partitions:
                producer.produce(topic, value=None, partition=p, headers=[(FENCE_HEADER, b"1")],
                                 on_delivery=delivered)
        if producer.flush(30):
            raise PipelineError("could not write position markers to " + ", ".join(topics))
        return positions

    def stop_sinks(self, timeout: float = 30.0) -> None:
        """Stop the sinks; each writes the batch it holds before it returns."""
        self._stop.set()
        for running in self._sinks:
            running.thread.join(timeout=timeout)
        self._sinks.clear()

    def __exit__(self, *exc) -> None:
        self.stop_sinks()
        self._stack.close()


def stop_children(children: list[Child], timeout: float) -> None:
    """SIGTERM every child, wait up to ``timeout`` in all, then SIGKILL what is left."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time; killing it", child=child.name,
                        pid=child.proc.pid)
            child.proc.kill()
            child.proc.wait(timeout=5)


def _wait_for_positions(current, targets: dict[tuple[str, int], int], what: str,
                        timeout: float, interval: float, show_progress: bool) -> None:
    """Poll ``current()`` ((topic, partition) -> offset) until it reaches ``targets``."""
    ends = {tp: off for tp, off in targets.items() if off > 0}
    total = sum(ends.values())
    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc=what, unit="ev", disable=not show_progress, leave=False) as bar:
        while True:
            positions = current()
            done = sum(min(positions.get(tp, 0), end) for tp, end in ends.items())
            bar.update(done - bar.n)
            if done >= total:
                return
            if time.monotonic() > deadline:
                raise PipelineError(f"{what}: only {done} of {total} events within "
                                    f"{timeout:.0f}s")
            time.sleep(interval)
