"""Hall SMS satisfaction and the key improvement indicator, computed by hand (domain.md,
"Service halls, feedback, incidents and quality control"; processors.halls).

A valid reply scores mean(answered items) x 10; a hall's month value is the mean of its valid
replies' scores; target 96.0 (exactly 96.0 is on target); three consecutive months below target,
each with at least 30 valid replies, flag the hall once, at the close of the third month; the
first month back on target clears it. Months are calendar months in Asia/Shanghai.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from processors.batch import PartitionFolds
from processors.derived import derived_id
from processors.halls import HallMonths, month_value, reply_score
from processors.ledger import PartitionFold
from processors.rules import load_rules
from tests.unit.processors_factories import record

RULES = load_rules()
SH = ZoneInfo("Asia/Shanghai")
HALL = "urumqi-nanhudong"
_n = itertools.count(1)


def at(y, m, d, hh=10, mm=0) -> int:
    return int(datetime(y, m, d, hh, mm, tzinfo=SH).timestamp() * 1000)


def reply(when: int, items=(10, 10, 9, 10, 9), *, hall=HALL, valid=True, customer=None):
    """An SMS reply; ``items`` = (overall, environment, waiting, handling, staff_attitude)."""
    overall, environment, waiting, handling, attitude = items
    return record("hall.survey_responded", when, customer or f"c-{next(_n):06d}", channel="sms",
                  city="urumqi", agent_id=None, survey_id=f"hs-{next(_n)}", hall_id=hall,
                  visit_id=None, overall=overall, environment=environment, waiting=waiting,
                  handling=handling, staff_attitude=attitude, valid=valid)


def month_of_replies(y, m, n, items, **kw):
    """``n`` replies spread over the first 20 days of a month."""
    return [reply(at(y, m, 1 + i % 20, 9 + i % 8), items, **kw) for i in range(n)]


def run(events, partitions=1):
    """Fold on ``partitions`` ledger partitions (events dealt round-robin, each partition in time
    order) and through the hall-months fold; returns the flags and clears."""
    folds = PartitionFolds(RULES, ledger_partitions=partitions)
    batch = {p: [] for p in range(partitions)}
    for i, e in enumerate(sorted(events, key=lambda e: e["occurred_at"])):
        batch[i % partitions].append(e)
    derived = folds.fold_batch(batch)
    return [d for d in derived if d["event_type"].startswith("hall.key_improvement")], folds


# Items scored 10, 10, 9, 10, 9 -> 48 / 5 x 10 = 96.0 (on target: exactly 96.0 is on target).
ON = (10, 10, 9, 10, 9)
# 10, 9, 9, 9, 9 -> 46 / 5 x 10 = 92.0 (below).
BELOW = (10, 9, 9, 9, 9)


def test_a_reply_scores_the_mean_of_its_answered_items_times_ten():
    assert reply_score({"overall": 10, "environment": 10, "waiting": 9, "handling": 10,
                        "staff_attitude": 9}, 10) == 96.0
    # an unanswered item drops out: (9 + 8 + 10) / 3 x 10 = 90.0
    assert reply_score({"overall": 9, "environment": None, "waiting": 8, "handling": 10,
                        "staff_attitude": None}, 10) == 90.0
    # month value: (96 + 92 + 93.33...) / 3 = 93.78 (half-up, 2 decimals)
    assert month_value(96.0 + 92.0 + 280 / 3, 3) == 93.78


def test_below_target_in_march_april_may_flags_once_at_the_close_of_may_and_june_clears():
    events = (month_of_replies(2025, 3, 30, BELOW) + month_of_replies(2025, 4, 31, BELOW)
              + month_of_replies(2025, 5, 40, BELOW) + month_of_replies(2025, 6, 30, ON)
              + [reply(at(2025, 7, 2), ON, hall="urumqi-other")])  # the clock passes June's end
    decided, folds = run(events)
    flagged = [d for d in decided if d["event_type"] == "hall.key_improvement_flagged"]
    cleared = [d for d in decided if d["event_type"] == "hall.key_improvement_cleared"]
    end_of_may = at(2025, 6, 1, 0, 0)  # 2025-05-31T16:00Z
    assert flagged == [{
        "event_id": derived_id("hall.key_improvement_flagged", RULES.version, HALL, "2025-05"),
        "event_type": "hall.key_improvement_flagged",
        "occurred_at": end_of_may,
        "customer_id": "", "channel": "service_hall", "city": "urumqi", "agent_id": None,
        "correlation_id": None, "rules_version": RULES.version, "hall_id": HALL,
        "months": ["2025-03", "2025-04", "2025-05"], "values": [92.0, 92.0, 92.0],
        "valid_replies": [30, 31, 40], "target": 96.0,
    }]
    assert [(c["hall_id"], c["month"], c["value"], c["valid_replies"], c["occurred_at"],
             c["flagged_months"]) for c in cleared] == [
        (HALL, "2025-06", 96.0, 30, at(2025, 7, 1, 0, 0), ["2025-03", "2025-04", "2025-05"])]
    assert folds.hall_months.flagged_halls() == {}


def test_the_flag_waits_for_the_close_of_may():
    events = (month_of_replies(2025, 3, 30, BELOW) + month_of_replies(2025, 4, 30, BELOW)
              + month_of_replies(2025, 5, 30, BELOW))
    decided, folds = run(events)  # the clock is still in May: May is not closed
    assert decided == []
    late_may = reply(at(2025, 5, 31, 23, 59), BELOW, hall="urumqi-other")
    decided, folds = run(events + [late_may])
    assert decided == []
    decided, _ = run(events + [reply(at(2025, 6, 1, 0, 0), ON, hall="urumqi-other")])
    assert [d["months"] for d in decided] == [["2025-03", "2025-04", "2025-05"]]


def test_a_hall_with_only_29_valid_replies_in_one_of_those_months_is_not_flagged():
    invalid = [reply(at(2025, 4, 25), BELOW, valid=False)]  # a 30th reply, but not a valid one
    events = (month_of_replies(2025, 3, 30, BELOW) + month_of_replies(2025, 4, 29, BELOW)
              + invalid + month_of_replies(2025, 5, 30, BELOW)
              + [reply(at(2025, 6, 2), ON, hall="urumqi-other")])
    decided, _ = run(events)
    assert decided == []


def test_a_streak_flags_only_once_and_a_month_exactly_on_target_clears():
    events = []
    for month in (3, 4, 5, 6, 7):  # five months below: one flag, after May
        events += month_of_replies(2025, month, 30, BELOW)
    events += month_of_replies(2025, 8, 30, ON)  # 96.0 exactly: on target
    events += [reply(at(2025, 9, 2), ON, hall="urumqi-other")]
    decided, _ = run(events)
    assert [(d["event_type"], d.get("month") or d["months"][-1]) for d in decided] == [
        ("hall.key_improvement_flagged", "2025-05"), ("hall.key_improvement_cleared", "2025-08")]


def test_a_month_without_enough_replies_ends_a_streak():
    events = (month_of_replies(2025, 3, 30, BELOW) + month_of_replies(2025, 4, 30, BELOW)
              + month_of_replies(2025, 5, 10, BELOW)        # too few: the streak ends
              + month_of_replies(2025, 6, 30, BELOW) + month_of_replies(2025, 7, 30, BELOW)
              + [reply(at(2025, 8, 2), ON, hall="urumqi-other")])
    decided, _ = run(events)
    assert decided == []  # June and July are only two months of a new streak


def test_partitions_each_hold_part_of_the_month_and_the_fold_sums_them():
    """The replies of one hall spread over 3 partitions (they are keyed by customer): each
    partition holds 10 of the 30 valid replies of a month; only the sum qualifies."""
    events = (month_of_replies(2025, 3, 30, BELOW) + month_of_replies(2025, 4, 30, BELOW)
              + month_of_replies(2025, 5, 30, BELOW)
              + [reply(at(2025, 6, 2, 9 + p), ON, hall="urumqi-other") for p in range(3)])
    decided, folds = run(events, partitions=3)
    assert [d["months"] for d in decided] == [["2025-03", "2025-04", "2025-05"]]
    assert [d["valid_replies"] for d in decided] == [[30, 30, 30]]


def test_a_month_is_decided_only_when_every_partition_closed_it():
    fold = HallMonths(RULES, partitions=2)
    marker = lambda p, month, valid, score: {  # noqa: E731
        "event_type": "hall.survey_month_closed", "source_partition": p, "month": month,
        "hall_ids": [HALL] if valid else [], "hall_cities": ["urumqi"] if valid else [],
        "replies": [valid] if valid else [], "valid_replies": [valid] if valid else [],
        "score_sums": [score] if valid else []}
    out = []
    for month in ("2025-03", "2025-04", "2025-05"):
        out += fold.apply(marker(0, month, 15, 15 * 92.0))
    assert out == [] and fold.decided is None  # partition 1 has closed nothing yet
    out += fold.apply(marker(1, "2025-03", 15, 15 * 92.0))
    out += fold.apply(marker(1, "2025-03", 15, 15 * 92.0))  # a redelivery: ignored
    assert fold.decided == "2025-03" and fold.duplicates == 1
    out += fold.apply(marker(1, "2025-04", 15, 15 * 92.0))
    assert out == []
    out += fold.apply(marker(1, "2025-05", 15, 15 * 92.0))
    assert [d["months"] for d in out] == [["2025-03", "2025-04", "2025-05"]]


def test_any_order_of_the_markers_gives_the_same_decisions():
    """Live, the month closes of the partitions interleave in any order: same events, ids."""
    folds = PartitionFolds(RULES)
    partitions = 3
    batch = {p: [] for p in range(partitions)}
    events = []
    for month in (3, 4, 5, 6):
        items = ON if month == 6 else BELOW
        events += month_of_replies(2025, month, 45, items)
        events += month_of_replies(2025, month, 35, BELOW if month != 4 else ON, hall="h-2")
    events += [reply(at(2025, 7, 2, 9 + p), ON, hall="h-3") for p in range(partitions)]
    for i, e in enumerate(sorted(events, key=lambda e: e["occurred_at"])):
        batch[i % partitions].append(e)
    markers = [d for d in folds.fold_batch(batch) if d["event_type"] == "hall.survey_month_closed"]
    orders = [sorted(markers, key=lambda m: (m["source_partition"], m["month"])),
              sorted(markers, key=lambda m: (m["month"], -m["source_partition"]))]
    rng = random.Random(5)
    for _ in range(5):  # any interleaving that keeps each partition's months in order
        queues = {p: [m for m in orders[0] if m["source_partition"] == p] for p in range(3)}
        order = []
        while any(queues.values()):
            p = rng.choice([q for q, ms in queues.items() if ms])
            order.append(queues[p].pop(0))
        orders.append(order)
    results = []
    for order in orders:
        fold = HallMonths(RULES, partitions)
        results.append(sorted(fold.apply_all(order), key=lambda d: d["event_id"]))
    assert all(r == results[0] for r in results)
    assert [(d["event_type"], d["hall_id"]) for d in sorted(results[0], key=lambda d: d["occurred_at"])] == [
        ("hall.key_improvement_flagged", HALL), ("hall.key_improvement_cleared", HALL)]


def test_a_reply_for_a_month_the_partition_closed_is_late_and_not_folded():
    fold = PartitionFold(RULES, partition=0)
    fold.apply(reply(at(2025, 3, 10), BELOW))
    fold.apply(reply(at(2025, 4, 1, 0, 5), ON))  # closes March on this partition
    fold.apply(reply(at(2025, 3, 31, 23, 50), ON))  # stamped in March, arrives after: late
    drained = fold.drain_windows()
    closes = [d for d in drained if d["event_type"] == "hall.survey_month_closed"]
    assert [(c["month"], c["valid_replies"], c["score_sums"]) for c in closes] == [
        ("2025-03", [1], [92.0])]
    assert fold.halls.late_replies == 1


def test_partials_are_versioned_and_the_close_supersedes_them():
    fold = PartitionFold(RULES, partition=2)
    fold.apply(reply(at(2025, 3, 10), BELOW))
    fold.apply(reply(at(2025, 3, 11), (None, None, 8, None, None)))  # 8 x 10 = 80.0
    fold.apply(reply(at(2025, 3, 12), ON, valid=False))
    [partial] = [d for d in fold.drain_windows() if d["event_type"] == "hall.survey_month_updated"]
    assert (partial["version"], partial["replies"], partial["valid_replies"], partial["score_sum"],
            partial["waiting_sum"], partial["waiting_count"], partial["overall_count"],
            partial["closed"], partial["source_partition"], partial["month"]) == (
        3, 3, 2, 172.0, 17.0, 2, 1, False, 2, "2025-03")
    fold.apply(reply(at(2025, 4, 1), ON))
    drained = fold.drain_windows()
    closed = [d for d in drained if d["event_type"] == "hall.survey_month_updated" and d["closed"]]
    assert [(d["month"], d["version"]) for d in closed] == [("2025-03", 4)]


def test_hall_state_survives_a_snapshot():
    fold = PartitionFold(RULES, partition=0)
    fold.apply(reply(at(2025, 3, 10), BELOW))
    fold.drain_windows()
    again = PartitionFold(RULES, partition=0)
    again.restore_partition(fold.snapshot_partition())
    for f in (fold, again):
        f.apply(reply(at(2025, 4, 2), ON))
    assert fold.drain_windows() == again.drain_windows()
    months = HallMonths(RULES, 1)
    months.apply_all([{"event_type": "hall.survey_month_closed", "source_partition": 0,
                       "month": "2025-03", "hall_ids": [HALL], "hall_cities": ["urumqi"],
                       "replies": [31], "valid_replies": [30], "score_sums": [30 * 92.0]}])
    copy = HallMonths(RULES, 1)
    copy.restore(months.snapshot())
    assert copy.snapshot() == months.snapshot()


@pytest.mark.parametrize("partitions", [0, -1])
def test_the_hall_months_fold_needs_the_partition_count(partitions):
    with pytest.raises(ValueError):
        HallMonths(RULES, partitions)
