"""The whole pipeline in one process tree: broker, sinks, processors, and the wait for them.

``Pipeline`` is what ``cxledger demo`` and the integration tests run. With no Kafka configured
it starts the local Tansu broker as a child process; with no ClickHouse DSN it opens the embedded
store. The sinks run as threads of this process, because one process owns a chDB directory.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import structlog
from tqdm import tqdm

from cxledger.config import Settings
from cxledger.localstack import LocalBroker
from cxledger.topics import create_topics
from producers.sdk import make_codec
from sinks.clickhouse import connect, create_tables
from sinks.kafka_sink import ClickHouseSink
from sinks.ledger_sink import ledger_sink

log = structlog.get_logger("cxledger.pipeline")


class PipelineError(RuntimeError):
    pass


@dataclass
class _Running:
    sink: ClickHouseSink
    thread: threading.Thread


class Pipeline:
    """``with Pipeline(settings) as p:`` -> p.settings has a live bootstrap; p.client the store."""

    def __init__(self, settings: Settings, *, broker_log=None):
        self.settings = settings
        self.broker_log = broker_log
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._sinks: list[_Running] = []
        self.client = None

    def __enter__(self) -> "Pipeline":
        try:
            if not self.settings.kafka_bootstrap:
                broker = self._stack.enter_context(LocalBroker(log_file=self.broker_log))
                self.settings = self.settings.with_(kafka_bootstrap=broker)
            create_topics(self.settings)
            self.client = connect(self.settings.dsn)
            create_tables(self.client)
            self.codec = make_codec(self.settings)
        except BaseException:
            self._stack.close()
            raise
        return self

    def start_sinks(self) -> None:
        self._start(ledger_sink(self.settings, self.client, codec=self.codec))

    def _start(self, sink: ClickHouseSink) -> None:
        thread = threading.Thread(target=sink.run, args=(self._stop,), name=sink.name, daemon=True)
        thread.start()
        self._sinks.append(_Running(sink, thread))

    def wait_for_sinks(self, targets: dict[tuple[str, int], int], timeout: float = 300.0,
                       show_progress: bool = True) -> None:
        """Block until the sinks reached ``targets`` ((topic, partition) -> next offset), e.g.
        a producer's ``positions`` after flush: everything it published is then in ClickHouse."""
        ends = {tp: off for tp, off in targets.items() if off > 0}
        total = sum(ends.values())
        deadline = time.monotonic() + timeout
        with tqdm(total=total, desc="into ClickHouse", unit="ev", disable=not show_progress,
                  leave=False) as bar:
            while True:
                positions: dict[tuple[str, int], int] = {}
                for running in self._sinks:
                    positions.update(running.sink.stats.positions)
                    if not running.thread.is_alive() and not self._stop.is_set():
                        raise PipelineError(f"sink {running.sink.name} stopped unexpectedly; "
                                            "see the log above")
                done = sum(min(positions.get(tp, 0), end) for tp, end in ends.items())
                bar.update(done - bar.n)
                if done >= total:
                    return
                if time.monotonic() > deadline:
                    raise PipelineError(f"only {done} of {total} events reached ClickHouse within "
                                        f"{timeout:.0f}s")
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for running in self._sinks:
            running.thread.join(timeout=30)
        self._stack.close()

