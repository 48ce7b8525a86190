"""A ``cxledger process`` worker whose derived-event producer fails its first acknowledgements.

    python -m tests.faults.worker --config FILE --fail-settles N

For the first N batches, ``DerivedProducer.settle`` drops what the batch queued (librdkafka's
purge: those messages never reach the broker) and raises NotAcknowledged, as a broker that
times out would leave it; everything else is the real worker.
"""

from __future__ import annotations

import argparse

from cxledger.config import load_settings
from cxledger.logs import configure_logging
from processors import app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--fail-settles", type=int, default=1)
    args = parser.parse_args()
    configure_logging("json", "info")
    failures = {"left": args.fail_settles}
    real_settle = app.DerivedProducer.settle

    async def failing_settle(self, timeout: float = 60.0) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            self._producer.purge()
            self._producer.flush(5)
            raise app.NotAcknowledged("injected: the broker did not acknowledge in time")
        await real_settle(self, timeout)

    app.DerivedProducer.settle = failing_settle
    app.run_worker(load_settings(args.config))


if __name__ == "__main__":
    main()
