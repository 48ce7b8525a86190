"""The whole pipeline as users run it: ``cxledger demo`` / ``sql`` / ``replay`` processes on
a real broker and a real ClickHouse engine, each demo with a store of its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack_driver import final_rows

pytestmark = pytest.mark.integration

# A scripted day (Asia/Shanghai) with derived results computed by hand from domain.md.
SCRIPT = [
    # beijing profile: .25*89.2 + .50*85.7 + .15*90.5 + .10*82.4 = 86.965 -> 86.97
    {"event_type": "survey.responded", "occurred_at": "2025-03-04T09:00:00+08:00",
     "customer_id": "c-a", "channel": "sms", "city": "beijing", "survey_id": "s-1",
     "response_speed": 89.2, "resolution_efficiency": 85.7, "attitude": 90.5, "follow_up": 82.4,
     "nps": 9},
    # default weights: the March 2025 national means -> 87.38; nps 6 is a detractor
    {"event_type": "survey.responded", "occurred_at": "2025-03-04T09:01:00+08:00",
     "customer_id": "c-b", "channel": "sms", "city": "lanzhou", "survey_id": "s-2",
     "response_speed": 89.2, "resolution_efficiency": 85.7, "attitude": 90.5, "follow_up": 82.4,
     "nps": 6},
    # urgent: first response due 09:07; acknowledged 09:12 -> breach, escalated to level 1
    {"event_type": "complaint.filed", "occurred_at": "2025-03-04T09:02:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1",
     "category": "logistics", "severity": "urgent"},
    {"event_type": "complaint.acknowledged", "occurred_at": "2025-03-04T09:12:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1"},
    # resolved within 4 h, feedback within 15 min (logistics), follow-up within 72 h
    {"event_type": "complaint.resolved", "occurred_at": "2025-03-04T10:00:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1",
     "resolution": "fixed"},
    {"event_type": "complaint.feedback_delivered", "occurred_at": "2025-03-04T10:05:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1"},
    {"event_type": "complaint.followed_up", "occurred_at": "2025-03-04T11:00:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1",
     "outcome": "satisfied"},
    {"event_type": "complaint.closed", "occurred_at": "2025-03-04T11:05:00+08:00",
     "customer_id": "c-b", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-1"},
    # basis 3500 >= 3000: standard -> diamond at once
    {"event_type": "billing.period_closed", "occurred_at": "2025-03-04T11:10:00+08:00",
     "customer_id": "c-c", "channel": "app", "city": "shanghai", "period": "2025-02",
     "spend": "3500.00", "plan_code": "5g-599"},
    # port_out 45 -> medium; + cancel 45 = 90 -> high
    {"event_type": "account.port_out_requested", "occurred_at": "2025-03-04T11:20:00+08:00",
     "customer_id": "c-d", "channel": "service_hall", "city": "urumqi"},
    "not json at all",
    {"event_type": "contact.completed", "occurred_at": "2025-03-04T11:20:30+08:00",
     "customer_id": "c-d", "channel": "fax", "city": "urumqi", "contact_id": "k-0",
     "direction": "inbound", "category": "retention", "handler": "agent", "wait_seconds": 5,
     "first_response_seconds": 9, "handle_seconds": 300, "transfers": 0,
     "resolved_first_contact": True},
    {"event_type": "account.cancellation_requested", "occurred_at": "2025-03-04T11:21:00+08:00",
     "customer_id": "c-d", "channel": "service_hall", "city": "urumqi"},
    {"event_type": "contact.completed", "occurred_at": "2025-03-04T11:30:00+08:00",
     "customer_id": "c-a", "channel": "ai_assistant", "city": "beijing", "contact_id": "k-1",
     "direction": "inbound", "category": "inquiry", "handler": "ai", "wait_seconds": 0,
     "first_response_seconds": 2, "handle_seconds": 40, "transfers": 0,
     "resolved_first_contact": True},
]
VALID = sum(isinstance(line, dict) and line.get("channel") != "fax" for line in SCRIPT)


def cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxledger.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def rows(cwd: Path, store: Path, sql: str) -> list[dict]:
    result = cli("sql", "--store", str(store), "--format", "json", sql, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    work = tmp_path_factory.mktemp("scripted")
    path = work / "day.jsonl"
    path.write_text("".join((json.dumps(e) if isinstance(e, dict) else e) + "\n"
                            for e in SCRIPT))
    store = work / "store"
    result = cli("demo", "--input", str(path), "--store", str(store), cwd=work)
    return work, path, store, result


def test_demo_input_publishes_the_valid_lines_and_reports_the_others(scripted):
    work, path, store, result = scripted
    assert result.returncode == 1, result.stderr[-3000:]  # something was rejected
    assert f"{path}:11: not valid JSON" in result.stderr
    assert f"{path}:12: contact.completed" in result.stderr
    assert "field 'channel': must be one of" in result.stderr
    assert f"{VALID} published, 2 rejected" in result.stdout
    rejects = (work / "day.jsonl.rejects").read_text().splitlines()
    assert [line.split(":")[1] for line in rejects] == ["11", "12"]
    count = cli("sql", "--store", str(store), "SELECT count() FROM ledger_events",
                "--format", "csv", cwd=work)
    assert count.stdout.splitlines() == ["\"count()\"", str(VALID)]


def test_derived_tables_hold_exactly_the_expected_rows(scripted):
    work, _, store, result = scripted
    q = lambda sql: rows(work, store, sql)  # noqa: E731
    assert q("SELECT survey_id, city, composite, weights_profile, tier FROM "
             "satisfaction_scores FINAL ORDER BY survey_id") == [
        {"survey_id": "s-1", "city": "beijing", "composite": 86.97,
         "weights_profile": "beijing", "tier": "standard"},
        {"survey_id": "s-2", "city": "lanzhou", "composite": 87.38,
         "weights_profile": "default", "tier": "standard"}]
    assert q("SELECT complaint_id, customer_id, sla, toString(deadline) AS deadline, "
             "escalated_to_level FROM complaint_sla_breaches FINAL") == [
        {"complaint_id": "cp-1", "customer_id": "c-b", "sla": "first_response",
         "deadline": "2025-03-04 01:07:00.000", "escalated_to_level": 1}]
    assert q("SELECT complaint_id, status, level, breaches FROM complaint_state FINAL") == [
        {"complaint_id": "cp-1", "status": "closed", "level": 1,
         "breaches": ["first_response"]}]
    assert q("SELECT customer_id, from_tier, to_tier FROM tier_changes FINAL") == [
        {"customer_id": "c-c", "from_tier": "standard", "to_tier": "diamond"}]
    assert q("SELECT customer_id, toString(basis) AS basis, requires_approval "
             "FROM tier_proposals FINAL") == [
        {"customer_id": "c-c", "basis": "3500", "requires_approval": False}]
    assert q("SELECT customer_id, previous_level, level, score, reasons FROM "
             "churn_risk_changes FINAL ORDER BY occurred_at") == [
        {"customer_id": "c-d", "previous_level": "low", "level": "medium", "score": 45,
         "reasons": ["port_out"]},
        {"customer_id": "c-d", "previous_level": "medium", "level": "high", "score": 90,
         "reasons": ["port_out", "cancel"]}]
    assert q("SELECT customer_id, level FROM churn_risk_current") == [
        {"customer_id": "c-d", "level": "high"}]
    assert q("SELECT customer_id, tier FROM customer_tier_current") == [
        {"customer_id": "c-c", "tier": "diamond"}]
    # beijing's day windows, one per channel: the survey (sms), an AI-handled contact
    # resolved at first contact (ai_assistant)
    assert q("SELECT channel, surveys, round(composite, 2) AS composite, contacts, fcr_rate, "
             "ai_share FROM satisfaction_windows WHERE window = '1d' AND city = 'beijing' "
             "ORDER BY channel") == [
        {"channel": "ai_assistant", "surveys": 0, "composite": None, "contacts": 1,
         "fcr_rate": 1, "ai_share": 1},
        {"channel": "sms", "surveys": 1, "composite": 86.97, "contacts": 0, "fcr_rate": None,
         "ai_share": None}]
    assert q("SELECT count() AS n FROM deadletter_events") == [{"n": 0}]


def test_replay_of_the_scripted_ledger_equals_the_live_run(scripted):
    work, _, store, _ = scripted
    result = cli("replay", "--store", str(store), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "replay equals live" in result.stdout
    assert f"replayed {VALID} ledger events" in result.stdout


def test_two_workers_derive_the_same_tables_as_one(tmp_path):
    traffic = tmp_path / "traffic.jsonl"
    made = cli("simulate", "--events", "6000", "--seed", "11", "--out", str(traffic),
               cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    stores = {}
    for workers in (1, 2):
        store = tmp_path / f"w{workers}" / "store"
        result = cli("demo", "--input", str(traffic), "--store", str(store),
                     "--workers", str(workers), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        stores[workers] = store
    logs = [(stores[2].parent / f"worker-{n}.log").read_text() for n in (0, 1)]
    assert all("partition state restored" in log for log in logs), "both workers got partitions"
    tables = ["satisfaction_scores", "satisfaction_window_partials", "complaint_sla_breaches",
              "complaint_state", "churn_risk_changes", "tier_proposals", "tier_changes",
              "hall_survey_month_partials", "hall_survey_month_closes"]
    maybe_empty = ["feedback_sla_breaches", "hall_key_improvement_flags",
                   "hall_key_improvement_clears"]
    one, two = (final_rows(tmp_path, dict(os.environ), stores[n], tables + maybe_empty)
                for n in (1, 2))
    for table in tables + maybe_empty:
        assert len(one[table]) > 0 or table in maybe_empty, table
        assert one[table] == two[table], table


# -- service halls and feedback: a scripted quarter, hand-computed (domain.md, "Service halls") ----
# Hall urumqi-nanhudong: March, April and May below target (10, 9, 9, 9, 9 -> 92.0) on 30, 31 and
# 40 valid replies; June on target (10, 10, 9, 10, 9 -> 96.0, exactly the target) on 30. The
# replies come from 47 customers, so they spread over every ledger partition; July's replies
# (another hall, 60 customers) move every partition's clock past the end of June.
SH = "+08:00"
BELOW, ON = (10, 9, 9, 9, 9), (10, 10, 9, 10, 9)


def _hall_reply(n: int, when: str, items, hall="urumqi-nanhudong", customer=None) -> dict:
    overall, environment, waiting, handling, attitude = items
    return {"event_type": "hall.survey_responded", "occurred_at": when,
            "customer_id": customer or f"c-h{n % 47:03d}", "channel": "sms", "city": "urumqi",
            "survey_id": f"hs-{n}", "hall_id": hall, "overall": overall,
            "environment": environment, "waiting": waiting, "handling": handling,
            "staff_attitude": attitude, "valid": True}


def hall_script() -> list[dict]:
    events, n = [], 0
    for month, items, count in ((3, BELOW, 30), (4, BELOW, 31), (5, BELOW, 40), (6, ON, 30)):
        for k in range(count):
            n += 1
            events.append(_hall_reply(n, f"2025-{month:02d}-{1 + k % 20:02d}T{9 + k % 8:02d}:"
                                         f"{k % 60:02d}:00{SH}", items))
    events.append({"event_type": "hall.survey_responded", "occurred_at": f"2025-05-20T10:00:00{SH}",
                   "customer_id": "c-h900", "channel": "sms", "city": "urumqi", "survey_id": "hs-x",
                   "hall_id": "urumqi-nanhudong", "valid": False})  # a blank reply: not scored
    # feedback: fb-1 answered in time; fb-2 handled after 24 h and its result at 72:01 h
    events += [
        {"event_type": "feedback.received", "occurred_at": f"2025-06-02T09:00:00{SH}",
         "customer_id": "c-f1", "channel": "app", "city": "lanzhou", "feedback_id": "fb-1"},
        {"event_type": "feedback.handled", "occurred_at": f"2025-06-02T12:00:00{SH}",
         "customer_id": "c-f1", "channel": "app", "city": "lanzhou", "feedback_id": "fb-1"},
        {"event_type": "feedback.result_reported", "occurred_at": f"2025-06-05T08:59:00{SH}",
         "customer_id": "c-f1", "channel": "app", "city": "lanzhou", "feedback_id": "fb-1"},
        {"event_type": "feedback.received", "occurred_at": f"2025-06-02T09:00:00{SH}",
         "customer_id": "c-f2", "channel": "app", "city": "lanzhou", "feedback_id": "fb-2"},
        {"event_type": "feedback.handled", "occurred_at": f"2025-06-03T09:30:00{SH}",
         "customer_id": "c-f2", "channel": "app", "city": "lanzhou", "feedback_id": "fb-2"},
        {"event_type": "feedback.result_reported", "occurred_at": f"2025-06-05T09:01:00{SH}",
         "customer_id": "c-f2", "channel": "app", "city": "lanzhou", "feedback_id": "fb-2"},
        # an operational event: no customer, keyed by its hall
        {"event_type": "supervision.onsite_shift", "occurred_at": f"2025-06-10T10:00:00{SH}",
         "channel": "service_hall", "city": "urumqi", "shift_id": "sh-1",
         "hall_id": "urumqi-nanhudong", "manager_id": "m-xinshi", "customers_received": 40,
         "unresolved": 1, "on_duty": True, "handheld_used": True},
    ]
    # an incident in lanzhou 08:00-12:00 on 06-02: c-f1's contact at 10:00 and c-f2's complaint at
    # 11:00 are tagged with it, c-f1's contact at 13:00 is not
    incident = {"channel": "phone", "city": "lanzhou", "incident_id": "inc-1", "level": 2,
                "service": "network", "cities": ["lanzhou", "hohhot"]}
    contact = {"event_type": "contact.completed", "channel": "phone", "city": "lanzhou",
               "direction": "inbound", "category": "technical", "handler": "agent",
               "wait_seconds": 30, "first_response_seconds": 35, "handle_seconds": 200,
               "transfers": 0, "resolved_first_contact": True}
    events += [
        {"event_type": "incident.detected", "occurred_at": f"2025-06-02T08:00:00{SH}", **incident},
        {"event_type": "incident.resolved", "occurred_at": f"2025-06-02T12:00:00{SH}", **incident},
        {**contact, "occurred_at": f"2025-06-02T10:00:00{SH}", "customer_id": "c-f1",
         "contact_id": "k-in"},
        {**contact, "occurred_at": f"2025-06-02T13:00:00{SH}", "customer_id": "c-f1",
         "contact_id": "k-after"},
        {"event_type": "complaint.filed", "occurred_at": f"2025-06-02T11:00:00{SH}",
         "customer_id": "c-f2", "channel": "phone", "city": "lanzhou", "complaint_id": "cp-in",
         "category": "network", "severity": "normal"},
    ]
    for k in range(60):
        events.append(_hall_reply(1000 + k, f"2025-07-02T09:{k:02d}:00{SH}", ON,
                                  hall="urumqi-yananlu", customer=f"c-j{k:03d}"))
    return sorted(events, key=lambda e: e["occurred_at"])


@pytest.fixture(scope="module")
def halls(tmp_path_factory):
    work = tmp_path_factory.mktemp("halls")
    path = work / "halls.jsonl"
    events = hall_script()
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    store = work / "store"
    result = cli("demo", "--input", str(path), "--store", str(store), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, store, result, len(events)


def test_a_hall_three_months_below_target_is_flagged_at_the_close_of_may_and_cleared_in_june(halls):
    work, store, result, _ = halls
    q = lambda sql: rows(work, store, sql)  # noqa: E731
    assert q("SELECT hall_id, months, values, valid_replies, toString(occurred_at) AS at "
             "FROM hall_key_improvement_flags FINAL") == [
        {"hall_id": "urumqi-nanhudong", "months": ["2025-03", "2025-04", "2025-05"],
         "values": [92, 92, 92], "valid_replies": [30, 31, 40],
         "at": "2025-05-31 16:00:00.000"}]  # the end of May, Asia/Shanghai
    assert q("SELECT hall_id, month, value, valid_replies, toString(occurred_at) AS at "
             "FROM hall_key_improvement_clears FINAL") == [
        {"hall_id": "urumqi-nanhudong", "month": "2025-06", "value": 96, "valid_replies": 30,
         "at": "2025-06-30 16:00:00.000"}]
    assert q("SELECT count() AS n FROM hall_key_improvement_current") == [{"n": 0}]
    assert q("SELECT month, replies, valid_replies, satisfaction, waiting, closed_partitions "
             "FROM hall_satisfaction_monthly WHERE hall_id = 'urumqi-nanhudong' ORDER BY month") == [
        {"month": "2025-03", "replies": 30, "valid_replies": 30, "satisfaction": 92, "waiting": 90,
         "closed_partitions": 6},
        {"month": "2025-04", "replies": 31, "valid_replies": 31, "satisfaction": 92, "waiting": 90,
         "closed_partitions": 6},
        {"month": "2025-05", "replies": 41, "valid_replies": 40, "satisfaction": 92, "waiting": 90,
         "closed_partitions": 6},
        {"month": "2025-06", "replies": 30, "valid_replies": 30, "satisfaction": 96, "waiting": 90,
         "closed_partitions": 6}]
    # every ledger partition closed every month from its first event on
    assert q("SELECT month, count() AS partitions FROM hall_survey_month_closes FINAL "
             "GROUP BY month ORDER BY month") == [
        {"month": m, "partitions": 6} for m in ("2025-03", "2025-04", "2025-05", "2025-06")]
    assert "Service halls 2025-07: top 5 of 1 ranked halls" in result.stdout
    assert "Halls flagged for key improvement (0: " in result.stdout


def test_feedback_reported_at_72_01_breaches_and_at_71_59_does_not(halls):
    work, store, _, _ = halls
    assert rows(work, store, "SELECT feedback_id, customer_id, sla, toString(deadline) AS deadline "
                "FROM feedback_sla_breaches FINAL ORDER BY sla") == [
        {"feedback_id": "fb-2", "customer_id": "c-f2", "sla": "handled",
         "deadline": "2025-06-03 01:00:00.000"},
        {"feedback_id": "fb-2", "customer_id": "c-f2", "sla": "result",
         "deadline": "2025-06-05 01:00:00.000"}]
    assert rows(work, store, "SELECT received, handled_met, handled_missed, result_met, "
                "result_missed FROM feedback_sla_compliance") == [
        {"received": 2, "handled_met": 1, "handled_missed": 1, "result_met": 1,
         "result_missed": 1}]
    assert rows(work, store, "SELECT customer_id, event_type FROM ledger "
                "WHERE event_type = 'supervision.onsite_shift'") == [
        {"customer_id": "", "event_type": "supervision.onsite_shift"}]


def test_contacts_and_complaints_during_an_incident_are_tagged_by_the_view_and_the_rule(halls):
    from processors.incidents import incidents_from, tags

    work, store, _, _ = halls
    tagged = rows(work, store, "SELECT incident_id, event_type, subject_id, customer_id "
                  "FROM incident_tags ORDER BY occurred_at")
    assert tagged == [
        {"incident_id": "inc-1", "event_type": "contact.completed", "subject_id": "k-in",
         "customer_id": "c-f1"},
        {"incident_id": "inc-1", "event_type": "complaint.filed", "subject_id": "cp-in",
         "customer_id": "c-f2"}]
    events = [dict(json.loads(r["payload"]), occurred_at=r["ms"]) for r in rows(
        work, store, "SELECT payload, toUnixTimestamp64Milli(occurred_at) AS ms FROM ledger")]
    known = list(incidents_from(e for e in events if e["event_type"].startswith("incident.")).values())
    by_rule = sorted((t, e["event_type"], e.get("contact_id") or e.get("complaint_id"))
                     for e in events for t in tags(e, known))
    assert by_rule == sorted((r["incident_id"], r["event_type"], r["subject_id"]) for r in tagged)
    hours = rows(work, store, "SELECT toString(hour) AS hour, contacts, complaints, incident_ids, "
                 "top_level FROM contact_volume_hourly WHERE city = 'lanzhou' ORDER BY hour")
    assert hours == [  # UTC hours: 10:00, 11:00 and 13:00 in Asia/Shanghai
        {"hour": "2025-06-02 02:00:00", "contacts": 1, "complaints": 0, "incident_ids": ["inc-1"],
         "top_level": 2},
        {"hour": "2025-06-02 03:00:00", "contacts": 0, "complaints": 1, "incident_ids": ["inc-1"],
         "top_level": 2},
        {"hour": "2025-06-02 05:00:00", "contacts": 1, "complaints": 0, "incident_ids": [],
         "top_level": None}]
    report = cli("customer", "c-f1", "--store", str(store), "--format", "json", cwd=work)
    assert report.returncode == 0, report.stderr[-2000:]
    timeline = json.loads(report.stdout)["timeline"]
    assert [(e.get("contact_id"), e.get("incident_ids")) for e in timeline
            if e["event_type"] == "contact.completed"] == [("k-in", ["inc-1"]), ("k-after", None)]


def test_replay_of_the_hall_quarter_equals_the_live_run(halls):
    work, store, _, n = halls
    result = cli("replay", "--store", str(store), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "replay equals live" in result.stdout and f"replayed {n} ledger events" in result.stdout
    for table in ("hall_key_improvement_flags", "hall_key_improvement_clears",
                  "hall_survey_month_closes", "hall_survey_month_partials",
                  "feedback_sla_breaches"):
        assert re.search(rf"{table}\s+live\s+[1-9]\d*\s+replay\s+[1-9]\d*\s+equal",
                         result.stdout), table
