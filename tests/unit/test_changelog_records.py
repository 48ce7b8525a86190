"""The processors' changelog records (processors.changelog): what a worker writes per batch and
what a restarted worker reads back, without Kafka (``state_records`` and ``consistent_state``
are the pure halves of the worker's write and ``read_state``).

A live partition holds a window row per (minute, city, channel, tier) for two hours: the
partition record must not carry them, or it outgrows a Kafka message within minutes of live
traffic. The rows of one bucket (window, window_start, city) are a record of their own, and a
batch cut short anywhere restores to a state from which folding again gives exactly what the
uninterrupted fold gave.
"""

from __future__ import annotations

import json

import pytest

from processors.batch import (PARTITION_STATE_KEY, PartitionFolds, encode_state, state_key,
                              window_state_key)
from processors.changelog import consistent_state, state_records
from processors.folded_ids import id_key
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
    log, derived, _, folds = fold_and_log(records)
    partition_records = [value for key, value in log if key.endswith("/")]
    buckets = [key for key, value in log if "\x1fbucket" in key and value is not None]
    deleted = [key for key, value in log if "\x1fbucket" in key and value is None]
    assert len(folds.get(0).windows.rows) > 200  # many rows open at once
    assert max(map(len, partition_records)) < 4_000  # no rows in it
    full = json.dumps(folds.get(0).snapshot_partition())  # what it would have held
    assert len(full) > 10 * max(map(len, partition_records))
    assert deleted and set(deleted) <= set(buckets)  # closed buckets leave the log
    assert not any("\x1fwindow" in key for key, _ in log)  # no record of one row
    for key, value in log:  # a record holds one minute or day of one city
        if "\x1fbucket" in key and value is not None:
            window, start, city = key.split("\x1fbucket", 1)[1].split("/")
            assert {tuple(row[0][:3]) for row in json.loads(value)["windows"]} == {
                (window, int(start), city)}
    # one record per changed minute or day, not per changed row
    row_changes = sum(e["event_type"] == "satisfaction.window_updated" for b in derived for e in b)
    assert len(buckets) < row_changes / 3


def test_rows_kept_one_record_each_are_read_back_rewritten_as_buckets_then_deleted(records):
    """The layout before buckets: a changelog with one record per window row restores the same
    rows; the next batch writes every open bucket, and the one after deletes the old records."""
    _, _, _, whole = fold_and_log(records[:4000])
    fold = whole.get(0)
    windows = fold.windows
    old_layout = [(window_state_key(0, key), encode_state({"window": windows.row_plain(row),
                                                           "pos": fold.position}))
                  for key, row in windows.rows.items()]
    old_layout.append((state_key(0, PARTITION_STATE_KEY),
                       encode_state(fold.snapshot_partition(window_rows=False))))
    restored = PartitionFolds(RULES)
    restored.restore(0, consistent_state(0, old_layout))
    assert sorted(restored.get(0).windows.snapshot()["rows"]) == sorted(
        windows.snapshot()["rows"])
    first = state_records(restored, [0])
    rewritten = [json.loads(v)["windows"] for _, k, v in first if "\x1fbucket" in k]
    assert sorted(r for rows in rewritten for r in rows) == sorted(windows.snapshot()["rows"])
    assert not any(v is None for _, _, v in first)  # nothing deleted yet
    second = state_records(restored, [0])
    assert sorted(k for _, k, v in second if v is None) == sorted(k for k, _ in old_layout[:-1])


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
    # every id folded before the cut came back from the log: none is folded twice
    assert len(fold.folded) == len(whole.get(0).folded)
    assert all(id_key(r["event_id"]) in fold.folded for r in records if r.get("customer_id"))
