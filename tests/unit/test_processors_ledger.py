"""PartitionFold: the order of the rules, state persistence, and the fold's properties.

Properties (hypothesis): the fold is deterministic (same events -> same derived events, ids
included); splitting the events into batches with window/complaint drains in between changes
neither the other derived events nor the final window partials and complaint states;
checkpointing the dirty
customers and the partition snapshot, then restoring into a new fold, continues exactly as
the uninterrupted fold.
"""

import copy
import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.folded_ids import FoldedIds, id_key
from processors.ledger import PartitionFold, live_clock_target
from processors.rules import load_rules
from processors.windows import PARTIAL_FIELDS
from tests.unit.processors_factories import (T0, billing, complaint_event, contact, event_stream,
                                             filed, port_out, record, rules_with, survey)

RULES = load_rules()
MIN = 60_000
HOUR = 60 * MIN

streams = st.builds(
    lambda seed, n, gap, customers, skew: event_stream(seed, n, customers=customers,
                                                       mean_gap_ms=gap, skew_ms=skew),
    seed=st.integers(0, 2**32 - 1),
    n=st.one_of(st.integers(1, 30), st.integers(60, 240)),
    gap=st.sampled_from([5_000, 60_000, 15 * MIN, 2 * HOUR]),
    customers=st.sampled_from([3, 12, 40]),
    skew=st.sampled_from([0, 0, 10 * MIN, 3 * HOUR]),
)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_all(events, rules=RULES, partition=3):
    fold = PartitionFold(rules, partition)
    out = []
    for e in events:
        out += fold.apply(e)
    return fold, out


def remembered(fold, event):
    """True when the fold remembers ``event``'s id as folded."""
    return id_key(event["event_id"]) in fold.folded


def final_partials(window_events):
    last = {}
    for e in window_events:
        key = (e["window"], e["window_start"], e["city"], e["channel"], e["tier"])
        if key not in last or e["version"] > last[key]["version"]:
            last[key] = e
    return last


# -- order of the rules --------------------------------------------------------------------------

def test_breaches_fire_before_the_event_that_moves_the_clock():
    fold, _ = run_all([filed(T0, "q1", "c-1", severity="urgent")])
    out = fold.apply(survey(T0 + 10 * MIN, "c-2"))
    assert [e["event_type"] for e in out] == ["complaint.sla_breached", "satisfaction.scored"]


def test_derived_order_within_one_event_tiers_then_scores_then_churn():
    fold, _ = run_all([port_out(T0, "c-1")])
    out = fold.apply(billing(T0 + 1, "2025-01", "3100.00", "c-1"))
    # diamond x 45 = 58.5 stays medium; a detractor then pushes (45 + 10) * 1.3 = 71.5: high
    assert [e["event_type"] for e in out] == ["tier.change_proposed", "tier.changed"]
    out = fold.apply(survey(T0 + 2, "c-1", nps=2))
    assert [e["event_type"] for e in out] == ["satisfaction.scored", "churn.risk_changed"]
    assert out[0]["tier"] == "diamond" and out[1]["tier"] == "diamond"


def test_clock_is_the_highest_occurred_at_and_late_events_do_not_move_it():
    fold, _ = run_all([contact(T0 + HOUR, "c-1"), contact(T0, "c-2")])
    assert fold.clock == T0 + HOUR


def test_unknown_and_derived_event_types_are_counted_not_applied():
    fold, out = run_all([record("contact.teleported", T0), record("churn.risk_changed", T0)])
    assert out == [] and dict(fold.ignored) == {"contact.teleported": 1, "churn.risk_changed": 1}


def test_advance_clock_fires_deadlines_and_only_moves_forward():
    fold, _ = run_all([filed(T0, "q1", "c-1", severity="urgent")])
    assert fold.advance_clock(T0 - HOUR) == [] and fold.clock == T0
    assert [e["sla"] for e in fold.advance_clock(T0 + HOUR)] == ["first_response"]


def test_live_clock_target():
    wall = T0 + 10 * HOUR
    assert live_clock_target(wall - 30 * MIN, wall, RULES) == wall - 5 * MIN
    assert live_clock_target(wall - 2 * MIN, wall, RULES) is None        # already within lateness
    assert live_clock_target(wall - 2 * HOUR, wall, RULES) is None       # too far behind: backfill


