"""The ops views on the real engine: partitions summed, thresholds from the rules."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.integration

COLUMNS = ["window", "window_start", "city", "channel", "tier", "source_partition", "version",
           "surveys", "composite_sum", "composite_count", "first_response_buckets",
           "rules_version"]
DAY_MS = 1_741_017_600_000  # 2025-03-04 00:00 Asia/Shanghai


def partial(city, partition, surveys, mean, version=1):
    return ["1d", DAY_MS, city, "app", "gold", partition, version, surveys, surveys * mean,
            surveys, [0] * 11, "test"]


def test_alert_needs_a_low_composite_on_enough_responses(clickhouse):
    low_few, low_many, fine = (f"x{uuid.uuid4().hex[:6]}" for _ in range(3))
    clickhouse.insert("satisfaction_window_partials", [
        partial(low_few, 0, 5, 70.0),                      # 5 responses: not enough to alert
        partial(low_many, 0, 12, 72.0), partial(low_many, 1, 13, 74.0),  # 25 over 2 partitions
        partial(low_many, 1, 1, 99.0, version=0),          # an older version: superseded
        partial(fine, 0, 40, 85.0),
    ], column_names=COLUMNS)
    rows = clickhouse.query(
        "SELECT city, composite, surveys, threshold FROM satisfaction_alerts "
        "WHERE city IN {cities:Array(String)}",
        parameters={"cities": [low_few, low_many, fine]}).result_rows
    assert rows == [(low_many, round((12 * 72 + 13 * 74) / 25, 2), 25, 80.0)]
