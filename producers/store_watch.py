"""Waiting until the ledger sink has stored what the gateway published (single-machine stack).

On ``cxledger up`` the local broker keeps nothing across a restart, so an acknowledgement must
mean "in the store" (``settings.acks_wait_for_store``). The ledger sink commits its Kafka
offsets after each write; one thread here reads those committed offsets for every request
waiting at once (one OffsetFetch per round, not one per request) and wakes each request whose
targets, the offsets after its events per partition, are reached.
"""

from __future__ import annotations

import asyncio
import threading
import time

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from cxledger.config import LEDGER_SINK_GROUP, Settings

log = structlog.get_logger("cxledger.gateway")

Targets = dict[tuple[str, int], int]


class StoreWatch:
    def __init__(self, settings: Settings, group: str = LEDGER_SINK_GROUP):
        self.settings = settings
        self.group = group
        self._waiters: list[tuple[Targets, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._consumer: Consumer | None = None
        self._thread = threading.Thread(target=self._run, name="cxledger-gateway-store",
                                        daemon=True)
        self._thread.start()

    async def wait(self, targets: Targets, timeout: float) -> bool:
        """True once the sink has committed ``targets``; False after ``timeout`` s or when the
        gateway stops."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._wake:
            self._waiters.append((targets, loop, future))
            self._wake.notify()
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return False

    def _run(self) -> None:
        warned = 0.0
        while True:
            with self._wake:
                while not self._waiters and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                self._waiters = [w for w in self._waiters if not w[2].done()]
                waiters = list(self._waiters)
            partitions = sorted({tp for targets, _, _ in waiters for tp in targets})
            try:
                committed = self._committed(partitions)
            except KafkaException as exc:
                if time.monotonic() - warned > 10:
                    log.warning("cannot read what the store holds", group=self.group,
                                error=str(exc))
                    warned = time.monotonic()
                time.sleep(0.2)
                continue
            reached = [w for w in waiters
                       if all(committed.get(tp, -1) >= end for tp, end in w[0].items())]
            if reached:
                with self._wake:
                    self._waiters = [w for w in self._waiters if w not in reached]
                for _, loop, future in reached:
                    _resolve(loop, future, True)
            time.sleep(0.05)

    def _committed(self, partitions: list[tuple[str, int]]) -> Targets:
        if self._consumer is None:
            self._consumer = Consumer(self.settings.kafka_conf(**{
                "group.id": self.group, "enable.auto.commit": False}))
        offsets = self._consumer.committed([TopicPartition(t, p) for t, p in partitions],
                                           timeout=5)
        return {(tp.topic, tp.partition): tp.offset for tp in offsets}

    def abort(self) -> int:
        """Answer every waiting request "not stored" now (the gateway is stopping)."""
        with self._wake:
            waiters, self._waiters = self._waiters, []
        for _, loop, future in waiters:
            _resolve(loop, future, False)
        return len(waiters)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=6)
        if self._consumer is not None and not self._thread.is_alive():
            self._consumer.close()
            self._consumer = None


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, stored: bool) -> None:
    def set_done() -> None:
        if not future.done():
            future.set_result(stored)

    try:
        loop.call_soon_threadsafe(set_done)
    except RuntimeError:  # that request's loop is gone
        pass
