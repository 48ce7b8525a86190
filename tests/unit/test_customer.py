"""cxledger.customer, the pure parts: one customer's fold with the partition-clock trick equals
the fold of the whole partition cut at T; the report's shape, summaries and table.

The reference ("brute force") is what the brief defines as the truth: a fresh PartitionFold
over ALL of the partition's events with occurred_at <= T, in ledger order, then its clock
advanced to T. ``assert_report_matches`` (also used by the chDB tests) compares a report with
it: tier, pending downgrade, churn level/score/reasons, open complaints with their deadlines,
the customer's derived events (ids and contents) and ledger events.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxledger.customer import (CustomerNotFound, LedgerRow, as_of_millis, build_report,
                               fold_customer_ledger, fold_partition_ledger, parse_as_of,
                               render_table, summarize)
from processors.complaints import SLA_BREACHED
from processors.ledger import PartitionFold
from processors.rules import load_rules
from schemas.jsonform import iso_millis, to_json_form
from tests.unit.processors_factories import (DAY, HOUR, MINUTE, T0, billing, complaint_event,
                                             contact, decision, event_stream, filed, port_out,
                                             survey)

RULES = load_rules()
PARTITION = 4


# -- the reference and the comparison (shared with tests/integration/test_customer.py) ----------

def brute_force(partition_events, as_of_ms=None, rules=RULES, partition=PARTITION):
    """Fold every event of the partition with occurred_at <= as_of (all without as_of) in
    ledger order on a fresh fold, then advance its clock to as_of: (fold, derived events)."""
    fold = PartitionFold(rules, partition)
    derived = []
    for e in partition_events:
        if as_of_ms is None or e["occurred_at"] <= as_of_ms:
            derived += fold.apply(e)
    if as_of_ms is not None:
        derived += fold.advance_clock(as_of_ms)
    return fold, derived


def assert_report_matches(report, reference, partition_events, customer_id, as_of_ms=None):
    """The report says what the reference fold says about the customer."""
    fold, derived = reference
    context = f"{customer_id} as of {iso_millis(as_of_ms) if as_of_ms else 'the end'}"
    cust = fold.customers.get(customer_id)
    assert report["customer_id"] == customer_id
    assert report["as_of"] == iso_millis(as_of_ms if as_of_ms is not None else fold.clock), context
    # tier and the downgrade awaiting approval
    tier_state = cust["tier"] if cust else {"tier": "standard", "pending": None}
    assert report["tier"] == tier_state["tier"], context
    pending = tier_state["pending"]
    if pending is None:
        assert report["pending_downgrade"] is None, context
    else:
        assert report["pending_downgrade"] == {
            "proposal_id": pending["proposal_id"], "from_tier": pending["from_tier"],
            "to_tier": pending["to_tier"], "basis": f"{pending['basis']:.2f}",
            "proposed_at": iso_millis(pending["proposed_at"]), "period": pending["period"]}, context
    # churn risk as the fold holds it
    churn_state = cust["churn"] if cust else {"level": "low", "score": 0.0, "reasons": ()}
    risk = report["churn_risk"]
    assert (risk["level"], risk["score"], risk["reasons"]) == (
        churn_state["level"], churn_state["score"], list(churn_state["reasons"])), context
    # open complaints with their pending deadlines
    expected_open = {}
    for c in (cust["complaints"].values() if cust else ()):
        if c["closed_at"] is None:
            expected_open[c["complaint_id"]] = (
                c["status"], c["level"], c["category"], c["severity"],
                sorted((iso_millis(d), sla, cycle) for sla, (d, cycle) in c["pending"].items()))
    got_open = {c["complaint_id"]: (c["status"], c["level"], c["category"], c["severity"],
                                    sorted((d["deadline"], d["sla"], d["cycle"])
                                           for d in c["pending_deadlines"]))
                for c in report["open_complaints"]}
    assert got_open == expected_open, context
    # the customer's derived events, ids and contents included
    mine = [d for d in derived if d["customer_id"] == customer_id]
    got = [e["event"] for e in report["timeline"] if e["source"] == "derived"]
    as_json = lambda events: sorted(json.dumps(e, sort_keys=True) for e in events)  # noqa: E731
    assert as_json(got) == as_json([json.loads(json.dumps(to_json_form(d))) for d in mine]), \
        context
    # the customer's ledger events within the cut, and the timeline's order
    ledger_ids = [e["event_id"] for e in partition_events if e["customer_id"] == customer_id
                  and (as_of_ms is None or e["occurred_at"] <= as_of_ms)]
    assert Counter(e["event_id"] for e in report["timeline"] if e["source"] == "ledger") == \
        Counter(ledger_ids), context
    times = [e["occurred_at"] for e in report["timeline"]]
    assert times == sorted(times), context
    # the latest satisfaction scores, newest first
    scored = [d for d in mine if d["event_type"] == "satisfaction.scored"]
    assert [s["survey_id"] for s in report["last_satisfaction"]] == \
        [d["survey_id"] for d in scored[-5:]][::-1], context
    json.dumps(report)  # JSON-serialisable as it is


def customer_rows(partition_events, customer_id, as_of_ms=None):
    """What the window query gives: the customer's events in the cut, each with the highest
    occurred_at of the partition's events before it; and the partition clock in the cut."""
    clock, rows = 0, []
    for position, e in enumerate(partition_events):
        if as_of_ms is not None and e["occurred_at"] > as_of_ms:
            continue
        if e["customer_id"] == customer_id:
            rows.append(LedgerRow(position, e, clock))
        clock = max(clock, e["occurred_at"])
    return rows, clock


