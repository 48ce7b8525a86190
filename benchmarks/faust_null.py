"""faust's ceiling: a worker that does nothing but count, on the ledger topic.

    python -m benchmarks.faust_null --config FILE

faust consuming the ledger with its own consumer (``processors.app.faust_app``: broker, commit
interval, poll and session timeouts, raw serializers), ``stream.take_events`` with the worker's
batch size and window, and one agent that only counts the events of each batch. faust acks (and
commits, on its 1 s interval) what the agent has taken. There is no table, no decoding, no fold
and no producer: what is left is faust's own consumption, which the worker no longer uses for
its input (processors.source says why).
The app id (consumer group) is the settings' ``topics.processors_app``.
"""

from __future__ import annotations

import argparse

import faust

from cxledger.config import Settings, load_settings
from processors.app import faust_app

BATCH_SIZE = 10_000   # the worker's batch (processors.app.create_app's defaults)
BATCH_WITHIN = 0.2


def create_null_app(settings: Settings, batch_size: int = BATCH_SIZE,
                    batch_within: float = BATCH_WITHIN) -> faust.App:
    app = faust_app(settings)
    ledger = app.topic(settings.topics.ledger, key_type=bytes, value_type=bytes,
                       partitions=settings.topics.partitions)
    counted = {"events": 0}

    @app.agent(ledger)
    async def count(stream):
        async for events in stream.take_events(batch_size, within=batch_within):
            counted["events"] += len(events)

    app.bench_counted = counted
    return app


def main(argv: list[str] | None = None) -> int:
    from faust.worker import Worker

    parser = argparse.ArgumentParser(prog="python -m benchmarks.faust_null")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    app = create_null_app(load_settings(args.config, environ={}))
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
