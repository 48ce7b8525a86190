"""The processors never acknowledge a batch whose derived events were not acknowledged.

A worker whose producer loses the derived events of its first batches (fault injected at the
client layer, tests/faults/worker.py) must send them again before its input offsets are
committed: at the end the derived topics hold every event a clean fold of the same ledger
derives.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from cxledger.pipeline import Pipeline
from processors.batch import PartitionFolds
from processors.rules import load_rules
from producers.sdk import LedgerProducer
from producers.simulator import simulate
from schemas.codec import WireCodec
from tests.integration.ledger_helpers import read_topic, read_until_idle
from tests.reliability.report import record

pytestmark = pytest.mark.integration

DOMAIN_TYPES = {"satisfaction.scored", "complaint.sla_breached", "churn.risk_changed",
                "tier.change_proposed", "tier.changed"}
ROOT = Path(__file__).resolve().parents[2]


def derived_ids(settings) -> set[str]:
    codec = WireCodec()
    ids = set()
    for msg in read_until_idle(settings, list(dict.fromkeys(settings.topics.derived.values()))):
        record, _ = codec.decode(msg.value())
        if record["event_type"] in DOMAIN_TYPES:
            ids.add(record["event_id"])
    return ids


def clean_fold(settings, published: int) -> set[str]:
    """What a fold of the ledger derives, partition by partition in offset order."""
    codec = WireCodec()
    by_partition = defaultdict(list)
    for msg in sorted(read_topic(settings, settings.topics.ledger, published),
                      key=lambda m: (m.partition(), m.offset())):
        by_partition[msg.partition()].append(codec.decode(msg.value())[0])
    derived = PartitionFolds(load_rules()).fold_batch(by_partition)
    return {d["event_id"] for d in derived if d["event_type"] in DOMAIN_TYPES}


def test_lost_derived_events_are_sent_again_before_the_input_is_committed(settings, tmp_path):
    settings = settings.with_(live_clock=False)
    events = list(simulate(3000, seed=12))
    config = tmp_path / "worker.toml"
    config.write_text(settings.to_toml())
    log = tmp_path / "worker.log"
    with Pipeline(settings) as pipe:
        with LedgerProducer(pipe.settings) as producer:
            for event in events:
                producer.publish(event)
        with open(log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "tests.faults.worker", "--config",
                                       str(config), "--fail-settles", "3"], cwd=ROOT,
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            pipe.wait_for_processors(producer.positions, timeout=240, show_progress=False)
            time.sleep(1)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    written = log.read_text()
    assert written.count("sending the batch again") == 3, written[-3000:]
    record("processor_faults", faults=3, kind="derived events lost before acknowledgement")
    expected = clean_fold(settings, len(events))
    assert len(expected) > 300  # enough derived events to lose some
    assert derived_ids(settings) == expected