def report_by_clock_trick(partition_events, customer_id, as_of_ms=None, rules=RULES):
    rows, clock = customer_rows(partition_events, customer_id, as_of_ms)
    fold = fold_customer_ledger(customer_id, rows, rules, partition=PARTITION,
                                partition_clock=clock, as_of_ms=as_of_ms)
    first = min((e["occurred_at"] for e in partition_events
                 if e["customer_id"] == customer_id), default=None)
    return build_report(customer_id, [fold], rules, as_of_ms=as_of_ms, first_event_at=first)


def report_by_partition_fold(partition_events, customer_id, as_of_ms=None, rules=RULES):
    fold = fold_partition_ledger(customer_id, list(enumerate(partition_events)), rules,
                                 partition=PARTITION, as_of_ms=as_of_ms)
    first = min((e["occurred_at"] for e in partition_events
                 if e["customer_id"] == customer_id), default=None)
    return build_report(customer_id, [fold], rules, as_of_ms=as_of_ms, first_event_at=first)


def interesting_times(partition_events, reference_derived, customer_ids):
    """Before, at, just after and between the customers' events and deadlines."""
    times = set()
    for e in partition_events:
        if e["customer_id"] in customer_ids:
            times |= {e["occurred_at"] - 1, e["occurred_at"], e["occurred_at"] + 1}
    for d in reference_derived:
        if d["event_type"] == SLA_BREACHED and d["customer_id"] in customer_ids:
            times |= {d["deadline"] - 1, d["deadline"], d["deadline"] + 1}
    ordered = sorted(times)
    times |= {(a + b) // 2 for a, b in zip(ordered, ordered[1:])}
    return sorted(times)


# -- scripted: the clock of other customers decides the outcome ---------------------------------

def late_acknowledgement_partition():
    """c-a files an urgent complaint at 09:00 (first response due 09:05). c-b's event at 09:10
    moves the partition clock past the deadline; c-a's acknowledgement stamped 09:04 arrives
    after it (late). The processors breached and escalated at 09:05; folding c-a's events alone
    would not."""
    return [
        filed(T0 + 9 * HOUR, "cp-1", "c-a", severity="urgent", category="logistics"),
        contact(T0 + 9 * HOUR + 10 * MINUTE, "c-b"),
        complaint_event("complaint.acknowledged", T0 + 9 * HOUR + 4 * MINUTE, "cp-1", "c-a"),
        contact(T0 + 9 * HOUR + 20 * MINUTE, "c-a"),
    ]


def test_the_partition_clock_of_other_customers_fires_a_customers_deadline():
    events = late_acknowledgement_partition()
    reference = brute_force(events)
    report = report_by_clock_trick(events, "c-a")
    assert_report_matches(report, reference, events, "c-a")
    breaches = [e for e in report["timeline"] if e["event_type"] == SLA_BREACHED]
    assert [(b["summary"], b["occurred_at"]) for b in breaches] == [
        ("complaint cp-1 breached first_response, escalated to level 1",
         iso_millis(T0 + 9 * HOUR + 5 * MINUTE))]
    # in time order: filed 09:00, acknowledged 09:04 (late), breached 09:05, contact 09:20
    assert [e["event_type"] for e in report["timeline"]] == [
        "complaint.filed", "complaint.acknowledged", SLA_BREACHED, "contact.completed"]
    assert report["churn_risk"]["reasons"] == ["sla_breach"]


def test_folding_the_customer_alone_without_the_clock_differs():
    """The comparison detects a missing clock trick (so the equivalence tests can fail)."""
    events = late_acknowledgement_partition()
    reference = brute_force(events)
    mine = [LedgerRow(i, e, 0) for i, e in enumerate(events) if e["customer_id"] == "c-a"]
    naive = fold_customer_ledger("c-a", mine, RULES, partition=PARTITION, partition_clock=0)
    report = build_report("c-a", [naive], RULES, as_of_ms=None)
    with pytest.raises(AssertionError):
        assert_report_matches(report, reference, events, "c-a")


@pytest.mark.parametrize("minutes", [3, 4, 5, 6, 9, 10, 11, 19, 20, 21, 60 * 5])
def test_as_of_between_a_deadline_and_the_next_event(minutes):
    events = late_acknowledgement_partition()
    at = T0 + 9 * HOUR + minutes * MINUTE
    assert_report_matches(report_by_clock_trick(events, "c-a", at), brute_force(events, at),
                          events, "c-a", at)


def tier_and_churn_partition():
    """c-t: gold at once, then a downgrade awaiting approval (approved), another one (still
    pending); port-out and cancel that raise the churn risk and expire after 30 days; c-o's
    contacts every 6 hours move the clock."""
    t = T0 + 10 * HOUR
    script = [
        billing(t, "2024-10", "1200", "c-t"),
        port_out(t + 1 * DAY, "c-t"),
        contact(t + 2 * DAY, "c-t", intent="cancel"),
        filed(t + 3 * DAY, "cp-t", "c-t", severity="urgent"),
        survey(t + 4 * DAY, "c-t", response_speed=40, resolution_efficiency=50, attitude=45,
               follow_up=30, nps=2),
        billing(t + 10 * DAY, "2024-11", "200", "c-t"),
        decision(t + 12 * DAY, "approved", customer_id="c-t"),
        billing(t + 40 * DAY, "2024-12", "20", "c-t"),
        billing(t + 41 * DAY, "2025-01", "10", "c-t"),
        contact(t + 42 * DAY, "c-t"),
        contact(t + 70 * DAY, "c-t"),
    ]
    others = [contact(T0 + k * 6 * HOUR + 17 * MINUTE, "c-o") for k in range(4 * 75)]
    return sorted(script + others, key=lambda e: e["occurred_at"])


def test_tier_and_churn_changes_equal_the_replay_at_every_time():
    events = tier_and_churn_partition()
    full = brute_force(events)
    kinds = Counter(d["event_type"] for d in full[1] if d["customer_id"] == "c-t")
    assert kinds["tier.changed"] >= 2 and kinds["churn.risk_changed"] >= 3, kinds
    assert full[0].customers["c-t"]["tier"]["pending"] is not None  # a downgrade awaits
    times = interesting_times(events, full[1], {"c-t"})
    for at in times[::3] + [None]:
        assert_report_matches(report_by_clock_trick(events, "c-t", at),
                              brute_force(events, at), events, "c-t", at)


# -- random partitions: every customer, many cut times ------------------------------------------

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(30, 300),
       gap=st.sampled_from([2 * MINUTE, 20 * MINUTE, 3 * HOUR]),
       customers=st.sampled_from([3, 8, 20]), skew=st.sampled_from([0, 30 * MINUTE, 6 * HOUR]),
       data=st.data())
