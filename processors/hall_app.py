"""The hall-months fold in the live processors: the worker's second fold.

The partition folds drain ``hall.survey_month_closed`` (a ledger partition's final SMS-survey
partials of a month, processors.halls) to their topic, all under one message key
(``processors.derived.HALL_MONTHS_KEY``), so one partition of that topic holds them all, in the
order each ledger partition closed its months. The worker polls that topic with the ledger
(processors.source) and gives its messages to :class:`HallMonthsAgent`, which folds them with
:class:`processors.halls.HallMonths` and sends what it decides
(``hall.key_improvement_flagged`` / ``_cleared``) to their topic.

Per batch, as the ledger fold does: decode (a fence or an undecodable message is skipped and
logged), fold, send the decisions and wait for the broker's acknowledgement (again, with
backoff, until it comes), then write the fold's whole state (small: the halls' streaks and the
months not yet decided) to the compacted topic ``<app>-hall-months-changelog`` and wait for that
acknowledgement; the worker then commits the batch. A crash before the state is written folds
the batch again from the previous state: the same decisions, the same ids, deduplicated by the
sinks. A crash after it redelivers markers the state already holds: the fold ignores a marker
of a month its partition already closed. A worker given the markers' partition reads the state
back first.

It has a producer of its own, so that its acknowledgements and retries never mix with the
ledger fold's.
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


class HallMonthsAgent:
    """The hall-months fold of a worker: ``fold(messages)`` for the closes' messages of a
    batch (processors.app polls them with the ledger's); ``forget()`` when the partition moves
    (the state is read back when it is given again)."""

    def __init__(self, settings: Settings, rules: Rules, codec):
        from processors.app import DerivedProducer

        self.settings = settings
        self.rules = rules
        self.codec = codec
        self.topic = settings.topics.for_derived(MONTH_CLOSED)
        create_state_topic(settings)
        self.producer = DerivedProducer(settings)
        self._fold: HallMonths | None = None

    def forget(self) -> None:
        self._fold = None

    async def restored(self) -> HallMonths:
        if self._fold is None:
            loop = asyncio.get_running_loop()
            plain = await loop.run_in_executor(None, read_hall_months_state, self.settings)
            fold = HallMonths(self.rules, self.settings.topics.partitions)
            fold.restore(plain)
            self._fold = fold
            log.info("hall-months state restored", decided=fold.decided,
                     halls=len(fold.halls), flagged=len(fold.flagged_halls()))
        return self._fold

    async def fold(self, messages) -> None:
        """Fold a batch of the closes' messages (confluent-kafka ``Message``s, in offset
        order); returns once the decisions and then the state are acknowledged."""
        fold = await self.restored()
        codec, records = self.codec, []
        for msg in messages:
            value = msg.value()
            if value is None:
                continue  # a position marker (cxledger.pipeline.fence)
            try:
                records.append(codec.decode(value)[0])
            except DecodeError as exc:
                log.warning("undecodable month close skipped", error=str(exc)[:300],
                            partition=msg.partition(), offset=msg.offset())
        if not records:
            return
        decided = fold.apply_all(records)
        for_derived = self.settings.topics.for_derived
        await self.producer.deliver([(for_derived(d["event_type"]), message_key(d),
                                      codec.encode(d), None) for d in decided],
                                    "hall decisions", sealed=True)
        await self.producer.deliver(
            [(state_topic(self.settings), STATE_KEY,
              json.dumps(fold.snapshot(), separators=(",", ":")).encode(), 0)],
            "hall-months state")
        if decided:
            log.info("hall months decided", through=fold.decided, events=len(decided))