def test_dirty_customers_are_those_whose_state_changed():
    plain = contact(T0, "c-plain")
    fold, _ = run_all([plain, survey(T0, "c-happy", nps=10),
                       contact(T0, "c-bounced", transfers=3), filed(T0, "q1", "c-complainer")])
    # a plain contact and a happy survey leave the customer nothing to keep; the partition
    # remembers their ids (duplicate detection) all the same
    assert fold.dirty_customers() == {"c-bounced", "c-complainer"}
    assert "c-plain" not in fold.customers and remembered(fold, plain)
    fold.clear_dirty()
    assert fold.dirty_customers() == set()
    fold.advance_clock(T0 + 3 * HOUR)          # first response breached: state changed
    assert fold.dirty_customers() == {"c-complainer"}


def test_customer_state_is_plain_json_data_and_round_trips():
    events = [filed(T0, "q1", "c-1", severity="urgent"), billing(T0, "2025-01", "1234.56", "c-1"),
              port_out(T0 + 1, "c-1"), complaint_event("complaint.acknowledged", T0 + 2, "q1")]
    fold, _ = run_all(events)
    state = fold.customer_state("c-1")
    assert json.loads(json.dumps(state)) == state
    assert state["tier"]["periods"] == {"2025-01": "1234.56"}
    other = PartitionFold(RULES, 3)
    other.load_customer("c-1", json.loads(json.dumps(state)))
    assert other.customer_state("c-1") == state
    # the restored deadline heap fires the same breach
    assert other.advance_clock(T0 + 5 * HOUR) == fold.advance_clock(T0 + 5 * HOUR)


def test_a_rules_version_changes_every_derived_id():
    events = [filed(T0, "q1", "c-1", severity="urgent"), survey(T0, "c-1"),
              billing(T0, "2025-01", "1500.00", "c-1"), port_out(T0, "c-1"),
              contact(T0 + HOUR, "c-1")]
    _, a = run_all(events)
    _, b = run_all(events, rules=rules_with(version="2025.04-1"))
    assert [e["event_type"] for e in a] == [e["event_type"] for e in b]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}
    assert {e["rules_version"] for e in b} == {"2025.04-1"}


# -- properties -----------------------------------------------------------------------------------

@SETTINGS
@given(events=streams)
def test_the_fold_is_deterministic(events):
    fold_a, a = run_all(copy.deepcopy(events))
    fold_b, b = run_all(copy.deepcopy(events))
    a += fold_a.drain_windows() + fold_a.drain_complaints()
    b += fold_b.drain_windows() + fold_b.drain_complaints()
    assert a == b
    ids = [e["event_id"] for e in a]
    assert len(ids) == len(set(ids))
    assert {e["event_type"] for e in a} <= {
        "satisfaction.scored", "complaint.sla_breached", "churn.risk_changed",
        "tier.change_proposed", "tier.changed", "satisfaction.window_updated",
        "complaint.state_changed"}


@SETTINGS
@given(events=streams, cuts=st.lists(st.integers(0, 240), max_size=12))
def test_batches_with_drains_in_between_give_the_same_results(events, cuts):
    whole = PartitionFold(RULES, 3)
    whole_derived = []
    for e in events:
        whole_derived += whole.apply(e)
    whole_windows = whole.drain_windows()
    whole_states = whole.drain_complaints()

    split = PartitionFold(RULES, 3)
    split_derived, split_windows, split_states = [], [], []
    bounds = sorted({c for c in cuts if c < len(events)} | {0, len(events)})
    for lo, hi in zip(bounds, bounds[1:]):
        for e in events[lo:hi]:
            split_derived += split.apply(e)
        split_windows += split.drain_windows()
        split_states += split.drain_complaints()
    split_windows += split.drain_windows()
    split_states += split.drain_complaints()

    assert split_derived == whole_derived
    final = final_partials(split_windows)
    assert final == final_partials(whole_windows)
    for e in final.values():
        assert set(PARTIAL_FIELDS) <= set(e)
    latest = {}
    for e in split_states:
        latest[e["complaint_id"]] = e  # drains are in order: the last one is current
    assert latest == {e["complaint_id"]: e for e in whole_states}