def test_clock_trick_equals_the_partition_fold_for_every_customer(seed, n, gap, customers, skew,
                                                                  data):
    events = event_stream(seed, n, customers=customers, mean_gap_ms=gap, skew_ms=skew)
    full = brute_force(events)
    ids = sorted({e["customer_id"] for e in events})
    times = interesting_times(events, full[1], set(ids))
    for at in data.draw(st.lists(st.sampled_from(times), min_size=1, max_size=4)) + [None]:
        reference = brute_force(events, at)
        for customer_id in ids:
            report = report_by_clock_trick(events, customer_id, at)
            assert_report_matches(report, reference, events, customer_id, at)
            # and the whole document, timeline order and positions included, is the one the
            # exact whole-partition fold gives
            exact = report_by_partition_fold(events, customer_id, at)
            assert exact.pop("method") == "partition" and report.pop("method") == "customer"
            assert report == exact


def test_a_long_skewed_partition_at_many_times():
    events = event_stream(5, 1500, customers=25, mean_gap_ms=40 * MINUTE, skew_ms=4 * HOUR)
    full = brute_force(events)
    mine = Counter(d["event_type"] for d in full[1])
    assert mine[SLA_BREACHED] > 20 and mine["churn.risk_changed"] > 10
    ids = sorted({e["customer_id"] for e in events})
    times = interesting_times(events, full[1], set(ids))
    for at in random.Random(3).sample(times, 12):
        reference = brute_force(events, at)
        for customer_id in ids:
            assert_report_matches(report_by_clock_trick(events, customer_id, at), reference,
                                  events, customer_id, at)


