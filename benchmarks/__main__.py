"""``python -m benchmarks [--quick] [--only NAME ...]``: measure and print JSON.

Each figure is the median of several runs in this process; these machines are noisy, so
compare ratios taken in one run (e.g. two workers vs one) rather than absolute numbers
across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

from benchmarks import components, pipeline

SUITES = {
    "codec": components.codec,
    "validation": components.validation,
    "folds": components.folds,
    "clickhouse_insert": components.clickhouse_insert,
    "workers": pipeline.workers,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="run only these")
    args = parser.parse_args(argv)
    results = {}
    for name, suite in SUITES.items():
        if args.only and name not in args.only:
            continue
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        results[name] = suite(quick=args.quick)
        results[name]["seconds"] = round(time.monotonic() - started, 1)
    report = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "note": "medians of repeated runs; compare ratios within one report",
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def median_rate(runs: list[tuple[int, float]]) -> float:
    return round(statistics.median(n / s for n, s in runs))


if __name__ == "__main__":
    sys.exit(main())
