"""Every Grafana panel query, timed on the store that holds the benchmark's data.

The queries are expanded by the code of ``tests/integration/test_dashboards.py`` (the port of
the grafana-clickhouse-datasource plugin's expansion: ``$__conditionalAll``, template
variables, the backend macros) for its fixed dashboard time range (Oct 2024 - Mar 2025, which
holds the simulated span), in two variable selections: "all" (what a dashboard shows when
opened) and "one" (one city, channel and tier). The template-variable queries, which Grafana
runs when a dashboard loads, are timed too. Each query runs ``runs`` times, after one untimed
run, with the garbage collector off while it is timed; the figure per query is its p95 (ms,
linear interpolation), and the document reports the slowest.

They run in this process on the embedded engine (chDB), as the query endpoint of ``cxledger
up`` would run them, without the HTTP hop, on the store as the earlier phases left it. The
derived tables took their last insert in the processors phase; in the default run the phases
between take more than 5 minutes, so every month has settled into one part (migration 5) and
``FINAL`` has nothing to merge, as for every month but the current one on a live store. The
harness records the parts and partitions of each table at query time (``parts_per_table``).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any


def _expansion():
    from tests.integration import test_dashboards as td

    return td


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _clickhouse(td, item: dict) -> bool:
    """A ClickHouse panel target or variable (Prometheus ones are not the store's)."""
    if hasattr(td, "is_clickhouse"):
        return td.is_clickhouse(item)
    kind = (item.get("datasource") or {}).get("type")
    return kind in (None, "grafana-clickhouse-datasource")


def queries(client) -> list[tuple[str, str]]:
    """(name, expanded SQL) of every ClickHouse panel target and variable query, per
    selection."""
    td = _expansion()
    out: list[tuple[str, str]] = []
    for file_name, board in td.load_dashboards():
        title = board.get("title", file_name)
        for var in board.get("templating", {}).get("list", []):
            if var["type"] == "query" and _clickhouse(td, var):
                variables = board["templating"]["list"]
                values = {v["name"]: (v["query"] if v["type"] == "constant" else [td.ALL])
                          for v in variables}
                options = {v["name"]: [v["query"]] if v["type"] == "constant" else
                           [o.strip() for o in v.get("query", "").split(",") if o.strip()]
                           if v["type"] == "custom" else [] for v in variables}
                out.append((f"{title} / variable ${var['name']}",
                            td.render_sql(td.variable_sql(var), values, options, {})))
        for selection in ("all", "one"):
            values, options, all_values = td.variable_state(board, client, selection)
            for panel in td.query_panels(board):
                targets = [t for t in panel.get("targets", [])
                           if _clickhouse(td, t) and t.get("rawSql")]
                for target in targets:
                    ref = f" [{target['refId']}]" if len(targets) > 1 else ""
                    out.append((f"{title} / {panel['title']}{ref} ({selection})",
                                td.render_sql(target["rawSql"], values, options, all_values)))
    return out


def measure(client, runs: int, progress=None) -> dict[str, Any]:
    todo = queries(client)
    results: dict[str, dict[str, float]] = {}
    for i, (name, sql) in enumerate(todo, 1):
        client.query(sql)  # warm: the first run of a query reads the parts from disk
        times = []
        for _ in range(runs):
            # As timeit does, the garbage collector is off while a query is timed: a full
            # collection of this process's heap (the benchmark holds its million events) would
            # be timed with whichever query it happened to interrupt.
            gc.collect()
            gc.disable()
            try:
                started = time.perf_counter()
                client.query(sql)
                times.append((time.perf_counter() - started) * 1000)
            finally:
                gc.enable()
        results[name] = {"p95_ms": round(percentile(times, 0.95), 1),
                         "median_ms": round(statistics.median(times), 1)}
        if progress:
            progress(i, len(todo))
    slowest = max(results, key=lambda n: results[n]["p95_ms"])
    ranked = sorted(results.items(), key=lambda kv: -kv[1]["p95_ms"])
    return {
        "p95_ms_max": results[slowest]["p95_ms"],
        "slowest": slowest,
        "queries": len(results),
        "runs_per_query": runs,
        "over_100_ms": sum(1 for r in results.values() if r["p95_ms"] > 100),
        "top10": {name: r for name, r in ranked[:10]},
    }
