"""``customer_report`` on the real engine (the session's chDB store): scripted customers whose
tier and churn risk change several times, mixed on one partition with customers whose events
move the partition clock, equal a replay of the ledger cut at T for many T.

Rows go straight into ``ledger_events`` (valid records via ``normalize_event``, rows via
``ledger_row``) on partition numbers of this test's own, so tests sharing the store do not
see each other. The reference reads the partition back with its own query and folds all of
it (tests/unit/test_customer.py: ``brute_force``, ``assert_report_matches``).
"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from cxledger.customer import (CustomerNotFound, customer_ledger, customer_report,
                               fold_customer_ledger, build_report, render_table)
from processors.complaints import SLA_BREACHED
from processors.derived import derived_id
from processors.rules import load_rules
from schemas.jsonform import iso_millis, to_json_form
from schemas.validation import normalize_event
from sinks.ledger_sink import LEDGER_COLUMNS, LEDGER_TABLE, ledger_row
from sinks.replay import record_from_payload
from tests.unit.processors_factories import (DAY, HOUR, MINUTE, T0, billing, cancellation,
                                             complaint_event, contact, decision, filed,
                                             plan_changed, port_out, survey)
from tests.unit.test_customer import assert_report_matches, brute_force, interesting_times

pytestmark = pytest.mark.integration

RULES = load_rules()


def valid(record: dict) -> dict:
    """The record as the ledger holds it: validated from its JSON form."""
    return normalize_event(json.loads(json.dumps(to_json_form(record))))


def write_partition(client, partition: int, records: list[dict]) -> list[dict]:
    """Append records to a partition in list order (their ledger positions)."""
    events = [valid(r) for r in records]
    client.insert(LEDGER_TABLE, [ledger_row(e, 1, partition, offset)
                                 for offset, e in enumerate(events)],
                  column_names=list(LEDGER_COLUMNS))
    return events


def read_partition(client, partition: int) -> list[dict]:
    """The reference's own read of the partition: FINAL, in offset order."""
    return [record_from_payload(payload, ms) for ms, payload in client.query(
        "SELECT toUnixTimestamp64Milli(occurred_at), payload FROM ledger_events FINAL "
        "WHERE kafka_partition = {p:UInt16} ORDER BY kafka_offset",
        parameters={"p": partition}).result_rows]


