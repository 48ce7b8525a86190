"""Window partials per partition: 1m and 1d tumbling windows, drains, lateness, p90."""

import math
import uuid
from datetime import datetime, timezone

import pytest

from processors.derived import NAMESPACE
from processors.ledger import PartitionFold
from processors.rules import load_rules
from processors.windows import (DayStarts, PARTIAL_FIELDS, WindowAggregator, merge_partials,
                                p90, quantile_from_buckets, window_metrics)
from tests.unit.processors_factories import T0, billing, contact, filed, rules_with, survey

RULES = load_rules()
BOUNDS = RULES.windows.first_response_bounds
MIN = 60_000
HOUR = 60 * MIN


def utc(text):
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def by_key(events):
    return {(e["window"], e["window_start"], e["city"], e["channel"], e["tier"]): e
            for e in events}


def test_day_windows_start_at_midnight_in_the_business_time_zone():
    days = DayStarts("Asia/Shanghai")
    # 2025-03-03 00:00 +08:00 is 2025-03-02 16:00 UTC
    assert T0 == utc("2025-03-02T16:00:00")
    assert days.bounds(utc("2025-03-03T15:59:59.999")) == (T0, T0 + 24 * HOUR)
    assert days.bounds(utc("2025-03-03T16:00:00")) == (T0 + 24 * HOUR, T0 + 48 * HOUR)
    assert days.bounds(utc("2025-03-02T16:00:00")) == (T0, T0 + 24 * HOUR)
    assert days.bounds(utc("2025-03-02T15:59:59.999"))[0] == T0 - 24 * HOUR


def test_a_day_with_a_dst_change_is_23_hours_long():
    days = DayStarts("Europe/Berlin")
    start, end = days.bounds(utc("2025-03-30T12:00:00"))
    assert (start, end - start) == (utc("2025-03-29T23:00:00"), 23 * HOUR)


