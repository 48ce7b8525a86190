"""At start: refuse to run when this process would map schema ids differently from the writers.

The wire carries a schema id, not a schema. Without ``CXLEDGER_SCHEMA_REGISTRY_URL`` the ids
come from ``schemas/ids.json``; with it, from the registry, which hands out its own ids (a fresh
registry's 1, 2, 3, ... overlap ``ids.json``'s for other schemas). A process started with the
other source than the rest would read id 14 as another schema than its writer meant. Two checks,
both cheap, before a processor or a sink consumes anything:

1. with a registry: every event type's current schema is registered (the codec looks its id
   up), so the ids this process writes are the registry's; a missing subject is a refusal that
   says to run ``cxledger schemas register``;
2. the last ``per_partition`` messages of every partition of the topics the process reads are
   checked with ``WireCodec.framing_problem``: a message whose body is one of our events (its
   envelope's ``event_type`` names a type of the catalogue, and it decodes with that type's
   schema) framed with an id that stands for another type here, or for none, is evidence that
   its writer maps ids differently. One is enough to refuse, naming the topic, partition, offset
   and both readings. Garbage is not evidence (it is dead-lettered as before), and neither is an
   empty topic; a Kafka that does not answer within ``timeout`` leaves the check to the decoder
   (every such message is dead-lettered with the same reason, category ``schema``).

The sample is the tail of each partition, so it speaks for the writers of today: once every
process uses the same ids, new messages push old evidence out of the sample.
"""

from __future__ import annotations

import time
import uuid

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from cxledger.config import Settings
from schemas.codec import WireCodec

log = structlog.get_logger("cxledger.schema_ids")

_OFFSET_TAIL_BASE = -2000  # librdkafka's RD_KAFKA_OFFSET_TAIL(n) = -2000 - n


class SchemaIdError(RuntimeError):
    """This process and the writers of the topics map schema ids differently."""


def check_schema_ids(settings: Settings, codec: WireCodec, topics: list[str],
                     per_partition: int = 5, timeout: float = 5.0) -> None:
    """Raise SchemaIdError when the codec cannot write our schemas' ids (registry) or the
    topics' tails were written with another mapping of ids (see the module docstring)."""
    _check_writer_ids(settings, codec)
    problems = _tail_problems(settings, codec, topics, per_partition, timeout)
    if problems:
        (topic, partition, offset, problem), more = problems[0], len(problems) - 1
        source = ("CXLEDGER_SCHEMA_REGISTRY_URL=" + settings.schema_registry_url
                  if settings.schema_registry_url else "schemas/ids.json (no "
                  "CXLEDGER_SCHEMA_REGISTRY_URL)")
        raise SchemaIdError(
            f"refusing to start: {topic} partition {partition} offset {offset}: {problem}"
            + (f" ({more} more such message{'s' if more > 1 else ''} in the topics' tails)"
               if more else "")
            + f". This process takes its schema ids from {source}; give every cxledger process "
            "the same CXLEDGER_SCHEMA_REGISTRY_URL (or none), then start it again")


def _check_writer_ids(settings: Settings, codec: WireCodec) -> None:
    if not settings.schema_registry_url:
        return
    missing = []
    for event_type in codec.catalogue.event_types:
        try:
            codec.schema_id_for(event_type)
        except Exception as exc:  # SchemaRegistryError (40401, 40403), or no answer
            missing.append((event_type, exc))
    if missing:
        event_type, exc = missing[0]
        raise SchemaIdError(
            f"refusing to start: the schema registry {settings.schema_registry_url} has no id for "
            f"the current schema of {event_type}"
            + (f" and {len(missing) - 1} other event types" if len(missing) > 1 else "")
            + f" ({exc}): run `cxledger schemas register` with this build's schemas, then start "
            "this process again")


def _tail_problems(settings: Settings, codec: WireCodec, topics: list[str], per_partition: int,
                   timeout: float) -> list[tuple[str, int, int, str]]:
    deadline = time.monotonic() + timeout
    consumer = Consumer(settings.kafka_conf(**{
        "group.id": f"cxledger-schema-check-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50}))
    problems: list[tuple[str, int, int, str]] = []
    try:
        assignment = []
        for topic in dict.fromkeys(topics):
            try:
                metadata = consumer.list_topics(topic, timeout=max(0.5, deadline
                                                                    - time.monotonic()))
            except Exception as exc:
                log.warning("schema ids not checked: Kafka did not answer", error=str(exc))
                return []
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                continue
            assignment += [TopicPartition(topic, p, _OFFSET_TAIL_BASE - per_partition)
                           for p in found.partitions]
        if not assignment:
            return []
        consumer.assign(assignment)
        seen: dict[tuple[str, int], int] = {}
        pending = {(tp.topic, tp.partition) for tp in assignment}
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                tp = (msg.topic(), msg.partition())
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)
                    continue
                if seen.get(tp, 0) >= per_partition:
                    pending.discard(tp)
                    continue
                seen[tp] = seen.get(tp, 0) + 1
                problem = codec.framing_problem(msg.value())
                if problem:
                    problems.append((msg.topic(), msg.partition(), msg.offset(), problem))
        if pending:
            log.warning("schema ids checked on part of the topics only: Kafka was slow",
                        unchecked=len(pending))
    finally:
        consumer.close()
    return problems