def scripted_partition(a: str, b: str, others: list[str]) -> list[dict]:
    """Customers ``a`` and ``b`` (see below) among ``others`` whose contacts and surveys come
    every 1-5 hours, some of them late (stamped up to 2 h before the partition's latest). A
    (publish time, event) item is a late event: it takes its ledger position at publish time."""
    t = T0 + 10 * HOUR
    first_b_bill = billing(t + 1 * DAY, "2024-10", "3500", b, city="beijing")
    drop_b = billing(t + 14 * DAY, "2024-12", "1000", b, city="beijing")
    script = [
        # a: standard -> gold at once; port-out and cancel raise the risk (medium, high)
        billing(t, "2024-10", "1200", a, city="shanghai"),
        contact(t + 1 * DAY, a, intent="port_out", city="shanghai"),
        cancellation(t + 2 * DAY, a),
        # an urgent logistics complaint left unanswered: first response and resolution breached
        # (levels 1, 2); resolved late, feedback breached (15 min), followed up unsatisfied
        filed(t + 3 * DAY - HOUR, "cp-a1", a, category="logistics", severity="urgent"),
        complaint_event("complaint.acknowledged", t + 3 * DAY + 5 * HOUR, "cp-a1", a),
        complaint_event("complaint.resolved", t + 3 * DAY + 6 * HOUR, "cp-a1", a),
        survey(t + 4 * DAY, a, response_speed=40, resolution_efficiency=50, attitude=45,
               follow_up=30, nps=2),
        complaint_event("complaint.feedback_delivered", t + 5 * DAY, "cp-a1", a),
        complaint_event("complaint.followed_up", t + 6 * DAY, "cp-a1", a, outcome="unsatisfied"),
        complaint_event("complaint.closed", t + 6 * DAY + HOUR, "cp-a1", a),
        # gold -> silver proposed, approved; silver -> standard proposed, rejected, proposed again
        billing(t + 10 * DAY, "2024-11", "200", a, city="shanghai"),
        decision(t + 12 * DAY, "approved", customer_id=a),
        plan_changed(t + 20 * DAY, "downgrade", a),
        filed(t + 25 * DAY, "cp-a2", a, category="billing", severity="normal"),
        # acknowledged within the 2 h, but the event arrives 12 h later: by then the others'
        # events moved the partition clock past the deadline, so it was breached (level 1)
        (t + 25 * DAY + 12 * HOUR, complaint_event("complaint.acknowledged",
                                                    t + 25 * DAY + 110 * MINUTE, "cp-a2", a)),
        billing(t + 40 * DAY, "2024-12", "20", a, city="shanghai"),
        billing(t + 41 * DAY, "2025-01", "10", a, city="shanghai"),
        decision(t + 45 * DAY, "rejected", customer_id=a),
        billing(t + 50 * DAY, "2025-02", "15", a, city="shanghai"),
        contact(t + 70 * DAY, a, transfers=4),
        contact(t + 85 * DAY, a),
        # standard again, then diamond: the pending downgrade is superseded
        billing(t + 95 * DAY, "2025-03", "9000", a, city="shanghai"),
        survey(t + 96 * DAY, a, nps=10),
        # b: diamond at once; a complex complaint escalated by hand, reopened, breached
        first_b_bill,
        filed(t + 2 * DAY + HOUR, "cp-b1", b, category="network", severity="complex"),
        complaint_event("complaint.acknowledged", t + 2 * DAY + 2 * HOUR, "cp-b1", b),
        complaint_event("complaint.escalated", t + 3 * DAY, "cp-b1", b, level=2),
        complaint_event("complaint.resolved", t + 4 * DAY, "cp-b1", b),
        complaint_event("complaint.feedback_delivered", t + 4 * DAY + 10 * HOUR, "cp-b1", b),
        complaint_event("complaint.reopened", t + 5 * DAY, "cp-b1", b),
        complaint_event("complaint.resolved", t + 8 * DAY, "cp-b1", b),
        contact(t + 9 * DAY, b, transfers=3, city="beijing"),
        survey(t + 9 * DAY + HOUR, b, nps=5, city="beijing"),
        billing(t + 12 * DAY, "2024-11", "2000", b, city="beijing"),
        # basis 2166.67 < 2700: diamond -> gold awaits approval; approved by its proposal id
        drop_b,
        decision(t + 16 * DAY, "approved",
                 derived_id("tier.proposal", RULES.version, b, drop_b["event_id"]), b),
        filed(t + 18 * DAY, "cp-b2", b, category="product", severity="urgent"),
        complaint_event("complaint.closed", t + 18 * DAY + 2 * MINUTE, "cp-b2", b),
        port_out(t + 30 * DAY, b),
        filed(t + 31 * DAY, "cp-b3", b, category="other", severity="normal"),
        (t + 31 * DAY + 12 * HOUR,  # late too
         complaint_event("complaint.acknowledged", t + 31 * DAY + HOUR, "cp-b3", b)),
        contact(t + 75 * DAY, b, city="beijing"),
    ]
    rng = random.Random(17)
    background = []
    at = T0
    while at < t + 100 * DAY:
        at += rng.randint(1 * HOUR, 5 * HOUR)
        maker = contact if rng.random() < 0.8 else survey
        background.append((at, maker(at - (rng.randint(0, 2 * HOUR) if rng.random() < 0.2
                                           else 0), rng.choice(others))))
    # each customer's events in order on the partition; the others' interleaved by time
    timed = [item if isinstance(item, tuple) else (item["occurred_at"], item) for item in script]
    timed += background
    timed.sort(key=lambda pair: pair[0])
    return [e for _, e in timed]


@pytest.fixture(scope="module")
def store(clickhouse):
    """A partition of the session store holding the scripted customers and their neighbours."""
    tag = uuid.uuid4().hex[:6]
    partition = random.Random(tag).randrange(20_000, 60_000)
    a, b = f"{tag}-a", f"{tag}-b"
    write_partition(clickhouse, partition,
                    scripted_partition(a, b, [f"{tag}-x{i}" for i in range(4)]))
    return clickhouse, partition, a, b, read_partition(clickhouse, partition)