@SETTINGS
@given(events=streams, data=st.data())
def test_restoring_a_checkpoint_continues_exactly(events, data):
    """Checkpoint = drain windows and complaints, persist the dirty customers and the partition snapshot (as
    JSON), clear dirty. A restart restores the last checkpoint and replays the events after
    it: the derived events from there on are the uninterrupted fold's."""
    points = sorted(set(data.draw(st.lists(st.integers(0, len(events)), min_size=1,
                                           max_size=6), label="checkpoints")))
    fold = PartitionFold(RULES, 3)
    store: dict[str, str] = {}
    snapshot = saved_at = None
    tail: list = []
    for i in range(len(events) + 1):
        if i in points:
            fold.drain_windows()
            fold.drain_complaints()
            for c in fold.dirty_customers():  # a customer the fold forgot leaves the store
                plain = fold.customer_state(c)
                if plain is None:
                    store.pop(c, None)
                else:
                    store[c] = json.dumps(plain)
            fold.clear_dirty()
            snapshot, saved_at, tail = json.dumps(fold.snapshot_partition()), i, []
        if i < len(events):
            tail += fold.apply(events[i])
    tail += fold.drain_windows() + fold.drain_complaints()

    restored = PartitionFold(RULES, 3)
    restored.restore_partition(json.loads(snapshot))
    for cid, plain in store.items():
        restored.load_customer(cid, json.loads(plain))
    replay = []
    for e in events[saved_at:]:
        replay += restored.apply(e)
    replay += restored.drain_windows() + restored.drain_complaints()
    assert replay == tail
    assert {c: restored.customer_state(c) for c in restored.customers} == {
        c: fold.customer_state(c) for c in fold.customers}


# -- complaint state for ops -----------------------------------------------------------------------

def test_drain_complaints_reports_the_current_state_of_changed_complaints():
    fold, _ = run_all([filed(T0, "q1", "c-1", severity="urgent", category="logistics",
                             city="urumqi", channel="app"),
                       filed(T0, "q2", "c-2")])
    first = fold.drain_complaints()
    assert [(s["complaint_id"], s["status"], s["version"]) for s in first] == [
        ("q1", "filed", 1), ("q2", "filed", 1)]
    q1 = first[0]
    assert (q1["next_sla"], q1["next_deadline"], q1["city"], q1["channel"], q1["category"],
            q1["severity"], q1["correlation_id"], q1["occurred_at"]) == (
        "first_response", T0 + 5 * MIN, "urumqi", "app", "logistics", "urgent", "q1", T0)
    assert fold.drain_complaints() == []
    fold.advance_clock(T0 + 10 * MIN)                       # a breach changes the state too
    [q1] = fold.drain_complaints()
    assert (q1["version"], q1["level"], q1["breaches"], q1["next_sla"], q1["occurred_at"]) == (
        2, 1, ["first_response"], "resolution", T0 + 5 * MIN)
    fold.apply(complaint_event("complaint.resolved", T0 + HOUR, "q1", "c-1"))
    fold.apply(complaint_event("complaint.reopened", T0 + 2 * HOUR, "q1", "c-1"))
    [q1] = fold.drain_complaints()
    # the reopen at +2 h first fired the logistics feedback deadline (resolved + 15 min)
    assert (q1["status"], q1["reopened_count"], q1["version"], q1["resolved_at"],
            q1["breaches"]) == ("reopened", 1, 5, None, ["first_response", "feedback"])


def test_an_unknown_complaint_is_reported_with_placeholders_and_its_anomaly():
    fold, _ = run_all([complaint_event("complaint.closed", T0, "ghost", "c-1")])
    [ghost] = fold.drain_complaints()
    assert (ghost["status"], ghost["category"], ghost["severity"], ghost["filed_at"]) == (
        "closed", "other", "normal", None)
    assert ghost["anomalies"] == ["unknown complaint: complaint.closed before complaint.filed"]


def test_every_derived_event_fits_its_avro_schema():
    from schemas.codec import WireCodec

    codec = WireCodec()
    fold = PartitionFold(RULES, 5)
    derived = []
    for e in event_stream(11, 3000, customers=60, mean_gap_ms=5 * MIN, skew_ms=10 * MIN):
        derived += fold.apply(e)
    derived += fold.advance_clock(fold.clock + 400 * HOUR)
    derived += fold.drain_windows() + fold.drain_complaints()
    types = {e["event_type"] for e in derived}
    assert types == {"satisfaction.scored", "complaint.sla_breached", "churn.risk_changed",
                     "tier.change_proposed", "tier.changed", "satisfaction.window_updated",
                     "complaint.state_changed"}
    for e in derived:
        decoded, _ = codec.decode(codec.encode(e))
        assert decoded == e, e["event_type"]


def _lifecycle(complaint_id: str, at: int) -> list[dict]:
    steps = ["complaint.acknowledged", "complaint.resolved", "complaint.feedback_delivered",
             "complaint.followed_up", "complaint.closed"]
    return [filed(at, complaint_id, "c-1")] + [
        complaint_event(step, at + (i + 1) * MIN, complaint_id, "c-1")
        for i, step in enumerate(steps)]


