"""Complaint lifecycle, SLA deadlines and auto-escalation (domain.md, "Complaint SLA and
auto-escalation"; seeds: service manual, big-client design).

Lifecycle: filed -> acknowledged -> resolved -> feedback_delivered -> followed_up -> closed,
plus reopened (a new resolution cycle). Deadlines (defaults in the rules file):

| sla            | armed at                      | duration                                  | met by                  |
|----------------|-------------------------------|-------------------------------------------|-------------------------|
| first_response | complaint.filed               | urgent 5 min, otherwise 2 h               | acknowledged (or resolved) |
| resolution     | complaint.filed / .reopened   | urgent 4 h, normal 24 h, complex 48 h     | resolved                |
| feedback       | complaint.resolved            | logistics 15 min, otherwise 24 h          | feedback_delivered      |
| follow_up      | complaint.resolved            | 72 h                                      | followed_up (回访)       |

SLA profiles (``complaints.sla_profiles`` in the rules, per category or for all): ``hours`` is the
table above; under ``working_days`` the first response is due within 3 and the resolution within
7 working days of filing (of reopening, for a reopened cycle), on mainland China's calendar
(``processors.workdays``: the filing day does not count, a deadline is the end of its last
working day); feedback and follow-up keep their hours. The profile is read at filing.

A deadline passed (partition clock > deadline) without the event that meets it is a breach:
:func:`fire` emits ``complaint.sla_breached`` once per (complaint, sla, cycle) and, for
first_response and resolution, escalates one level (levels start at 0, max 3) with reason
sla_breach. ``complaint.escalated`` raises the level too. The partition fold owns the clock
and the heap of deadlines; this module keeps each complaint's state as plain data:

``pending``: ``{sla: [deadline_ms, cycle]}`` (armed, neither met nor breached);
``breaches``: ``[[sla, cycle, deadline_ms, escalated_to_level], ...]``;
``escalations``: ``[[at_ms, level, reason], ...]``; ``anomalies``: ``[str, ...]``;
``version``: changes folded in (events and breaches), the version of
``complaint.state_changed`` (:func:`state_changed`).

Decisions where the contract is silent: resolving meets a still-pending first response (the
customer got an answer); complaint.closed disarms every pending deadline (recorded as an
anomaly when any was pending); a reopen disarms the previous cycle's feedback and follow-up
and re-arms them after the next resolution; an escalation never lowers the level. Events of
an unknown complaint, duplicates and out-of-order events never raise: the complaint keeps
state and the anomaly is recorded on it.
"""

from __future__ import annotations

from typing import Mapping

from processors.derived import derived_id
from processors.rules import ComplaintRules, Rules

SLA_BREACHED = "complaint.sla_breached"
STATE_CHANGED = "complaint.state_changed"
SLAS = ("first_response", "resolution", "feedback", "follow_up")
SLA_RANK = {sla: i for i, sla in enumerate(SLAS)}
ESCALATING_SLAS = frozenset({"first_response", "resolution"})
COMPLAINT_EVENTS = frozenset({
    "complaint.filed", "complaint.acknowledged", "complaint.escalated", "complaint.resolved",
    "complaint.feedback_delivered", "complaint.followed_up", "complaint.closed",
    "complaint.reopened",
})
MAX_ANOMALIES = 20

#: An armed deadline as the fold schedules it: (deadline_ms, complaint_id, sla, cycle).
Armed = tuple[int, str, str, int]


def new_complaint(complaint_id: str, channel: str, city: str) -> dict:
    return {
        "complaint_id": complaint_id,
        "status": "unknown",
        "category": None,
        "severity": None,
        "channel": channel,
        "city": city,
        "filed_at": None,
        "level": 0,
        "cycle": 0,
        "acknowledged_at": None,
        "resolved_at": None,
        "resolution": None,
        "feedback_at": None,
        "followed_up_at": None,
        "follow_up_outcome": None,
        "closed_at": None,
        "reopened_at": None,
        "pending": {},
        "breaches": [],
        "escalations": [],
        "anomalies": [],
        "version": 0,        # changes folded in so far (events and breaches)
        "updated_at": None,  # event time of the latest change
    }