def test_contacts_fold_into_minute_and_day_partials():
    fold = PartitionFold(RULES, partition=4)
    at = T0 + 10 * HOUR + 30_000   # 10:00:30 local
    fold.apply(contact(at, "c-1", city="urumqi", channel="phone", handler="ai",
                       resolved_first_contact=True, transfers=0, first_response_seconds=5))
    fold.apply(contact(at + 1000, "c-2", city="urumqi", channel="phone", handler="agent",
                       resolved_first_contact=False, transfers=2, first_response_seconds=6))
    fold.apply(contact(at + 2000, "c-3", city="urumqi", channel="phone", handler="ai",
                       resolved_first_contact=True, transfers=1, first_response_seconds=7201))
    fold.apply(filed(at + 3000, "q1", "c-3", city="urumqi", channel="phone"))
    out = by_key(fold.drain_windows())
    minute = out[("1m", T0 + 10 * HOUR, "urumqi", "phone", "standard")]
    day = out[("1d", T0, "urumqi", "phone", "standard")]
    for row in (minute, day):
        assert row["version"] == 4
        assert (row["contacts"], row["fcr_contacts"], row["ai_contacts"], row["transfers_sum"],
                row["complaints"]) == (3, 2, 2, 3, 1)
        assert (row["first_response_count"], row["first_response_sum"]) == (3, 5 + 6 + 7201)
        # bounds are inclusive upper edges: 5 -> (0,5], 6 -> (5,10], 7201 -> +inf
        assert row["first_response_buckets"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        assert row["surveys"] == 0 and row["composite_count"] == 0
    assert len(out) == 2


def test_surveys_fold_their_scores():
    fold = PartitionFold(RULES, partition=0)
    fold.apply(survey(T0, "c-1", city="beijing", channel="app", nps=10))  # composite 86.97
    fold.apply(survey(T0 + 1, "c-2", city="beijing", channel="app", response_speed=None,
                      resolution_efficiency=None, attitude=None, follow_up=None, nps=None))
    fold.apply(survey(T0 + 2, "c-3", city="beijing", channel="app", response_speed=50.0,
                      resolution_efficiency=None, attitude=None, follow_up=None, nps=3))
    day = by_key(fold.drain_windows())[("1d", T0, "beijing", "app", "standard")]
    assert day["surveys"] == 3
    assert (day["composite_sum"], day["composite_count"]) == (86.97 + 50.0, 2)
    assert (day["response_speed_sum"], day["response_speed_count"]) == (89.2 + 50.0, 2)
    assert (day["resolution_efficiency_sum"], day["resolution_efficiency_count"]) == (85.7, 1)
    assert (day["attitude_sum"], day["follow_up_sum"]) == (90.5, 82.4)
    assert (day["nps_responses"], day["promoters"], day["detractors"]) == (2, 1, 1)


def test_the_tier_of_the_key_is_the_customers_tier_at_the_event():
    fold = PartitionFold(RULES, partition=0)
    fold.apply(contact(T0, "c-1"))
    fold.apply(billing(T0 + 1, "2025-01", "1200.00", "c-1"))
    fold.apply(contact(T0 + 2, "c-1"))
    keys = {(k[0], k[4]) for k in by_key(fold.drain_windows())}
    assert keys == {("1m", "standard"), ("1d", "standard"), ("1m", "gold"), ("1d", "gold")}


def test_drain_emits_touched_windows_once_with_their_full_partial():
    fold = PartitionFold(RULES, partition=2)
    c1 = contact(T0 + 5, "c-1", city="hohhot", channel="ivr")
    fold.apply(c1)
    first = fold.drain_windows()
    assert len(first) == 2 and fold.drain_windows() == []
    fold.apply(contact(T0 + 70_000, "c-2", city="hohhot", channel="ivr"))  # next minute
    second = by_key(fold.drain_windows())
    assert set(second) == {("1m", T0 + MIN, "hohhot", "ivr", "standard"),
                           ("1d", T0, "hohhot", "ivr", "standard")}
    day = second[("1d", T0, "hohhot", "ivr", "standard")]
    assert (day["version"], day["contacts"]) == (2, 2)   # cumulative, not a delta
    name = f"satisfaction.window_updated|2025.10-1|2|1d|{T0}|hohhot|ivr|standard|2"
    assert {k: day[k] for k in ("event_id", "event_type", "occurred_at", "customer_id", "channel",
                                "city", "agent_id", "correlation_id", "rules_version", "window",
                                "window_start", "source_partition", "tier")} == {
        "event_id": str(uuid.uuid5(NAMESPACE, name)), "event_type": "satisfaction.window_updated",
        "occurred_at": T0, "customer_id": "", "channel": "ivr", "city": "hohhot",
        "agent_id": None, "correlation_id": None, "rules_version": "2025.10-1", "window": "1d",
        "window_start": T0, "source_partition": 2, "tier": "standard"}
    assert set(day) - set(PARTIAL_FIELDS) == {
        "event_id", "event_type", "occurred_at", "customer_id", "channel", "city", "agent_id",
        "correlation_id", "rules_version", "window", "window_start", "source_partition", "tier"}


def test_late_events_skip_closed_windows_and_old_windows_leave_memory():
    fold = PartitionFold(RULES, partition=0)
    fold.apply(contact(T0, "c-1"))
    fold.drain_windows()
    fold.apply(contact(T0 + 2 * HOUR + MIN, "c-2"))       # 1m window of T0 closed (end + 2 h)
    fold.apply(contact(T0 + 30_000, "c-3"))                # late: only its 1d window is open
    out = by_key(fold.drain_windows())
    assert ("1m", T0, "lanzhou", "phone", "standard") not in out
    assert out[("1d", T0, "lanzhou", "phone", "standard")]["contacts"] == 3
    assert fold.windows.late_events == 1
    assert ("1m", T0, "lanzhou", "phone", "standard") not in fold.windows.rows
    fold.apply(contact(T0 + 72 * HOUR + 1, "c-4"))         # day of T0: end + 48 h passed
    fold.apply(contact(T0 + 1, "c-5"))
    assert fold.windows.late_events == 3
    fold.drain_windows()
    assert not any(k[1] == T0 for k in fold.windows.rows)


def test_snapshot_and_restore_keep_partials_and_touched():
    fold = PartitionFold(RULES, partition=1)
    fold.apply(survey(T0, "c-1"))
    fold.drain_windows()
    fold.apply(contact(T0 + 1, "c-2"))
    snap = fold.snapshot_partition()
    other = PartitionFold(RULES, partition=1)
    other.restore_partition(snap)
    assert other.clock == fold.clock
    assert other.drain_windows() == fold.drain_windows()
    fold.apply(contact(T0 + 2, "c-2"))
    other.apply(contact(T0 + 2, "c-2"))
    assert other.drain_windows() == fold.drain_windows()


def test_p90_from_buckets():
    counts = [0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0]     # ten answers in (10, 30]
    assert p90(counts, BOUNDS) == 30.0              # the bucket's upper bound
    assert quantile_from_buckets(counts, BOUNDS, 0.9, interpolate=True) == 28.0  # 10 + 20*9/10
    counts = [50, 30, 9, 6, 5, 0, 0, 0, 0, 0, 0]    # cumulative 50, 80, 89, 95: rank 90 in (30, 60]
    assert p90(counts, BOUNDS) == 60.0
    assert quantile_from_buckets(counts, BOUNDS, 0.9, interpolate=True) == 35.0
    counts = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]      # in the +inf bucket
    assert p90(counts, BOUNDS) == math.inf
    assert quantile_from_buckets(counts, BOUNDS, 0.9, interpolate=True) == 7200.0
    assert p90([0] * 11, BOUNDS) is None
    assert quantile_from_buckets([4] + [0] * 10, BOUNDS, 0.5, interpolate=True) == 2.5
    with pytest.raises(ValueError):
        p90([1, 2], BOUNDS)


