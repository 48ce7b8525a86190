"""`make reliability`: the reliability checks in full, and one JSON summary on stdout.

    python -m tests.reliability [--quick] [--seed N] [--events N] [--kills N]
                                [--soak-rate R] [--soak-seconds S]

1. the hostile-input catalogue, the store faults and the processor faults (their pytest
   tests, which report what they injected and counted);
2. chaos: SIGKILLs of workers and of the whole stack while traffic flows (tests.reliability.chaos);
3. a soak at a steady rate, sampling every process's memory (tests.reliability.soak).
Keys: kills, faults, cases, sent, written, rejected, dead_lettered, duplicates (must be 0),
missing (must be 0), peak_rss_mb (per process), soak_s, rss_within_bound (every process but
the broker below tests.reliability.soak.RSS_BOUND_MB); the details follow under their names.
Progress goes to stderr. The exit code is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxledger.logs import configure_logging
from producers.simulator import simulate
from tests.reliability.chaos import run_chaos
from tests.reliability.report import REPORT_ENV, read
from tests.reliability.soak import run_soak

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/integration/test_hostile.py", "tests/integration/test_sink_faults.py",
         "tests/integration/test_processor_faults.py"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="make reliability")
    parser.add_argument("--quick", action="store_true", help="short forms (a few minutes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--soak-rate", type=float)
    parser.add_argument("--soak-seconds", type=float)
    args = parser.parse_args()
    events = args.events or (6_000 if args.quick else 30_000)
    kills = args.kills or (5 if args.quick else 12)
    rate = args.soak_rate or (2_000 if args.quick else 5_000)
    seconds = args.soak_seconds or (60 if args.quick else 600)
    configure_logging("console", "warning")  # logs to stderr: stdout is the JSON summary
    work = Path(tempfile.mkdtemp(prefix="cxledger-reliability-"))
    report_file = work / "report.jsonl"
    os.environ[REPORT_ENV] = str(report_file)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {text}", file=sys.stderr, flush=True)

    say(f"fault and hostile-input tests: {', '.join(TESTS)}")
    tests_status = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={work / 'pytest'}", *[str(ROOT / t) for t in TESTS]],
        cwd=ROOT, stdout=sys.stderr).returncode
    say(f"chaos: {events} events, {kills} kills, seed {args.seed}")
    chaos = run_chaos(work / "chaos", list(simulate(events, seed=args.seed)), seed=args.seed,
                      kills=kills)
    say(f"soak: {rate:.0f} events/s for {seconds:.0f}s")
    soak = run_soak(work / "soak", rate, seconds)

    found = read(str(report_file))
    hostile = next((r for r in found if r["section"] == "hostile"), {})
    faults = [r for r in found if r["section"] in ("store_faults", "processor_faults")]
    summary = {
        "kills": chaos["kills"],
        "faults": sum(r["faults"] for r in faults),
        "cases": hostile.get("cases", 0),
        "sent": hostile.get("sent", 0) + chaos["sent"] + soak["sent"],
        "written": hostile.get("accepted", 0) + chaos["written"] + soak["written"],
        "rejected": hostile.get("rejected", 0),
        "dead_lettered": hostile.get("dead_lettered", 0)
                         + sum(r.get("dead_lettered", 0) for r in faults),
        "duplicates": chaos["duplicates"] + chaos["physical_duplicates"],
        "missing": chaos["missing"] + (soak["sent"] - soak["written"]),
        "peak_rss_mb": soak["peak_rss_mb"],
        "soak_s": soak["soak_s"],
        "rss_within_bound": soak["within_bound"],
        "tests": "passed" if tests_status == 0 else f"failed (pytest exit {tests_status})",
        "derived_equal_after_chaos": all(chaos["derived_equal"].values()),
        "chaos": chaos, "soak": soak, "faults_injected": faults, "hostile": hostile,
        "seconds": round(time.monotonic() - started, 1), "work": str(work),
    }
    print(json.dumps(summary, indent=2))
    ok = (tests_status == 0 and summary["duplicates"] == 0 and summary["missing"] == 0
          and summary["derived_equal_after_chaos"] and soak["within_bound"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
