"""Is the gateway ready to take publishes? (``/readyz``; ``/healthz`` only says it is alive.)

Ready means: Kafka answers a metadata request for the ledger topic within ``timeout`` seconds
and the topic exists; and, where an acknowledgement waits for the store
(``acks_wait_for_store``), the ledger sink's consumer group is active (stable or
rebalancing), i.e. something is writing the ledger to the store. Otherwise every publish would end in 503 after the ack
timeout, so a load balancer should send traffic elsewhere.

A probe costs one or two round trips; answers are kept for ``cache_seconds`` so a burst of
probes does not become a burst of metadata requests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from cxledger.config import LEDGER_SINK_GROUP, Settings


# A group with consumers in it (some brokers, Tansu among them, list no members of a stable
# group): EMPTY, DEAD and UNKNOWN mean no sink is running.
_ACTIVE = (ConsumerGroupState.STABLE, ConsumerGroupState.PREPARING_REBALANCING,
           ConsumerGroupState.COMPLETING_REBALANCING)


class Readiness:
    def __init__(self, settings: Settings, timeout: float = 2.0, cache_seconds: float = 1.0):
        self.settings = settings
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()
        self._last: tuple[float, bool, dict[str, Any]] | None = None

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details); blocking, at most about 2 x ``timeout`` s."""
        with self._lock:
            if self._last and time.monotonic() - self._last[0] < self.cache_seconds:
                return self._last[1], self._last[2]
            ready, details = self._probe()
            self._last = (time.monotonic(), ready, details)
            return ready, details

    def _probe(self) -> tuple[bool, dict[str, Any]]:
        topic = self.settings.topics.ledger
        if self._admin is None:
            self._admin = AdminClient(self.settings.kafka_conf())
        try:
            metadata = self._admin.list_topics(topic=topic, timeout=self.timeout)
        except Exception as exc:
            return False, {"kafka": f"no answer from {self.settings.kafka_bootstrap} within "
                                    f"{self.timeout:g}s ({exc})"}
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return False, {"kafka": "ok", "ledger_topic": f"{topic} does not exist; create it "
                                                          "with `cxledger topics create`"}
        details: dict[str, Any] = {"kafka": "ok", "ledger_topic": topic}
        if not self.settings.acks_wait_for_store:
            return True, details
        try:
            group = self._admin.describe_consumer_groups(
                [LEDGER_SINK_GROUP], request_timeout=self.timeout)[LEDGER_SINK_GROUP].result(
                timeout=self.timeout)
        except Exception as exc:
            details["store"] = f"the ledger sink's group {LEDGER_SINK_GROUP} is not known ({exc})"
            return False, details
        if not group.members and group.state not in _ACTIVE:
            details["store"] = (f"nothing writes the ledger to the store: group "
                                f"{LEDGER_SINK_GROUP} is {group.state.name.lower()}")
            return False, details
        details["store"] = "ok"
        return True, details

    def close(self) -> None:
        """Release the Kafka client (now, not at garbage collection)."""
        with self._lock:
            self._admin = None
