"""Crash anywhere, lose nothing, double nothing (reliability), the short seeded form:
five SIGKILLs of processor workers (one during a rebalance) and of the whole stack while an SDK
publisher flows, against a clean run of the same events. `make reliability` runs it longer."""

from __future__ import annotations

import pytest

from producers.simulator import simulate
from tests.reliability.chaos import run_chaos

pytestmark = pytest.mark.integration


def test_kills_while_traffic_flows_lose_and_double_nothing(tmp_path):
    report = run_chaos(tmp_path, list(simulate(4000, seed=31)), seed=31, kills=5)
    assert report["kills"] >= 5, report
    assert {k["what"] for k in report["kill_log"]} >= {
        "worker", "worker during a rebalance", "stack (sinks, broker, workers, gateway)"}
    assert report["missing"] == 0 and report["duplicates"] == 0, report
    assert report["physical_duplicates"] == 0, report
    assert report["derived_equal"] == {t: True for t in report["derived_equal"]}, report
