"""``python -m benchmarks [--events N] [--quick]`` (``make bench``, ``cxledger bench``).

Prints one JSON document on stdout and writes the same to ``benchmarks/results/<UTC
timestamp>.json``; progress goes to stderr. See ``benchmarks.harness`` for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from benchmarks.harness import PHASES, Bench, Options, write_result


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="simulated events (default 1,000,000; "
                        "100,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 20 s of "
                        "freshness traffic, 5 runs per dashboard query (about 5 minutes)")
    parser.add_argument("--freshness-seconds", type=float, help="seconds of steady traffic "
                        "for freshness (default 60; 20 with --quick)")
    parser.add_argument("--freshness-rate", type=float, help="events/s for freshness "
                        "(default 5000)")
    parser.add_argument("--freshness-workers", type=int, help="faust workers of the stack "
                        "freshness runs on (`cxledger up --workers N`; default 1)")
    parser.add_argument("--freshness-warmup", type=float, help="seconds of traffic before "
                        "the probes start, at each rate (default 5; 3 with --quick)")
    parser.add_argument("--freshness-floor-seconds", type=float, help="seconds of 1,000 "
                        "events/s first, for the latency without a backlog (default 20; 10 "
                        "with --quick; 0: none)")
    parser.add_argument("--dashboard-runs", type=int, help="runs per dashboard query "
                        "(default 20; 5 with --quick)")
    parser.add_argument("--skip", default="", metavar="PHASE,...",
                        help="phases to leave out: " + ", ".join(PHASES))
    parser.add_argument("--profile", metavar="DIR", help="sample the producer, the ledger sink, "
                        "the worker, the faust ceiling and the peer with py-spy into DIR "
                        "(figures of a profiled run are marked so)")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write benchmarks/results/<timestamp>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store, broker "
                        "log and worker logs")
    parser.add_argument("--command", help=argparse.SUPPRESS)  # how it was run, for the record


def run(args: argparse.Namespace, command: str) -> int:
    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    unknown = set(skip) - set(PHASES)
    if unknown:
        print(f"unknown phase(s) to skip: {', '.join(sorted(unknown))}; known: "
              f"{', '.join(PHASES)}", file=sys.stderr)
        return 2
    if args.freshness_workers is not None and args.freshness_workers < 1:
        print("--freshness-workers must be at least 1", file=sys.stderr)
        return 2
    if args.freshness_warmup is not None and args.freshness_warmup < 0:
        print("--freshness-warmup must be 0 or more", file=sys.stderr)
        return 2
    if args.events is not None and args.events < 1:
        print("--events must be at least 1", file=sys.stderr)
        return 2
    options = Options.make(args.events, args.quick, skip=skip,
                           freshness_seconds=args.freshness_seconds,
                           freshness_rate=args.freshness_rate,
                           freshness_workers=args.freshness_workers,
                           freshness_warmup=args.freshness_warmup,
                           freshness_floor_seconds=args.freshness_floor_seconds,
                           dashboard_runs=args.dashboard_runs,
                           profile=Path(args.profile).resolve() if args.profile else None,
                           keep=args.keep, command=args.command or command)
    if args.no_save:
        options.results_dir = None
    # Only the document goes to stdout: anything else that writes to file descriptor 1 (the
    # embedded engine, librdkafka, children) is sent to stderr for the run.
    document_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(sys.stderr.fileno(), 1)
    try:
        doc = Bench(options).execute()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if options.results_dir is not None:
        path = write_result(doc, options.results_dir)
        print(f"written to {path}", file=sys.stderr)
    document_out.write(json.dumps(doc, indent=2) + "\n")
    document_out.flush()
    return 1 if doc["errors"] else 0


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(prog).parse_args(argv)
    return run(args, shlex.join([*prog.split(), *argv]))


if __name__ == "__main__":
    sys.exit(main())
