"""Complaint SLA deadlines, breaches and auto-escalation (domain.md, "Complaint SLA")."""

import uuid

import pytest

from processors import complaints
from processors.derived import NAMESPACE, derived_id
from processors.ledger import PartitionFold
from processors.rules import load_rules
from tests.unit.processors_factories import T0, complaint_event, filed

RULES = load_rules()
MIN = 60_000
HOUR = 60 * MIN


def breaches(events):
    return [e for e in events if e["event_type"] == "complaint.sla_breached"]


def fold_with(*events):
    fold = PartitionFold(RULES, partition=0)
    out = []
    for e in events:
        out += fold.apply(e)
    return fold, out


def only_breach(fold, at):
    """Advance to ``at`` and return the breaches fired."""
    return breaches(fold.advance_clock(at))


@pytest.mark.parametrize("severity,first_response,resolution", [
    ("urgent", 5 * MIN, 4 * HOUR),
    ("normal", 2 * HOUR, 24 * HOUR),
    ("complex", 2 * HOUR, 48 * HOUR),
])
def test_first_response_and_resolution_deadlines_by_severity(severity, first_response, resolution):
    fold, out = fold_with(filed(T0, "q1", severity=severity))
    assert out == []
    assert only_breach(fold, T0 + first_response) == []  # at the deadline: not yet passed
    [b] = only_breach(fold, T0 + first_response + 1)
    assert (b["sla"], b["deadline"], b["occurred_at"]) == ("first_response", T0 + first_response,
                                                         T0 + first_response)
    assert b["escalated_to_level"] == 1
    assert only_breach(fold, T0 + resolution) == []
    [b] = only_breach(fold, T0 + resolution + 1)
    assert (b["sla"], b["deadline"], b["escalated_to_level"]) == ("resolution", T0 + resolution, 2)


@pytest.mark.parametrize("category,feedback", [
    ("logistics", 15 * MIN),
    ("billing", 24 * HOUR),
    ("network", 24 * HOUR),
    ("service_attitude", 24 * HOUR),
    ("product", 24 * HOUR),
    ("dialect_misunderstanding", 24 * HOUR),
    ("other", 24 * HOUR),
])
def test_feedback_and_follow_up_deadlines_after_resolution(category, feedback):
    resolved_at = T0 + 30 * MIN
    fold, out = fold_with(filed(T0, "q1", category=category),
                          complaint_event("complaint.acknowledged", T0 + MIN, "q1"),
                          complaint_event("complaint.resolved", resolved_at, "q1"))
    assert breaches(out) == []
    assert only_breach(fold, resolved_at + feedback) == []
    [b] = only_breach(fold, resolved_at + feedback + 1)
    assert (b["sla"], b["deadline"], b["escalated_to_level"]) == ("feedback", resolved_at + feedback,
                                                                 None)
    assert only_breach(fold, resolved_at + 72 * HOUR) == []
    [b] = only_breach(fold, resolved_at + 72 * HOUR + 1)
    assert (b["sla"], b["deadline"], b["escalated_to_level"]) == ("follow_up",
                                                                 resolved_at + 72 * HOUR, None)
    assert fold.customer_state("c-000042")["complaints"]["q1"]["level"] == 0


def test_the_whole_lifecycle_on_time_breaches_nothing():
    fold, out = fold_with(
        filed(T0, "q1", category="logistics", severity="urgent"),
        complaint_event("complaint.acknowledged", T0 + 5 * MIN, "q1"),   # exactly at deadline
        complaint_event("complaint.resolved", T0 + 4 * HOUR, "q1"),
        complaint_event("complaint.feedback_delivered", T0 + 4 * HOUR + 15 * MIN, "q1"),
        complaint_event("complaint.followed_up", T0 + 76 * HOUR, "q1"),
        complaint_event("complaint.closed", T0 + 77 * HOUR, "q1"),
    )
    assert breaches(out) == []
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["status"] == "closed" and c["pending"] == {} and c["anomalies"] == []
    assert breaches(fold.advance_clock(T0 + 1000 * HOUR)) == []
    # 30 days after it closed, with nothing pending, it leaves the fold's state (bounded
    # state: its history is in the ledger)
    state = fold.customer_state("c-000042")
    assert state is None or "q1" not in state["complaints"]


def test_a_late_meeting_event_finds_the_breach_already_fired():
    fold, out = fold_with(filed(T0, "q1", severity="urgent"),
                          complaint_event("complaint.acknowledged", T0 + 5 * MIN + 1, "q1"))
    [b] = breaches(out)
    assert b["sla"] == "first_response"
    assert out.index(b) == 0  # fired before the event was applied


def test_breach_event_fields_and_deterministic_id():
    f = filed(T0, "q7", "c-9", category="network", severity="complex", channel="wechat",
              city="urumqi")
    fold, _ = fold_with(f)
    [b] = only_breach(fold, T0 + 2 * HOUR + 1)
    name = "complaint.sla_breached|2025.10-1|c-9|q7|first_response|0"
    assert b == {
        "event_id": str(uuid.uuid5(NAMESPACE, name)),
        "event_type": "complaint.sla_breached",
        "occurred_at": T0 + 2 * HOUR,
        "customer_id": "c-9",
        "channel": "wechat",
        "city": "urumqi",
        "agent_id": None,
        "correlation_id": "q7",
        "rules_version": "2025.10-1",
        "complaint_id": "q7",
        "sla": "first_response",
        "deadline": T0 + 2 * HOUR,
        "escalated_to_level": 1,
        "severity": "complex",
        "category": "network",
    }