def apply(complaints: dict[str, dict], event: Mapping, rules: ComplaintRules) -> list[Armed]:
    """Apply one complaint.* event to a customer's complaints (mutated in place).

    Returns the deadlines armed by it, for the fold's deadline heap. Never raises for an
    unknown complaint or an out-of-order event.
    """
    cid = event["complaint_id"]
    etype = event["event_type"]
    c = complaints.get(cid)
    if c is None:
        c = complaints[cid] = new_complaint(cid, event["channel"], event["city"])
        if etype != "complaint.filed":
            _anomaly(c, f"unknown complaint: {etype} before complaint.filed")
    c["version"] = c.get("version", 0) + 1
    c["updated_at"] = event["occurred_at"]
    handler = _HANDLERS[etype]
    return handler(c, event, rules)


def fire(complaint: dict, sla: str, deadline: int, cycle: int, customer_id: str,
         rules: Rules) -> dict | None:
    """The breach of an armed deadline, or None if it is no longer pending (met, re-armed,
    disarmed, or already fired). Escalates first_response/resolution breaches one level."""
    if complaint["pending"].get(sla) != [deadline, cycle]:
        return None
    del complaint["pending"][sla]
    escalated_to = None
    if sla in ESCALATING_SLAS and complaint["level"] < rules.complaints.max_level:
        complaint["level"] += 1
        escalated_to = complaint["level"]
        complaint["escalations"].append([deadline, escalated_to, "sla_breach"])
    complaint["breaches"].append([sla, cycle, deadline, escalated_to])
    complaint["version"] = complaint.get("version", 0) + 1
    complaint["updated_at"] = deadline
    cid = complaint["complaint_id"]
    version = rules.version
    return {
        "event_id": derived_id(SLA_BREACHED, version, customer_id, cid, sla, cycle),
        "event_type": SLA_BREACHED,
        "occurred_at": deadline,
        "customer_id": customer_id,
        "channel": complaint["channel"],
        "city": complaint["city"],
        "agent_id": None,
        "correlation_id": cid,
        "rules_version": version,
        "complaint_id": cid,
        "sla": sla,
        "deadline": deadline,
        "escalated_to_level": escalated_to,
        "severity": complaint["severity"],
        "category": complaint["category"],
    }


def pending_deadlines(complaints: Mapping[str, dict]) -> list[Armed]:
    """Every armed deadline of a customer's complaints (to rebuild the heap after a restore)."""
    return [(deadline, cid, sla, cycle)
            for cid, c in complaints.items()
            for sla, (deadline, cycle) in c["pending"].items()]


def state_changed(complaint: Mapping, customer_id: str, rules_version: str) -> dict:
    """``complaint.state_changed``: the complaint's current state for ops (ClickHouse keeps
    the highest ``version`` per complaint). A complaint known only from later steps (status
    ``unknown``) has no category or severity yet: ``other`` / ``normal`` stand in."""
    pending = complaint["pending"]
    next_sla = min(pending, key=lambda sla: (pending[sla][0], SLA_RANK[sla])) if pending else None
    cid = complaint["complaint_id"]
    version = complaint.get("version", 0)
    return {
        "event_id": derived_id(STATE_CHANGED, rules_version, customer_id, cid, version),
        "event_type": STATE_CHANGED,
        "occurred_at": complaint.get("updated_at") or complaint["filed_at"] or 0,
        "customer_id": customer_id,
        "channel": complaint["channel"],
        "city": complaint["city"],
        "agent_id": None,
        "correlation_id": cid,
        "rules_version": rules_version,
        "complaint_id": cid,
        "category": complaint["category"] or "other",
        "severity": complaint["severity"] or "normal",
        "status": complaint["status"],
        "level": complaint["level"],
        "filed_at": complaint["filed_at"],
        "acknowledged_at": complaint["acknowledged_at"],
        "resolved_at": complaint["resolved_at"],
        "feedback_at": complaint["feedback_at"],
        "followed_up_at": complaint["followed_up_at"],
        "closed_at": complaint["closed_at"],
        "reopened_count": complaint["cycle"],
        "next_deadline": pending[next_sla][0] if next_sla else None,
        "next_sla": next_sla,
        "breaches": [b[0] for b in complaint["breaches"]],
        "anomalies": list(complaint["anomalies"]),
        "version": version,
    }