def test_the_script_changes_tier_and_churn_risk_several_times(store):
    _, _, a, b, events = store
    fold, derived = brute_force(events)
    for customer, tier_changes, churn_changes in ((a, 3, 4), (b, 2, 5)):
        kinds = [d["event_type"] for d in derived if d["customer_id"] == customer]
        assert kinds.count("tier.changed") >= tier_changes, (customer, kinds)
        assert kinds.count("churn.risk_changed") >= churn_changes, (customer, kinds)
        assert kinds.count(SLA_BREACHED) >= 3, (customer, kinds)
    proposals = [d for d in derived if d["customer_id"] == a
                 and d["event_type"] == "tier.change_proposed" and d["requires_approval"]]
    assert len(proposals) >= 3


@pytest.mark.parametrize("who", ["a", "b"])
def test_the_report_at_many_times_equals_a_replay_of_the_ledger_cut_there(store, who):
    client, partition, a, b, events = store
    customer = {"a": a, "b": b}[who]
    full = brute_force(events)
    times = interesting_times(events, full[1], {customer})
    picked = sorted(random.Random(who).sample(times, 30)) + [times[0], times[-1]]
    seen = set()
    for at in picked + [None]:
        report = customer_report(client, RULES, customer, as_of=at)
        assert report["method"] == "customer" and report["partition"] == partition
        reference = brute_force(events, at)
        assert_report_matches(report, reference, events, customer, at)
        seen.add((report["tier"], report["churn_risk"]["level"],
                  report["pending_downgrade"] is not None, len(report["open_complaints"])))
    assert len(seen) >= 6, seen  # the cuts saw the customer in many different states


def test_a_pending_downgrade_and_open_complaint_deadlines_at_a_time_between(store):
    client, _, a, _, events = store
    at = T0 + 10 * HOUR + 25 * DAY + HOUR  # cp-a2 filed an hour ago
    report = customer_report(client, RULES, a, as_of=at)
    assert report["tier"] == "silver" and report["pending_downgrade"] is None
    [complaint] = report["open_complaints"]
    assert complaint["complaint_id"] == "cp-a2" and complaint["level"] == 0
    assert [(d["sla"], d["deadline"]) for d in complaint["pending_deadlines"]] == [
        ("first_response", iso_millis(T0 + 10 * HOUR + 25 * DAY + 2 * HOUR)),
        ("resolution", iso_millis(T0 + 10 * HOUR + 26 * DAY))]
    at = T0 + 10 * HOUR + 42 * DAY
    report = customer_report(client, RULES, a, as_of=at)
    assert report["pending_downgrade"]["from_tier"] == "silver"
    assert report["pending_downgrade"]["to_tier"] == "standard"
    text = render_table(report)
    assert f"customer {a} as of" in text
    assert "downgrade silver -> standard awaiting approval" in text
    assert "cp-a2" in text and "complaint cp-a2 breached resolution, escalated to level 2" in text


def test_without_as_of_the_report_stands_at_the_partition_clock(store):
    client, _, a, _, events = store
    report = customer_report(client, RULES, a)
    fold, _ = brute_force(events)
    assert report["as_of"] == iso_millis(max(e["occurred_at"] for e in events))
    assert report["as_of"] == iso_millis(fold.clock) and report["as_of_source"] == "partition_clock"
    assert (report["tier"], report["pending_downgrade"]) == ("diamond", None)
    json.dumps(report)


def test_as_of_before_the_first_event_gives_the_empty_state(store):
    client, _, _, b, events = store
    first = min(e["occurred_at"] for e in events if e["customer_id"] == b)
    report = customer_report(client, RULES, b, as_of=first - 1)
    assert (report["events"], report["timeline"], report["tier"], report["open_complaints"]) == (
        0, [], "standard", [])
    assert report["first_event_at"] == iso_millis(first)
    assert f"the first is at {iso_millis(first)}" in report["notes"][0]


