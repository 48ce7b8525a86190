"""The hall-months fold in the live processors: a second faust agent of the processors' app.

The partition folds drain ``hall.survey_month_closed`` (a ledger partition's final SMS-survey
partials of a month, processors.halls) to their topic, all under one message key
(``processors.derived.HALL_MONTHS_KEY``), so one partition of that topic holds them all, in the
order each ledger partition closed its months. This agent folds them with
:class:`processors.halls.HallMonths` and sends what it decides
(``hall.key_improvement_flagged`` / ``_cleared``) to their topic.

Per batch, as the ledger agent does: decode (a fence or an undecodable message is skipped and
logged), fold, send the decisions and wait for the broker's acknowledgement (again, with
backoff, until it comes), then write the fold's whole state (small: the halls' streaks and the
months not yet decided) to the compacted topic ``<app>-hall-months-changelog`` and wait for that
acknowledgement; faust then acks the batch. A crash before the state is written folds the batch
again from the previous state: the same decisions, the same ids, deduplicated by the sinks. A
crash after it redelivers markers the state already holds: the fold ignores a marker of a month
its partition already closed. A worker given the markers' partition reads the state back first.

It has a producer of its own, so that its acknowledgements and retries never mix with the
ledger agent's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from cxledger.config import Settings
from processors.changelog import create_compacted_topic, read_log
from processors.derived import HALL_MONTHS_KEY, message_key
from processors.halls import MONTH_CLOSED, HallMonths
from processors.rules import Rules
from schemas.codec import DecodeError

log = structlog.get_logger("cxledger.processors")

STATE_KEY = HALL_MONTHS_KEY.encode()


def state_topic(settings: Settings) -> str:
    return f"{settings.topics.processors_app}-hall-months-changelog"


def create_state_topic(settings: Settings, timeout: float = 15.0) -> None:
    create_compacted_topic(settings, state_topic(settings), 1, timeout)


def read_hall_months_state(settings: Settings, idle_s: float = 0.5,
                           timeout: float = 60.0) -> dict[str, Any] | None:
    """The last state record of the hall-months fold, or None when there is none."""
    values = [value for key, value in read_log(settings, state_topic(settings), 0, idle_s,
                                               timeout)
              if key.encode() == STATE_KEY and value is not None]
    return json.loads(values[-1]) if values else None


def seed_hall_months_state(settings: Settings, fold: HallMonths, timeout: float = 30.0) -> None:
    """Write ``fold``'s state as the current one (the restore of ``cxledger up``)."""
    from confluent_kafka import Producer

    create_state_topic(settings)
    producer = Producer(settings.kafka_conf(**{"enable.idempotence": True, "acks": "all"}))
    failures: list[str] = []
    producer.produce(state_topic(settings), key=STATE_KEY,
                     value=json.dumps(fold.snapshot(), separators=(",", ":")).encode(),
                     partition=0,
                     on_delivery=lambda err, msg: failures.append(str(err)) if err else None)
    if producer.flush(timeout) or failures:
        raise RuntimeError(f"could not write the hall-months state: {failures[:1] or 'timeout'}")


def attach_hall_months(app, settings: Settings, rules: Rules, codec, *,
                       batch_size: int = 1000, batch_within: float = 0.5) -> None:
    """Add the hall-months agent to the processors' faust ``app``."""
    from processors.app import DerivedProducer

    topic_name = settings.topics.for_derived(MONTH_CLOSED)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes,
                      partitions=settings.topics.partitions)
    create_state_topic(settings)
    producer = DerivedProducer(settings)
    holder: dict[str, HallMonths | None] = {"fold": None}

    deliver = producer.deliver  # every message acknowledged, or sent again

    async def restored() -> HallMonths:
        fold = holder["fold"]
        if fold is None:
            loop = asyncio.get_running_loop()
            plain = await loop.run_in_executor(None, read_hall_months_state, settings)
            fold = HallMonths(rules, settings.topics.partitions)
            fold.restore(plain)
            holder["fold"] = fold
            log.info("hall-months state restored", decided=fold.decided,
                     halls=len(fold.halls), flagged=len(fold.flagged_halls()))
        return fold

    async def fold_hall_months(stream):
        async for events in stream.take_events(batch_size, within=batch_within):
            fold = await restored()
            records = []
            for event in events:
                value = event.message.value
                if value is None:
                    continue  # a position marker (cxledger.pipeline.fence)
                try:
                    records.append(codec.decode(value)[0])
                except DecodeError as exc:
                    log.warning("undecodable month close skipped", error=str(exc)[:300],
                                partition=event.message.partition, offset=event.message.offset)
            if not records:
                continue
            decided = fold.apply_all(records)
            await deliver([(settings.topics.for_derived(d["event_type"]), message_key(d),
                            codec.encode(d), None) for d in decided], "hall decisions")
            await deliver([(state_topic(settings), STATE_KEY,
                            json.dumps(fold.snapshot(), separators=(",", ":")).encode(), 0)],
                          "hall-months state")
            if decided:
                log.info("hall months decided", through=fold.decided, events=len(decided))

    fold_hall_months.__name__ = fold_hall_months.__qualname__ = "fold_hall_months"
    app.agent(topic, name=f"{app.conf.id}.fold_hall_months")(fold_hall_months)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        if any(tp.topic == topic_name for tp in revoked):
            holder["fold"] = None  # read back from the state topic when given again
