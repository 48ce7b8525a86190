"""The whole pipeline as users run it: ``cxledger demo`` / ``sql`` / ``replay`` processes on
a real broker and a real ClickHouse engine, each demo with a store of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
              "complaint_state", "churn_risk_changes", "tier_proposals", "tier_changes"]
    for table in tables:
        one = rows(tmp_path, stores[1], f"SELECT * FROM {table} FINAL ORDER BY ALL")
        two = rows(tmp_path, stores[2], f"SELECT * FROM {table} FINAL ORDER BY ALL")
        assert len(one) > 0, table
        assert one == two, table
