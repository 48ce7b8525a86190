"""Component figures: codec, validation, the folds, ClickHouse inserts (no Kafka)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from producers.simulator import simulate
from schemas.codec import WireCodec
from schemas.validation import normalize_event


def _median_rate(n: int, seconds: list[float]) -> float:
    return round(n / statistics.median(seconds))


def _records(n: int) -> list[dict[str, Any]]:
    return [normalize_event(e) for e in simulate(n, seed=5)]


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def codec(quick: bool = False) -> dict:
    n, repeats = (20_000, 3) if quick else (100_000, 5)
    records = _records(n)
    wire = WireCodec()
    encoded = [wire.encode(r) for r in records]
    return {
        "events": n,
        "encode_events_per_s": _median_rate(n, _time(lambda: [wire.encode(r) for r in records], repeats)),
        "decode_events_per_s": _median_rate(n, _time(lambda: [wire.decode(b) for b in encoded], repeats)),
        "mean_bytes_per_event": round(sum(map(len, encoded)) / n, 1),
    }


def validation(quick: bool = False) -> dict:
    n, repeats = (20_000, 3) if quick else (100_000, 5)
    events = list(simulate(n, seed=5))
    return {"events": n, "normalize_events_per_s": _median_rate(
        n, _time(lambda: [normalize_event(e) for e in events], repeats))}


def folds(quick: bool = False) -> dict:
    """Speed through the pure folds: 6 partitions (customers hashed), batches of 5,000 per
    partition with window and complaint drains after each, and the worker's GC settings."""
    from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
    from processors.rules import load_rules

    n, repeats = (50_000, 3) if quick else (300_000, 5)
    records = _records(n)
    by_partition: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_partition[hash(r["customer_id"]) % 6].append(r)
    rules = load_rules()
    derived_counts = []

    tune_gc_for_folds()
    settle_heap()

    def run():
        folds_ = PartitionFolds(rules)
        derived = 0
        for p, rs in by_partition.items():
            for i in range(0, len(rs), 5_000):
                derived += len(folds_.fold_batch({p: rs[i:i + 5_000]}))
                settle_heap()
        derived_counts.append(derived)

    seconds = _time(run, repeats)
    return {"events": n, "events_per_s": _median_rate(n, seconds),
            "derived_events": derived_counts[-1], "target_events_per_s": 200_000}


def clickhouse_insert(quick: bool = False) -> dict:
    """Ledger rows into embedded ClickHouse through the sink's row mapping."""
    from sinks.clickhouse import connect, create_tables
    from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

    n, repeats = (20_000, 3) if quick else (100_000, 3)
    records = _records(n)
    rows = [ledger_row(r, 14, i % 6, i) for i, r in enumerate(records)]
    store = Path(tempfile.mkdtemp(prefix="cxbench-")) / "store"
    client = connect(f"chdb://{store}")
    create_tables(client)
    seconds = []
    for _ in range(repeats):
        client.command("TRUNCATE TABLE ledger_events")
        start = time.perf_counter()
        for i in range(0, n, 20_000):
            client.insert("ledger_events", rows[i:i + 20_000], column_names=list(LEDGER_COLUMNS))
        seconds.append(time.perf_counter() - start)
    map_seconds = _time(lambda: [ledger_row(r, 14, 0, i) for i, r in enumerate(records)], repeats)
    client.close()
    return {"rows": n, "insert_rows_per_s": _median_rate(n, seconds),
            "row_mapping_rows_per_s": _median_rate(n, map_seconds), "batch_rows": 20_000}
