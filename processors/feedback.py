"""Feedback SLAs (domain.md, "Service halls, feedback, incidents and quality control"; seed: the
service manual §2.4.2, 客户反馈需在24小时内处理,并在72小时内反馈结果).

A ``feedback.received`` arms two deadlines: ``handled`` (24 h after receipt, met by
``feedback.handled``) and ``result`` (72 h after receipt, met by ``feedback.result_reported``).
As for complaints, "now" is the partition clock (event time) and a deadline passed (clock >
deadline) without the event that meets it is a breach: :func:`fire` emits
``feedback.sla_breached`` (feedback_id, sla, deadline) once per (feedback, sla). There is no
escalation. A result reported before the handling was recorded meets the handled SLA too (the
customer has the answer). Steps of a feedback never received, and repeated steps, are recorded
on it and arm nothing. A feedback with nothing pending leaves the state ``retain`` after its
last step (a later step for it then finds an unknown feedback and arms nothing).

State per customer: ``{feedback_id: {received_at, handled_at, reported_at, channel, city,
pending: {sla: deadline}, breaches: [sla, ...], updated_at}}``.
"""

from __future__ import annotations

from typing import Mapping

from processors.derived import derived_id
from processors.rules import FeedbackRules, Rules

SLA_BREACHED = "feedback.sla_breached"
SLAS = ("handled", "result")
SLA_RANK = {sla: i for i, sla in enumerate(SLAS)}
FEEDBACK_EVENTS = frozenset({"feedback.received", "feedback.handled", "feedback.result_reported"})

#: An armed deadline: (deadline_ms, feedback_id, sla).
Armed = tuple[int, str, str]


def apply(items: dict[str, dict], event: Mapping, rules: FeedbackRules) -> list[Armed]:
    """Apply one feedback.* event to a customer's feedback (mutated in place); returns the
    deadlines it armed."""
    fid = event["feedback_id"]
    etype = event["event_type"]
    at = event["occurred_at"]
    item = items.get(fid)
    if item is None:
        item = items[fid] = {"received_at": None, "handled_at": None, "reported_at": None,
                             "channel": event["channel"], "city": event["city"], "pending": {},
                             "breaches": [], "updated_at": at}
    item["updated_at"] = max(item["updated_at"], at)
    armed: list[Armed] = []
    if etype == "feedback.received":
        if item["received_at"] is not None:
            return armed  # a repeated receipt arms nothing again
        item["received_at"] = at
        item["channel"], item["city"] = event["channel"], event["city"]
        if item["handled_at"] is None and item["reported_at"] is None:
            _arm(item, fid, "handled", at + rules.handled_ms, armed)
        if item["reported_at"] is None:
            _arm(item, fid, "result", at + rules.result_ms, armed)
    elif etype == "feedback.handled":
        if item["handled_at"] is None:
            item["handled_at"] = at
            item["pending"].pop("handled", None)
    elif etype == "feedback.result_reported":
        if item["reported_at"] is None:
            item["reported_at"] = at
            item["pending"].pop("result", None)
            item["pending"].pop("handled", None)  # the answer is out: it was handled
    return armed


def _arm(item: dict, fid: str, sla: str, deadline: int, armed: list[Armed]) -> None:
    item["pending"][sla] = deadline
    armed.append((deadline, fid, sla))


def fire(item: dict, feedback_id: str, sla: str, deadline: int, customer_id: str,
         rules: Rules) -> dict | None:
    """The breach of an armed deadline, or None when it is no longer pending."""
    if item["pending"].get(sla) != deadline:
        return None
    del item["pending"][sla]
    item["breaches"].append(sla)
    item["updated_at"] = max(item["updated_at"], deadline)
    version = rules.version
    return {
        "event_id": derived_id(SLA_BREACHED, version, customer_id, feedback_id, sla),
        "event_type": SLA_BREACHED,
        "occurred_at": deadline,
        "customer_id": customer_id,
        "channel": item["channel"],
        "city": item["city"],
        "agent_id": None,
        "correlation_id": feedback_id,
        "rules_version": version,
        "feedback_id": feedback_id,
        "sla": sla,
        "deadline": deadline,
        "received_at": item["received_at"],
    }


def pending_deadlines(items: Mapping[str, dict]) -> list[Armed]:
    return [(deadline, fid, sla) for fid, item in items.items()
            for sla, deadline in item["pending"].items()]


def prune(items: dict[str, dict], now: int, rules: FeedbackRules) -> list[str]:
    """Forget feedback with nothing pending whose last step is ``retain`` old."""
    limit = now - rules.retain_ms
    stale = [fid for fid, item in items.items()
             if not item["pending"] and item["updated_at"] <= limit]
    for fid in stale:
        del items[fid]
    return stale