# -- what breaks the trick: a repeated event id with another time -------------------------------

def repeated_id_partition():
    """c-r's contact at 09:00 and a row with the same event id stamped 12:00 (a producer reusing
    an id): the fold skips the second before its clock moves. c-a's urgent complaint (due 09:07)
    is acknowledged at 09:06."""
    first = contact(T0 + 9 * HOUR, "c-r")
    again = {**first, "occurred_at": T0 + 12 * HOUR}
    return [
        filed(T0 + 9 * HOUR + 2 * MINUTE - 1, "cp-2", "c-a", severity="urgent"),
        first, again,
        complaint_event("complaint.acknowledged", T0 + 9 * HOUR + 6 * MINUTE, "cp-2", "c-a"),
    ]


def test_a_repeated_event_id_breaks_the_clock_trick_and_the_partition_fold_is_exact():
    events = repeated_id_partition()
    reference = brute_force(events)
    assert reference[0].duplicates == 1
    assert not [d for d in reference[1] if d["event_type"] == SLA_BREACHED]
    with pytest.raises(AssertionError):  # the trick counts the skipped row in the clock
        assert_report_matches(report_by_clock_trick(events, "c-a"), reference, events, "c-a")
    exact = fold_partition_ledger("c-a", list(enumerate(events)), RULES, partition=PARTITION)
    assert exact.method == "partition"
    assert_report_matches(build_report("c-a", [exact], RULES, as_of_ms=None), reference, events,
                          "c-a")


# -- the report ----------------------------------------------------------------------------------

def test_before_the_first_event_the_state_is_empty_with_a_note():
    events = tier_and_churn_partition()
    first = min(e["occurred_at"] for e in events if e["customer_id"] == "c-t")
    report = report_by_clock_trick(events, "c-t", first - 1)
    assert report["timeline"] == [] and report["events"] == 0
    assert (report["tier"], report["pending_downgrade"], report["open_complaints"]) == (
        "standard", None, [])
    assert report["churn_risk"]["level"] == "low" and report["churn_risk"]["score"] == 0
    assert report["notes"] == [f"no events of c-t at or before {iso_millis(first - 1)}; "
                               f"the first is at {iso_millis(first)}"]
    assert "timeline: 0 entries" in render_table(report)


def test_the_report_holds_the_documented_keys_and_is_json():
    events = tier_and_churn_partition()
    at = T0 + 10 * HOUR + 15 * DAY
    report = report_by_clock_trick(events, "c-t", at)
    assert {"customer_id", "as_of", "tier", "churn_risk", "open_complaints", "timeline",
            "pending_downgrade", "last_satisfaction", "rules_version", "events"} <= set(report)
    assert {"level", "score", "reasons"} <= set(report["churn_risk"])
    assert report["as_of"] == "2025-03-18T02:00:00.000+00:00"
    assert report["as_of_source"] == "requested" and report["rules_version"] == RULES.version
    text = json.dumps(report)
    assert json.loads(text) == report
    entry = next(e for e in report["timeline"] if e["event_type"] == "billing.period_closed")
    assert entry["event"]["spend"] == "1200.00" and entry["source"] == "ledger"
    assert entry["event"]["occurred_at"] == entry["occurred_at"]
    proposal = next(e for e in report["timeline"] if e["event_type"] == "tier.change_proposed")
    assert proposal["proposal_id"] == proposal["event"]["proposal_id"]
    assert proposal["position"] == entry["position"]  # derived after the event that caused it
    assert report["timeline"].index(proposal) > report["timeline"].index(entry)
    # the open complaint with its breaches and no deadline left
    assert [(c["complaint_id"], c["level"], [b["sla"] for b in c["breaches"]],
             c["pending_deadlines"]) for c in report["open_complaints"]] == [
        ("cp-t", 2, ["first_response", "resolution"], [])]
    assert report["last_satisfaction"][0]["dimensions"] == {
        "response_speed": 40, "resolution_efficiency": 50, "attitude": 45, "follow_up": 30}


