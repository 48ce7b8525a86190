"""The benchmark harness runs on a tiny input and emits every key (benchmarks are not tests:
no figure is checked here, only that each is measured).

    .venv/bin/pytest -q tests/integration/test_benchmark_harness.py      # about 1.5 minutes on 2 cores
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEYS = ("producer_eps", "ledger_sink_eps", "processor_eps_per_worker",
        "processor_eps_two_workers", "faust_ceiling_eps", "peer_librdkafka_eps",
        "freshness_p50_s", "freshness_p99_s", "replay_eps", "dashboard_p95_ms_max",
        "gateway_eps")
LIMITS = ("kafka_produce_eps", "kafka_consume_eps", "avro_encode_eps", "avro_decode_eps",
          "clickhouse_insert_rows_per_s")


@pytest.mark.integration
def test_a_tiny_run_emits_every_key(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "2000", "--freshness-seconds", "3",
         "--freshness-rate", "500", "--freshness-warmup", "1", "--freshness-floor-seconds", "2",
         "--dashboard-runs", "1", "--no-save"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # stdout is the document and nothing else
    assert not doc["errors"], doc["errors"]
    for key in KEYS:
        assert isinstance(doc[key], (int, float)) and doc[key] > 0, key
    for key in LIMITS:
        assert isinstance(doc["limits"][key], (int, float)) and doc["limits"][key] > 0, key
    assert doc["events"] == 2000
    assert doc["derived_per_ledger_event"] > 0
    assert doc["dashboard_slowest_panel"]
    assert all(v is not None for v in doc["ratios"].values()), doc["ratios"]
    rss = doc["peak_rss_mb"]
    assert {"benchmark", "broker", "workers_1", "workers_2", "faust_null", "peer", "gateway",
            "up_stack"} <= set(rss)
    assert len(rss["workers_2"]) == 2
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"]
    assert {"chdb", "confluent-kafka", "faust-streaming"} <= set(machine["versions"])
    assert set(doc["targets"]) >= {"producer_eps", "freshness_p99_s", "dashboard_p95_ms_max"}
    for miss in doc["missed"]:
        assert {"key", "measured", "target"} <= set(miss)
        assert miss["key"] in doc["targets"]
    assert doc["run"]["timestamp"] and doc["run"]["command"]
    assert doc["details"]["replay"]["equal_to_live"] is True
    assert doc["details"]["freshness"]["floor"]["probes"] > 0
