"""Create the ledger, derived and dead-letter topics, idempotently."""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from cxledger.config import Settings

log = structlog.get_logger("cxledger.topics")


def create_topics(settings: Settings, timeout: float = 15.0) -> dict[str, str]:
    """Create every configured topic that does not exist; returns topic -> created|exists."""
    admin = AdminClient(settings.kafka_conf())
    existing = set(admin.list_topics(timeout=timeout).topics)
    t = settings.topics
    wanted = [NewTopic(name, num_partitions=t.partitions, replication_factor=t.replication_factor)
              for name in t.all_topics if name not in existing]
    result = {name: "exists" for name in t.all_topics if name in existing}
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                result[name] = "exists"
    log.info("topics ready", **result)
    return result
