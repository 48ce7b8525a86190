"""Feedback SLAs and the working-day complaint profile, computed by hand (domain.md, "Service
halls, feedback, incidents and quality control"; processors.feedback, processors.workdays)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from processors.derived import derived_id
from processors.ledger import PartitionFold
from processors.rules import RulesError, load_rules
from processors.workdays import WorkdayCalendar
from tests.unit.processors_factories import (DELETE, complaint_event, filed, fold_events, record,
                                             rules_with)

RULES = load_rules()
SH = ZoneInfo("Asia/Shanghai")
MIN = 60_000
HOUR = 60 * MIN
T = int(datetime(2025, 3, 4, 9, 0, tzinfo=SH).timestamp() * 1000)


def fb(event_type: str, at: int, feedback_id: str = "fb-1", customer_id: str = "c-1") -> dict:
    return record(event_type, at, customer_id, channel="app", city="lanzhou",
                  feedback_id=feedback_id)


def breaches(events):
    return [e for e in events if e["event_type"] == "feedback.sla_breached"]


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, SH).strftime("%Y-%m-%d %H:%M")


# -- feedback: handled within 24 h, result reported within 72 h of receipt ----------------------

def test_a_result_reported_at_71_59_meets_its_sla():
    fold, out = fold_events(fb("feedback.received", T), fb("feedback.handled", T + 5 * HOUR),
                            fb("feedback.result_reported", T + 71 * HOUR + 59 * MIN),
                            rules=RULES)
    out += fold.advance_clock(T + 100 * HOUR)
    assert breaches(out) == []


def test_a_result_reported_at_72_01_breaches():
    fold, out = fold_events(fb("feedback.received", T), fb("feedback.handled", T + 5 * HOUR),
                            fb("feedback.result_reported", T + 72 * HOUR + 1 * MIN), rules=RULES)
    deadline = T + 72 * HOUR
    assert breaches(out) == [{
        "event_id": derived_id("feedback.sla_breached", RULES.version, "c-1", "fb-1", "result"),
        "event_type": "feedback.sla_breached", "occurred_at": deadline, "customer_id": "c-1",
        "channel": "app", "city": "lanzhou", "agent_id": None, "correlation_id": "fb-1",
        "rules_version": RULES.version, "feedback_id": "fb-1", "sla": "result",
        "deadline": deadline, "received_at": T}]


def test_handling_after_24_hours_breaches_handled_only_once():
    fold, out = fold_events(fb("feedback.received", T), fb("feedback.handled", T + 25 * HOUR),
                            fb("feedback.handled", T + 26 * HOUR), rules=RULES)
    out += fold.advance_clock(T + 80 * HOUR)
    assert [(b["sla"], local(b["deadline"])) for b in breaches(out)] == [
        ("handled", "2025-03-05 09:00"), ("result", "2025-03-07 09:00")]


def test_exactly_at_the_deadline_is_on_time_and_a_result_meets_handled_too():
    fold, out = fold_events(fb("feedback.received", T),
                            fb("feedback.result_reported", T + 24 * HOUR), rules=RULES)
    out += fold.advance_clock(T + 200 * HOUR)
    assert breaches(out) == []


def test_another_customers_events_move_the_clock_past_the_deadline():
    fold, out = fold_events(fb("feedback.received", T),
                            fb("feedback.received", T + 30 * HOUR, "fb-2", customer_id="c-2"),
                            rules=RULES)
    assert [(b["customer_id"], b["feedback_id"], b["sla"]) for b in breaches(out)] == [
        ("c-1", "fb-1", "handled")]


def test_feedback_deadlines_survive_a_restore():
    fold, _ = fold_events(fb("feedback.received", T), rules=RULES)
    again = PartitionFold(RULES, 0)
    again.load_customer("c-1", fold.customer_state("c-1"))
    again.restore_partition(fold.snapshot_partition())
    assert [b["sla"] for b in breaches(again.advance_clock(T + 73 * HOUR))] == ["handled", "result"]


def test_settled_feedback_is_forgotten_after_its_retention():
    fold, _ = fold_events(fb("feedback.received", T), fb("feedback.result_reported", T + HOUR),
                          rules=RULES)
    assert "fb-1" in fold.customers["c-1"]["feedback"]
    fold.advance_clock(T + 31 * 24 * HOUR)
    assert "c-1" not in fold.customers or "feedback" not in fold.customers["c-1"]


# -- the working-day complaint profile (3 and 7 working days, mainland China's calendar) --------

WORKING_DAYS = rules_with({"complaints.sla_profiles.default": "working_days"})


def test_a_complaint_filed_on_the_friday_before_national_day_counts_across_the_holiday():
    """Filed Friday 2025-09-26 16:30. Working days after it: Sun 09-28 (make-up working day),
    Mon 09-29, Tue 09-30 -> the 3-working-day deadline is the end of 09-30. Then 10-01..10-08
    are the National Day holiday; Thu 10-09, Fri 10-10, Sat 10-11 (make-up working day),
    Mon 10-13 -> the 7-working-day deadline is the end of 10-13."""
    filed_at = int(datetime(2025, 9, 26, 16, 30, tzinfo=SH).timestamp() * 1000)
    fold, _ = fold_events(filed(filed_at, "cp-1", category="network"), rules=WORKING_DAYS)
    pending = fold.customers["c-000042"]["complaints"]["cp-1"]["pending"]
    assert {sla: local(d) for sla, (d, _) in pending.items()} == {
        "first_response": "2025-10-01 00:00", "resolution": "2025-10-14 00:00"}
    # acknowledged on the last working day: met; resolved a minute after the end of 10-13: breach
    out = fold.apply(complaint_event("complaint.acknowledged",
                                     int(datetime(2025, 9, 30, 23, 59, tzinfo=SH).timestamp() * 1000), "cp-1"))
    out += fold.apply(complaint_event("complaint.resolved",
                                      int(datetime(2025, 10, 14, 0, 1, tzinfo=SH).timestamp() * 1000), "cp-1"))
    assert [(b["sla"], local(b["deadline"]), b["escalated_to_level"])
            for b in out if b["event_type"] == "complaint.sla_breached"] == [
        ("resolution", "2025-10-14 00:00", 1)]


def test_the_spring_festival_and_its_make_up_days():
    """Filed Fri 2025-01-24: Sun 01-26 (make-up), Mon 01-27, then 01-28..02-04 holiday, Wed 02-05
    -> 3 working days end 02-05; Thu 02-06, Fri 02-07, Sat 02-08 (make-up), Mon 02-10 -> 7."""
    cal = WorkdayCalendar("Asia/Shanghai", 2026)
    filed_at = int(datetime(2025, 1, 24, 11, 0, tzinfo=SH).timestamp() * 1000)
    assert [local(cal.deadline(filed_at, n)[0]) for n in (3, 7)] == [
        "2025-02-06 00:00", "2025-02-11 00:00"]


def test_the_profile_is_chosen_per_category_and_hours_stay_the_default():
    rules = rules_with({"complaints.sla_profiles.network": "working_days"})
    assert rules.complaints.profile("network") == "working_days"
    assert rules.complaints.profile("billing") == "hours" == RULES.complaints.profile("network")
    fold, _ = fold_events(filed(T, "cp-n", category="network"),
                          filed(T, "cp-b", category="billing"), rules=rules)
    complaints = fold.customers["c-000042"]["complaints"]
    assert local(complaints["cp-n"]["pending"]["first_response"][0]) == "2025-03-08 00:00"  # Fri
    assert complaints["cp-b"]["pending"]["first_response"][0] == T + 2 * HOUR


def test_past_the_calendars_last_year_weekdays_count_and_the_complaint_says_so():
    filed_at = int(datetime(2026, 12, 30, 10, 0, tzinfo=SH).timestamp() * 1000)
    fold, _ = fold_events(filed(filed_at, "cp-1"), rules=WORKING_DAYS)
    c = fold.customers["c-000042"]["complaints"]["cp-1"]
    # Thu 12-31 (2026, calendar), then Fri 01-01 2027 is a weekday: counted Monday-Friday
    assert local(c["pending"]["first_response"][0]) == "2027-01-05 00:00"
    assert c["anomalies"] == ["working-day deadline counted Monday-Friday in 2027, past the "
                              "calendar's last year 2026"]


def test_the_rules_refuse_a_year_the_installed_calendar_does_not_know():
    with pytest.raises(RulesError, match="complaints.working_days.last_calendar_year"):
        rules_with({"complaints.working_days.last_calendar_year": 2099})
    with pytest.raises(RulesError, match="complaints.sla_profiles.network"):
        rules_with({"complaints.sla_profiles.network": "weeks"})
    with pytest.raises(RulesError, match="complaints.working_days.calendar"):
        rules_with({"complaints.working_days.calendar": "gregorian"})
    with pytest.raises(RulesError, match="halls"):
        rules_with({"halls": DELETE})