def test_a_breach_fires_once():
    fold, _ = fold_with(filed(T0, "q1", severity="urgent"))
    assert len(only_breach(fold, T0 + HOUR)) == 1
    assert only_breach(fold, T0 + 2 * HOUR) == []
    assert len(only_breach(fold, T0 + 5 * HOUR)) == 1  # resolution, a different sla
    assert only_breach(fold, T0 + 500 * HOUR) == []


def test_breaches_fire_in_deadline_order_when_the_clock_jumps():
    fold, _ = fold_with(filed(T0, "q1", "c-1", severity="normal"),
                        filed(T0 + MIN, "q2", "c-2", severity="urgent"))
    fired = only_breach(fold, T0 + 100 * HOUR)
    assert [(b["complaint_id"], b["sla"]) for b in fired] == [
        ("q2", "first_response"), ("q1", "first_response"), ("q2", "resolution"),
        ("q1", "resolution")]
    assert [b["deadline"] for b in fired] == sorted(b["deadline"] for b in fired)


def test_escalation_goes_one_level_per_breach_and_stops_at_3():
    fold, out = fold_with(filed(T0, "q1", severity="urgent"))
    assert [b["escalated_to_level"] for b in only_breach(fold, T0 + 5 * HOUR)] == [1, 2]
    fold.apply(complaint_event("complaint.resolved", T0 + 5 * HOUR, "q1"))
    fold.apply(complaint_event("complaint.reopened", T0 + 6 * HOUR, "q1"))
    [b] = only_breach(fold, T0 + 10 * HOUR + 1)      # 4 h from the reopen
    assert (b["sla"], b["deadline"], b["escalated_to_level"]) == ("resolution", T0 + 10 * HOUR, 3)
    fold.apply(complaint_event("complaint.resolved", T0 + 11 * HOUR, "q1"))
    fold.apply(complaint_event("complaint.reopened", T0 + 12 * HOUR, "q1"))
    [b] = only_breach(fold, T0 + 17 * HOUR)
    assert b["sla"] == "resolution" and b["escalated_to_level"] is None  # already at level 3
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["level"] == 3
    assert [e[1:] for e in c["escalations"]] == [[1, "sla_breach"], [2, "sla_breach"],
                                                 [3, "sla_breach"]]


def test_manual_escalation_sets_the_level():
    fold, _ = fold_with(filed(T0, "q1", severity="normal"),
                        complaint_event("complaint.escalated", T0 + MIN, "q1", level=2))
    [b] = only_breach(fold, T0 + 2 * HOUR + 1)
    assert b["escalated_to_level"] == 3
    [b] = only_breach(fold, T0 + 25 * HOUR)
    assert b["sla"] == "resolution" and b["escalated_to_level"] is None
    fold.apply(complaint_event("complaint.escalated", T0 + 26 * HOUR, "q1", level=1))
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["level"] == 3
    assert c["anomalies"] == ["complaint.escalated to level 1 while at level 3"]


def test_reopen_starts_a_new_resolution_cycle_and_rearms_feedback_after_resolution():
    fold, out = fold_with(
        filed(T0, "q1", category="logistics", severity="normal"),
        complaint_event("complaint.acknowledged", T0 + MIN, "q1"),
        complaint_event("complaint.resolved", T0 + HOUR, "q1"),
        complaint_event("complaint.reopened", T0 + HOUR + 10 * MIN, "q1"),  # before feedback due
    )
    assert breaches(out) == []
    reopened = T0 + HOUR + 10 * MIN
    # the first cycle's feedback (due T0+1h15m) was disarmed by the reopen
    assert only_breach(fold, T0 + 2 * HOUR) == []
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["cycle"] == 1 and c["status"] == "reopened"
    assert c["pending"] == {"resolution": [reopened + 24 * HOUR, 1]}
    fold.apply(complaint_event("complaint.resolved", reopened + 2 * HOUR, "q1"))
    [b] = only_breach(fold, reopened + 2 * HOUR + 15 * MIN + 1)
    assert (b["sla"], b["deadline"]) == ("feedback", reopened + 2 * HOUR + 15 * MIN)
    assert b["event_id"] != derived_id(
        "complaint.sla_breached", "2025.10-1", "c-000042", "q1", "feedback", 0)


def test_a_breach_per_cycle():
    fold, _ = fold_with(filed(T0, "q1", severity="urgent"),
                        complaint_event("complaint.acknowledged", T0 + MIN, "q1"))
    [first] = only_breach(fold, T0 + 4 * HOUR + 1)
    fold.apply(complaint_event("complaint.resolved", T0 + 5 * HOUR, "q1"))
    fold.apply(complaint_event("complaint.reopened", T0 + 5 * HOUR + 1, "q1"))
    [second] = only_breach(fold, T0 + 9 * HOUR + 2)
    assert first["sla"] == second["sla"] == "resolution"
    assert first["event_id"] != second["event_id"]
    assert [b[:2] for b in fold.customer_state("c-000042")["complaints"]["q1"]["breaches"]] == [
        ["resolution", 0], ["resolution", 1]]