def test_a_complaint_pruned_before_any_drain_is_still_reported_once():
    """A closed complaint is forgotten 30 days later, on the customer's next close. Whether a
    drain ran in between (live: every batch) or not (replay: one big page), its final state
    is reported exactly once."""
    day = 24 * HOUR
    events = _lifecycle("old", T0) + _lifecycle("new", T0 + 40 * day)

    one_page = PartitionFold(RULES)
    for event in events:
        one_page.apply(event)
    drained_once = {s["complaint_id"]: s for s in one_page.drain_complaints()}

    per_event = PartitionFold(RULES)
    drained: dict[str, dict] = {}
    for event in events:
        per_event.apply(event)
        for state in per_event.drain_complaints():
            drained[state["complaint_id"]] = state

    assert set(drained_once) == {"old", "new"}
    assert drained_once == drained
    assert drained_once["old"]["status"] == "closed"
    assert "old" not in one_page.customer_state("c-1")["complaints"]
    assert one_page.drain_complaints() == []


def test_a_redelivered_event_is_not_folded_twice():
    """A producer retry reuses the event_id: windows, churn and complaints see it once,
    also after the customer's state went through a checkpoint."""
    events = [contact(T0, "c-1", transfers=3), filed(T0 + MIN, "q1", "c-1"),
              survey(T0 + 2 * MIN, "c-1")]
    once = PartitionFold(RULES)
    expected = once.apply_all(events)
    twice = PartitionFold(RULES)
    got = twice.apply_all(events[:2])
    restored = PartitionFold(RULES)
    restored.load_customer("c-1", json.loads(json.dumps(twice.customer_state("c-1"))))
    restored.restore_partition(json.loads(json.dumps(twice.snapshot_partition())))
    restored.folded = FoldedIds.from_chunks(dict(twice.folded.take_changes()[0]))
    got += restored.apply_all([events[0], events[1], events[2], events[2]])
    assert got == expected
    assert restored.duplicates == 3
    assert restored.drain_complaints()[0]["version"] == 1


def test_an_event_published_again_months_later_is_not_folded_twice():
    """A file published again brings back events long past in event time, after the customer
    had many more: the ledger keeps the first version, so the fold must skip them all."""
    events = ([filed(T0, "q1", "c-1"), contact(T0 + MIN, "c-1", transfers=3)]
              + [contact(T0 + d * 24 * HOUR, "c-1") for d in range(1, 40)]
              + [survey(T0 + 41 * 24 * HOUR, "c-1", nps=2)])
    once = PartitionFold(RULES)
    expected = once.apply_all(events)
    again = PartitionFold(RULES)
    got = again.apply_all(events)
    got += again.apply_all(events)
    assert got == expected
    assert again.duplicates == len(events)
    assert again.drain_windows() == once.drain_windows()


def test_only_customer_events_are_remembered():
    """Operational events have no customer and change nothing but the clock."""
    fold = PartitionFold(RULES)
    fold.apply(contact(T0, "c-1"))
    fold.apply({"event_type": "incident.detected", "event_id": str(uuid.uuid4()),
                "occurred_at": T0 + MIN, "customer_id": None})
    assert len(fold.folded) == 1


# -- bounded state -------------------------------------------------------------------------------

def test_a_customer_with_nothing_the_rules_can_use_holds_no_state():
    fold = PartitionFold(RULES, 3)
    once = contact(T0, "c-once")
    fold.apply(once)
    fold.apply(billing(T0, "2025-01", "800.00", customer_id="c-billed"))
    assert "c-once" not in fold.customers and fold.customer_state("c-once") is None
    assert remembered(fold, once)                       # its id is, for duplicates
    fold.apply(contact(T0 + 2 * 24 * HOUR, "c-later"))  # the clock enters a new day, 2 days on
    assert fold.customers["c-billed"]["tier"]["periods"]  # the tier basis stays


def test_expired_churn_signals_are_forgotten_and_the_level_is_unchanged():
    fold = PartitionFold(RULES, 3)
    fold.apply(port_out(T0))
    churn_state = fold.customers["c-000042"]["churn"]
    assert "port_out" in churn_state["last"]
    fold.apply(contact(T0 + 31 * 24 * HOUR, "c-other"))  # port_out's 30 days are over
    assert "port_out" not in fold.customers["c-000042"]["churn"]["last"]