def test_partials_merge_across_partitions_by_summing():
    folds = [PartitionFold(RULES, partition=p) for p in (0, 1)]
    for i, fr in enumerate((3, 8, 25, 45, 90, 200, 400, 900, 1000, 4000)):
        folds[i % 2].apply(contact(T0 + i, f"c-{i}", first_response_seconds=fr,
                                   resolved_first_contact=i < 7, handler="ai" if i < 4 else "agent",
                                   transfers=i % 3))
    folds[0].apply(filed(T0 + 20, "q1", "c-0"))
    rows = [e for f in folds for e in f.drain_windows() if e["window"] == "1d"]
    merged = merge_partials(rows)
    assert merged["contacts"] == 10 and merged["complaints"] == 1
    assert merged["first_response_buckets"] == [1, 1, 1, 1, 1, 1, 1, 2, 0, 1, 0]
    m = window_metrics(merged, BOUNDS)
    assert m["fcr_rate"] == 0.7 and m["ai_share"] == 0.4
    assert m["transfers_per_contact"] == 0.9 and m["complaint_rate"] == 0.1
    assert m["first_response_mean"] == 667.1
    assert m["first_response_p90"] == 1800.0          # rank 9 falls in (600, 1800]
    assert m["composite_mean"] is None and m["nps"] is None


def test_the_business_time_zone_is_configuration():
    fold = PartitionFold(rules_with({"windows.business_timezone": "UTC"}), partition=0)
    fold.apply(contact(utc("2025-03-03T10:00:00"), "c-1"))
    days = [e["window_start"] for e in fold.drain_windows() if e["window"] == "1d"]
    assert days == [utc("2025-03-03T00:00:00")]


def test_aggregator_alone():
    agg = WindowAggregator(RULES, source_partition=7)
    agg.clock = T0
    agg.add_contact(contact(T0, "c-1"), "silver")
    assert agg.partial(("1d", T0, "lanzhou", "phone", "silver"))["contacts"] == 1
    assert agg.partial(("1d", T0, "lanzhou", "phone", "gold")) is None
