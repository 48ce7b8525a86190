"""Processor throughput through the real broker: one worker vs two on a 6-partition ledger.

The ledger is published first; then the workers start, and the clock runs from the moment
their group is stable (join time excluded, reported separately) until they have committed
every event: that includes folding, persisting state to the changelog and awaiting the acks
of every derived event (at-least-once).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cxledger.config import load_settings
from cxledger.logs import configure_logging
from cxledger.pipeline import Pipeline
from producers.sdk import LedgerProducer
from producers.simulator import simulate


def _run(events: list[dict], workers: int) -> dict:
    store = Path(tempfile.mkdtemp(prefix="cxbench-")) / "store"
    with Pipeline(load_settings(environ={}).with_(store=store)) as pipe:
        with LedgerProducer(pipe.settings, codec=pipe.codec) as producer:
            for e in events:
                producer.publish(e)
        started = time.monotonic()
        pipe.start_processors(workers, log_dir=store.parent)
        pipe.wait_for_processor_group()
        joined = time.monotonic()
        pipe.wait_for_processors(producer.positions, timeout=600, show_progress=False)
        done = time.monotonic()
    return {"join_s": round(joined - started, 1), "process_s": round(done - joined, 2),
            "events_per_s": round(len(events) / (done - joined))}


def workers(quick: bool = False) -> dict:
    configure_logging("console", "warning")
    n = 50_000 if quick else 200_000
    events = list(simulate(n, seed=9))
    one = _run(events, 1)
    two = _run(events, 2)
    return {
        "events": n, "partitions": 6, "one_worker": one, "two_workers": two,
        "two_over_one": round(two["events_per_s"] / one["events_per_s"], 2),
        "target_events_per_s": {"one_worker": 10_000, "two_workers": 20_000},
        "note": "process_s counts from the group being stable until every event is "
                "committed (includes faust's 1 s commit interval)",
    }