def test_the_table_shows_the_key_facts():
    events = tier_and_churn_partition()
    report = report_by_clock_trick(events, "c-t", T0 + 10 * HOUR + 11 * DAY)
    text = render_table(report)
    assert text.splitlines()[0] == ("customer c-t as of 2025-03-14 10:00:00 (requested)")
    for fact in ("tier:        gold (basis 700.00)",
                 "downgrade gold -> silver awaiting approval (basis 700.00, proposed "
                 "2025-03-13 10:00:00",
                 "churn risk:  high, score 100 (port_out, cancel, sla_breach, low_satisfaction, "
                 "detractor)",
                 "open complaints: 1", "cp-t", "last satisfaction scores: 1",
                 "tier standard -> gold",
                 "churn risk low -> medium (port_out), score 51.75",
                 "complaint cp-t breached first_response",
                 "escalated to level 1", "survey s-"):
        assert fact in text, fact
    report = report_by_clock_trick(events, "c-t")
    assert "(the partition clock: latest event time on the partition)" in render_table(report)


def test_summaries_name_what_happened():
    assert summarize({"event_type": "churn.risk_changed", "previous_level": "medium",
                      "level": "high", "reasons": ["port_out", "cancel"], "score": 90.0}) == \
        "churn risk medium -> high (port_out, cancel), score 90"
    assert summarize({"event_type": "tier.changed", "from_tier": "standard",
                      "to_tier": "diamond"}) == "tier standard -> diamond"
    assert summarize({"event_type": SLA_BREACHED, "complaint_id": "cp-1",
                      "sla": "first_response", "deadline": 0, "escalated_to_level": 1}) == \
        "complaint cp-1 breached first_response, escalated to level 1"
    assert summarize({"event_type": SLA_BREACHED, "complaint_id": "cp-1", "sla": "feedback",
                      "deadline": 0, "escalated_to_level": None}) == \
        "complaint cp-1 breached feedback"
    assert summarize({"event_type": "something.new"}) == "something.new"


def test_as_of_accepts_epoch_millis_datetimes_and_iso_text():
    assert as_of_millis(1_741_050_000_000) == 1_741_050_000_000
    assert parse_as_of("1741050000000") == 1_741_050_000_000
    assert parse_as_of("2025-03-04T09:00:00+08:00") == 1_741_050_000_000
    assert parse_as_of(" 2025-03-04T01:00:00Z ") == 1_741_050_000_000
    assert parse_as_of("2025-03-04T01:00:00") == 1_741_050_000_000  # no offset: UTC
    assert as_of_millis("2025-03-04T01:00:00.250Z") == 1_741_050_000_250
    aware = datetime(2025, 3, 4, 1, 0, 0, 999, tzinfo=timezone.utc)
    assert as_of_millis(aware) == 1_741_050_000_000  # sub-millisecond truncated
    assert as_of_millis(aware.astimezone(timezone(timedelta(hours=8)))) == 1_741_050_000_000
    assert as_of_millis(datetime(2025, 3, 4, 1)) == 1_741_050_000_000
    for bad in ("yesterday", "2025-13-01T00:00:00Z", ""):
        with pytest.raises(ValueError, match="neither ISO-8601"):
            parse_as_of(bad)
    with pytest.raises(ValueError):
        as_of_millis(True)


def test_an_unknown_customer_names_the_customer_and_the_store():
    error = CustomerNotFound("c-nobody", "chdb:///data/store")
    assert str(error) == "customer 'c-nobody' has no events in the ledger of chdb:///data/store"
    assert isinstance(error, LookupError)
