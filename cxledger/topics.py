"""Create the ledger, derived, dead-letter and changelog topics, idempotently, with the
configuration each one needs.

* the ledger (``topics.ledger``) is the record: kept forever (``retention.ms=-1``,
  ``retention.bytes=-1``), deleted never, compacted never (every event counts, not the last per
  key);
* derived topics are recomputable from the ledger (``cxledger replay``): kept 7 days, time
  enough for a stopped sink to catch up;
* the dead-letter topic keeps what could not be read for 30 days, for an operator to look at;
* the processors' fold-state changelog (``<processors_app>-fold-state-changelog``) is what a
  restarted or rebalanced worker recovers from: compacted (the last state per key is all that
  counts), with the ledger's partition count (faust maps ledger partition p to changelog
  partition p); no record younger than an hour is compacted away
  (``min.compaction.lag.ms``), so the older version of a key that a worker killed in the middle
  of a batch leaves behind a newer one for is still there when it restarts
  (processors.changelog);
* every topic: ``min.insync.replicas`` from the replication factor (``min_insync_replicas``):
  with ``acks=all`` producers, a write needs that many replicas in sync, so one broker can be
  lost (replication factor 3 -> 2) without losing an acknowledged event.

Topics that exist already keep their partitions; their configuration is brought to these
values where the broker allows it (``incremental_alter_configs``), and what could not be is
logged.
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic, ResourceType)

from cxledger.config import Settings

log = structlog.get_logger("cxledger.topics")

DAY_MS = 24 * 3600 * 1000
DERIVED_RETENTION_MS = 7 * DAY_MS
DEADLETTER_RETENTION_MS = 30 * DAY_MS
CHANGELOG_COMPACTION_LAG_MS = 3_600_000
STATE_TABLE = "fold-state"  # processors.changelog.STATE_TABLE (kept in step by a test)


def min_insync_replicas(replication_factor: int) -> int:
    """In-sync replicas a write needs: all but one up to 3 replicas, a majority beyond
    (1 -> 1, 2 -> 1, 3 -> 2, 4 -> 3, 5 -> 3)."""
    rf = max(1, int(replication_factor))
    return max(1, rf - 1) if rf <= 3 else rf // 2 + 1


def changelog_topic(settings: Settings) -> str:
    return f"{settings.topics.processors_app}-{STATE_TABLE}-changelog"


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """topic -> the configuration ``create_topics`` gives it."""
    t = settings.topics
    isr = str(min_insync_replicas(t.replication_factor))
    configs = {t.ledger: {"cleanup.policy": "delete", "retention.ms": "-1",
                          "retention.bytes": "-1", "min.insync.replicas": isr}}
    for name in dict.fromkeys(t.derived.values()):
        configs[name] = {"cleanup.policy": "delete", "retention.ms": str(DERIVED_RETENTION_MS),
                         "min.insync.replicas": isr}
    configs[t.deadletter] = {"cleanup.policy": "delete",
                             "retention.ms": str(DEADLETTER_RETENTION_MS),
                             "min.insync.replicas": isr}
    configs[changelog_topic(settings)] = {"cleanup.policy": "compact", "min.insync.replicas": isr,
                                          "min.compaction.lag.ms": str(CHANGELOG_COMPACTION_LAG_MS)}
    return configs


def create_topics(settings: Settings, timeout: float = 15.0) -> dict[str, str]:
    """Create every configured topic that does not exist, with its configuration; returns
    topic -> created | exists | exists, configured."""
    admin = AdminClient(settings.kafka_conf())
    existing = set(admin.list_topics(timeout=timeout).topics)
    t = settings.topics
    configs = topic_configs(settings)
    wanted = [NewTopic(name, num_partitions=t.partitions, replication_factor=t.replication_factor,
                       config=config)
              for name, config in configs.items() if name not in existing]
    result = {name: "exists" for name in configs if name in existing}
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                result[name] = "exists"
    for name in [n for n, state in result.items() if state == "exists"]:
        if _align_config(admin, name, configs[name], timeout):
            result[name] = "exists, configured"
    log.info("topics ready", **result)
    return result


def _align_config(admin: AdminClient, topic: str, wanted: dict[str, str],
                  timeout: float) -> bool:
    """Set what differs from ``wanted`` on an existing topic; True when something was set."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        current = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
            timeout=timeout)
        changes = [ConfigEntry(key, value,
                               incremental_operation=AlterConfigOpType.SET)
                   for key, value in wanted.items()
                   if key not in current or str(current[key].value) != value]
        if not changes:
            return False
        change = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=changes)
        admin.incremental_alter_configs([change], request_timeout=timeout)[change].result(
            timeout=timeout)
    except (KafkaException, ValueError, TypeError) as exc:
        log.warning("could not check or set the topic's configuration", topic=topic,
                    wanted=wanted, error=str(exc))
        return False
    log.info("topic configuration set", topic=topic,
             **{c.name: c.value for c in changes})
    return True