def open_breached(complaint: Mapping) -> bool:
    """True when the complaint is not closed and has breached an SLA (ops: past SLA)."""
    return complaint["closed_at"] is None and bool(complaint["breaches"])


def prune(complaints: dict[str, dict], now: int, rules: ComplaintRules) -> list[dict]:
    """Forget complaints closed more than ``retain_closed`` ago with nothing pending (their
    history is in the ledger; a later event for one is an unknown-complaint anomaly).
    Returns the forgotten complaints."""
    limit = now - rules.retain_closed_ms
    stale = [cid for cid, c in complaints.items()
             if c["closed_at"] is not None and c["closed_at"] <= limit and not c["pending"]]
    return [complaints.pop(cid) for cid in stale]


# -- handlers -----------------------------------------------------------------------------------

def _anomaly(c: dict, text: str) -> None:
    if len(c["anomalies"]) < MAX_ANOMALIES:
        c["anomalies"].append(text)


def _first_response_deadline(c: dict, rules: ComplaintRules) -> int:
    if rules.profile(c["category"]) == "working_days" and rules.working_days is not None:
        return _working_deadline(c, c["filed_at"], rules.working_days.first_response_days, rules)
    return c["filed_at"] + rules.first_response_ms[c["severity"]]


def _resolution_deadline(c: dict, start: int, rules: ComplaintRules) -> int:
    if rules.profile(c["category"]) == "working_days" and rules.working_days is not None:
        return _working_deadline(c, start, rules.working_days.resolution_days, rules)
    return start + rules.resolution_ms[c["severity"]]


def _working_deadline(c: dict, start: int, days: int, rules: ComplaintRules) -> int:
    wd = rules.working_days
    deadline, guessed = wd.workdays.deadline(start, days)
    for year in guessed:
        note = (f"working-day deadline counted Monday-Friday in {year}, past the calendar's "
                f"last year {wd.last_calendar_year}")
        if note not in c["anomalies"]:
            _anomaly(c, note)
    return deadline


def _arm(c: dict, sla: str, deadline: int, cycle: int, armed: list[Armed]) -> None:
    c["pending"][sla] = [deadline, cycle]
    armed.append((deadline, c["complaint_id"], sla, cycle))


def _arm_after_resolution(c: dict, rules: ComplaintRules, armed: list[Armed]) -> None:
    resolved = c["resolved_at"]
    if c["feedback_at"] is None:
        _arm(c, "feedback", resolved + rules.feedback_ms(c["category"]), c["cycle"], armed)
    if c["followed_up_at"] is None:
        _arm(c, "follow_up", resolved + rules.follow_up_ms, c["cycle"], armed)