def test_resolving_before_acknowledging_meets_the_first_response():
    fold, out = fold_with(filed(T0, "q1", severity="normal"),
                          complaint_event("complaint.resolved", T0 + HOUR, "q1"))
    assert [b["sla"] for b in only_breach(fold, T0 + 3 * HOUR)] == []
    assert fold.customer_state("c-000042")["complaints"]["q1"]["anomalies"] == [
        "complaint.resolved before complaint.acknowledged"]


def test_closing_disarms_pending_deadlines_and_records_it():
    fold, _ = fold_with(filed(T0, "q1"), complaint_event("complaint.closed", T0 + MIN, "q1"))
    assert only_breach(fold, T0 + 100 * HOUR) == []
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["anomalies"] == ["complaint.closed with open SLA: first_response, resolution"]


@pytest.mark.parametrize("etype", ["complaint.acknowledged", "complaint.resolved",
                                   "complaint.feedback_delivered", "complaint.followed_up",
                                   "complaint.closed", "complaint.reopened",
                                   "complaint.escalated"])
def test_events_of_an_unknown_complaint_do_not_raise(etype):
    fold, out = fold_with(complaint_event(etype, T0, "ghost"))
    assert breaches(out) == []
    c = fold.customer_state("c-000042")["complaints"]["ghost"]
    assert c["status"] != "filed" and c["filed_at"] is None
    assert c["anomalies"][0] == f"unknown complaint: {etype} before complaint.filed"
    assert breaches(fold.advance_clock(T0 + 1000 * HOUR)) == []


def test_filed_after_its_acknowledgement_arms_only_what_is_still_open():
    fold, out = fold_with(complaint_event("complaint.acknowledged", T0 + MIN, "q1"),
                          filed(T0, "q1", severity="urgent"))
    fired = only_breach(fold, T0 + 5 * HOUR)
    assert [b["sla"] for b in fired] == ["resolution"]


def test_out_of_order_and_duplicate_events_are_recorded_not_raised():
    fold, out = fold_with(
        filed(T0, "q1"),
        filed(T0 + 1, "q1"),
        complaint_event("complaint.feedback_delivered", T0 + 2, "q1"),
        complaint_event("complaint.followed_up", T0 + 3, "q1", outcome="unsatisfied"),
        complaint_event("complaint.reopened", T0 + 4, "q1"),
        complaint_event("complaint.acknowledged", T0 + 5, "q1"),
        complaint_event("complaint.acknowledged", T0 + 6, "q1"),
        complaint_event("complaint.resolved", T0 + 7, "q1"),
        complaint_event("complaint.resolved", T0 + 8, "q1"),
        complaint_event("complaint.closed", T0 + 9, "q1"),
        complaint_event("complaint.closed", T0 + 10, "q1"),
    )
    c = fold.customer_state("c-000042")["complaints"]["q1"]
    assert c["anomalies"] == [
        "duplicate complaint.filed",
        "complaint.feedback_delivered before complaint.resolved",
        "complaint.followed_up before complaint.resolved",
        "complaint.reopened while not resolved",
        "duplicate complaint.acknowledged",
        "duplicate complaint.resolved in cycle 0",
        "duplicate complaint.closed",
    ]
    assert c["status"] == "closed"
    # the complaint rate counts the filing once
    [day] = [w for w in fold.drain_windows() if w["window"] == "1d"]
    assert day["complaints"] == 1


def test_module_fire_ignores_what_is_no_longer_pending():
    comps = {}
    armed = complaints.apply(comps, filed(T0, "q1", "c-1", severity="urgent"), RULES.complaints)
    assert sorted(a[2] for a in armed) == ["first_response", "resolution"]
    c = comps["q1"]
    assert complaints.fire(c, "first_response", T0 + 5 * MIN, 1, "c-1", RULES) is None  # cycle
    assert complaints.fire(c, "first_response", T0 + 4 * MIN, 0, "c-1", RULES) is None  # time
    assert complaints.fire(c, "first_response", T0 + 5 * MIN, 0, "c-1", RULES) is not None
    assert complaints.fire(c, "first_response", T0 + 5 * MIN, 0, "c-1", RULES) is None  # once
    assert complaints.pending_deadlines(comps) == [(T0 + 4 * HOUR, "q1", "resolution", 0)]


def test_closed_complaints_leave_memory_after_retention():
    fold, _ = fold_with(filed(T0, "q1"), complaint_event("complaint.resolved", T0 + 1, "q1"),
                        complaint_event("complaint.closed", T0 + 2, "q1"),
                        filed(T0 + 31 * 24 * HOUR, "q2"),
                        complaint_event("complaint.closed", T0 + 31 * 24 * HOUR + 1, "q2"))
    assert list(fold.customer_state("c-000042")["complaints"]) == ["q2"]
