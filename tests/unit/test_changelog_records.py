"""The processors' changelog records (processors.changelog): what a worker writes per batch and
what a restarted worker reads back, without Kafka (``state_records`` and ``consistent_state``
are the pure halves of the worker's write and ``read_state``).

A live partition holds a window row per (minute, city, channel, tier) for two hours: the
partition record must not carry them, or it outgrows a Kafka message within minutes of live
traffic. The rows are records of their own, and a batch cut short anywhere restores to a
state from which folding again gives exactly what the uninterrupted fold gave.
"""

from __future__ import annotations

import json

import pytest

from processors.batch import PartitionFolds
from processors.changelog import consistent_state, state_records
from processors.rules import load_rules
from producers.simulator import simulate_live
from schemas.validation import normalize_event

RULES = load_rules()
START = 1_741_075_200.0  # 2025-03-04 08:00 UTC
BATCH = 500


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Three hours of live traffic at 2 events/s: minute windows open and close for good."""
    events = simulate_live(2, 3 * 3600, seed=5, now=lambda: START)
    return [normalize_event(e, now_ms=int((START + 4 * 3600) * 1000)) for e in events]


def fold_and_log(records: list[dict]) -> tuple[list[tuple[str, bytes | None]], list[list[dict]],
                                               list[int], PartitionFolds]:
    """Fold ``records`` into partition 0 batch by batch as a worker does: the changelog (key,
    value) in write order, the derived events per batch, and the log length after each batch."""
    folds = PartitionFolds(RULES)
    log: list[tuple[str, bytes | None]] = []
    derived: list[list[dict]] = []
    ends: list[int] = []
    for at in range(0, len(records), BATCH):
        derived.append(folds.fold_batch({0: records[at:at + BATCH]}))
        folds.get(0).position = min(at + BATCH, len(records))
        log += [(key, value) for _, key, value in state_records(folds, [0])]
        ends.append(len(log))
    return log, derived, ends, folds


def test_the_partition_record_stays_small_while_window_rows_come_and_go(records):
    log, _, _, folds = fold_and_log(records)
    partition_records = [value for key, value in log if key.endswith("/")]
    rows = [key for key, value in log if "\x1fwindow" in key and value is not None]
    deleted = [key for key, value in log if "\x1fwindow" in key and value is None]
    assert len(folds.get(0).windows.rows) > 200  # many rows open at once
    assert max(map(len, partition_records)) < 4_000  # no rows in it
    full = json.dumps(folds.get(0).snapshot_partition())  # what it would have held
    assert len(full) > 10 * max(map(len, partition_records))
    assert deleted and set(deleted) <= set(rows)  # closed rows leave the log


@pytest.mark.parametrize("cut_batch", [3, 9, 17])
@pytest.mark.parametrize("torn", [False, True])
def test_a_restart_after_any_batch_folds_on_exactly_as_before(records, cut_batch, torn):
    """Stop after batch ``cut_batch`` (or in the middle of writing the next batch's state,
    before its partition record); restore from the log; fold the rest again: the derived
    events and the final state are the uninterrupted fold's."""
    log, derived, ends, whole = fold_and_log(records)
    cut = ends[cut_batch]
    if torn:  # the next batch's records, all but its partition record
        cut = ends[cut_batch + 1] - 1
        assert log[cut][0].endswith("/")
    restored = PartitionFolds(RULES)
    fold = restored.restore(0, consistent_state(0, log[:cut]))
    position = fold.position
    assert position == (cut_batch + 1) * BATCH
    again = []
    for at in range(position, len(records), BATCH):
        again.append(restored.fold_batch({0: records[at:at + BATCH]}))
    assert again == derived[cut_batch + 1:]
    def rows(folds):  # the open window rows, in key order
        return sorted(folds.get(0).windows.snapshot()["rows"])

    assert rows(restored) == rows(whole)
    assert {c: fold.customer_state(c) for c in fold.customers} == {
        c: whole.get(0).customer_state(c) for c in whole.get(0).customers}