def _filed(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["filed_at"] is not None:
        _anomaly(c, "duplicate complaint.filed")
        return []
    c["filed_at"] = ev["occurred_at"]
    c["category"] = ev["category"]
    c["severity"] = ev["severity"]
    c["channel"] = ev["channel"]
    c["city"] = ev["city"]
    if c["status"] == "unknown":
        c["status"] = "filed"
    armed: list[Armed] = []
    if c["closed_at"] is not None:  # everything already happened, out of order
        return armed
    if c["cycle"] == 0 and c["acknowledged_at"] is None and c["resolved_at"] is None:
        _arm(c, "first_response", _first_response_deadline(c, rules), 0, armed)
    if c["resolved_at"] is None:
        start = c["reopened_at"] if c["cycle"] > 0 else c["filed_at"]
        _arm(c, "resolution", _resolution_deadline(c, start, rules), c["cycle"], armed)
    else:
        _arm_after_resolution(c, rules, armed)
    return armed


def _acknowledged(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["acknowledged_at"] is not None:
        _anomaly(c, "duplicate complaint.acknowledged")
        return []
    c["acknowledged_at"] = ev["occurred_at"]
    c["pending"].pop("first_response", None)
    if c["status"] in ("unknown", "filed"):
        c["status"] = "acknowledged"
    return []


def _escalated(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    level = min(int(ev["level"]), rules.max_level)
    reason = ev.get("reason") or "manual"
    if level <= c["level"]:
        _anomaly(c, f"complaint.escalated to level {level} while at level {c['level']}")
    else:
        c["level"] = level
    c["escalations"].append([ev["occurred_at"], level, reason])
    return []


def _resolved(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["resolved_at"] is not None:
        _anomaly(c, f"duplicate complaint.resolved in cycle {c['cycle']}")
        return []
    if c["closed_at"] is not None:
        _anomaly(c, "complaint.resolved after complaint.closed")
    c["resolved_at"] = ev["occurred_at"]
    c["resolution"] = ev.get("resolution")
    pending = c["pending"]
    pending.pop("resolution", None)
    if pending.pop("first_response", None) is not None:
        _anomaly(c, "complaint.resolved before complaint.acknowledged")
    if c["closed_at"] is None:
        c["status"] = "resolved"
    armed: list[Armed] = []
    if c["filed_at"] is not None and c["closed_at"] is None:
        _arm_after_resolution(c, rules, armed)
    return armed


def _feedback_delivered(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["feedback_at"] is not None:
        _anomaly(c, "duplicate complaint.feedback_delivered")
        return []
    if c["resolved_at"] is None:
        _anomaly(c, "complaint.feedback_delivered before complaint.resolved")
    c["feedback_at"] = ev["occurred_at"]
    c["pending"].pop("feedback", None)
    if c["status"] == "resolved":
        c["status"] = "feedback_delivered"
    return []


def _followed_up(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["followed_up_at"] is not None:
        _anomaly(c, "duplicate complaint.followed_up")
        return []
    if c["resolved_at"] is None:
        _anomaly(c, "complaint.followed_up before complaint.resolved")
    c["followed_up_at"] = ev["occurred_at"]
    c["follow_up_outcome"] = ev.get("outcome")
    c["pending"].pop("follow_up", None)
    if c["status"] in ("resolved", "feedback_delivered"):
        c["status"] = "followed_up"
    return []


def _closed(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["closed_at"] is not None:
        _anomaly(c, "duplicate complaint.closed")
        return []
    c["closed_at"] = ev["occurred_at"]
    c["status"] = "closed"
    if c["pending"]:
        open_slas = ", ".join(sorted(c["pending"], key=SLA_RANK.__getitem__))
        _anomaly(c, f"complaint.closed with open SLA: {open_slas}")
        c["pending"].clear()
    return []


def _reopened(c: dict, ev: Mapping, rules: ComplaintRules) -> list[Armed]:
    if c["resolved_at"] is None and c["closed_at"] is None:
        _anomaly(c, "complaint.reopened while not resolved")
        return []
    at = ev["occurred_at"]
    c["cycle"] += 1
    c["reopened_at"] = at
    for field in ("resolved_at", "resolution", "feedback_at", "followed_up_at",
                  "follow_up_outcome", "closed_at"):
        c[field] = None
    pending = c["pending"]
    pending.pop("feedback", None)
    pending.pop("follow_up", None)
    c["status"] = "reopened"
    armed: list[Armed] = []
    if c["severity"] is not None:
        _arm(c, "resolution", _resolution_deadline(c, at, rules), c["cycle"], armed)
    return armed


_HANDLERS = {
    "complaint.filed": _filed,
    "complaint.acknowledged": _acknowledged,
    "complaint.escalated": _escalated,
    "complaint.resolved": _resolved,
    "complaint.feedback_delivered": _feedback_delivered,
    "complaint.followed_up": _followed_up,
    "complaint.closed": _closed,
    "complaint.reopened": _reopened,
}