def test_an_unknown_customer_is_a_clear_error(clickhouse):
    with pytest.raises(CustomerNotFound) as caught:
        customer_report(clickhouse, RULES, "c-nobody-" + uuid.uuid4().hex[:6])
    assert "c-nobody-" in str(caught.value) and "chdb://" in str(caught.value)
    with pytest.raises(CustomerNotFound, match="in the ledger of /srv/cx"):
        customer_report(clickhouse, RULES, "c-nobody", store="/srv/cx")


def test_a_repeated_event_id_makes_the_report_fold_the_whole_partition(clickhouse):
    """A row reusing another row's event id at another time survives FINAL; the fold skips it
    before moving its clock, so the window query's clock would be wrong: the report folds the
    whole partition instead and stays exact."""
    tag = uuid.uuid4().hex[:6]
    partition = random.Random(tag).randrange(20_000, 60_000) + 1
    a, r = f"{tag}-a", f"{tag}-r"
    first = contact(T0 + 9 * HOUR, r)
    write_partition(clickhouse, partition, [
        filed(T0 + 9 * HOUR + 2 * MINUTE - 1, "cp-1", a, severity="urgent"),
        first, {**first, "occurred_at": T0 + 12 * HOUR},
        complaint_event("complaint.acknowledged", T0 + 9 * HOUR + 6 * MINUTE, "cp-1", a),
        contact(T0 + 13 * HOUR, a),
    ])
    events = read_partition(clickhouse, partition)
    report = customer_report(clickhouse, RULES, a)
    assert report["method"] == "partition"
    assert_report_matches(report, brute_force(events), events, a)
    assert not [e for e in report["timeline"] if e["event_type"] == SLA_BREACHED]
    # what the clock trick alone would have said: a breach that never happened
    rows = customer_ledger(clickhouse, a, partition, None)
    trick = fold_customer_ledger(a, rows, RULES, partition=partition,
                                 partition_clock=T0 + 13 * HOUR)
    wrong = build_report(a, [trick], RULES, as_of_ms=None)
    assert [e["event_type"] for e in wrong["timeline"]].count(SLA_BREACHED) == 1
    at = T0 + 10 * HOUR  # the cut leaves the repeated row out: the trick is exact again
    report = customer_report(clickhouse, RULES, a, as_of=at)
    assert report["method"] == "customer"
    assert_report_matches(report, brute_force(events, at), events, a, at)


def test_a_customer_on_two_partitions_is_folded_per_partition(clickhouse):
    tag = uuid.uuid4().hex[:6]
    p1 = random.Random(tag).randrange(20_000, 60_000) + 2
    p2 = p1 + 1
    c = f"{tag}-c"
    before = write_partition(clickhouse, p1, [
        billing(T0, "2024-10", "3500", c), port_out(T0 + HOUR, c)])
    after = write_partition(clickhouse, p2, [
        contact(T0 + DAY, c), billing(T0 + 2 * DAY, "2024-11", "400", c)])
    report = customer_report(clickhouse, RULES, c)
    assert report["partitions"] == [p1, p2] and report["partition"] == p2
    assert "partitions" in report["notes"][0] and f"partition {p2}'s" in report["notes"][0]
    assert report["tier"] == "silver"  # what p2's fold knows: one period of 400
    assert report["events"] == 4
    assert [e["partition"] for e in report["timeline"] if e["source"] == "ledger"] == \
        [p1, p1, p2, p2]
    # each partition folded on its own: the derived events of both, the state of p2's fold
    p1_fold, p1_derived = brute_force(before, partition=p1)
    p2_fold, p2_derived = brute_force(after, partition=p2)
    assert sorted(e["event_id"] for e in report["timeline"] if e["source"] == "derived") == \
        sorted(d["event_id"] for d in p1_derived + p2_derived)
    assert report["churn_risk"]["level"] == p2_fold.customers[c]["churn"]["level"] == "low"
    assert p1_fold.customers[c]["churn"]["level"] == "medium"
    early = customer_report(clickhouse, RULES, c, as_of=T0 + 2 * HOUR)
    assert early["partition"] == p1 and early["tier"] == "diamond"
    assert early["churn_risk"]["level"] == "medium"
