"""Fold a batch of ledger records, partition by partition: shared by the worker and replay.

``PartitionFolds`` holds one ``PartitionFold`` per ledger partition. ``fold_batch`` applies a
batch in offset order per partition and then drains what the batch changed (window partials,
complaint states), so live processing and replay emit the same derived events whatever the
batch boundaries. State persistence is the caller's (processors.changelog).
"""

from __future__ import annotations

import gc
import json
from typing import Any, Iterable, Mapping, Sequence

import orjson

from processors.folded_ids import FoldedIds, from_plain as folded_from_plain
from processors.halls import HallMonths, markers
from processors.ledger import PartitionFold
from processors.rules import Rules
from schemas.jsonform import compact_json

PARTITION_STATE_KEY = ""  # customer ids are non-empty, so "" names the partition's own state


# The window rows of one bucket (window, window_start, city) are one record:
# "<partition>/" WINDOW_BUCKET_PREFIX "<window>/<window_start>/<city>". Ids are printable, so a
# control character cannot begin a customer id. Before buckets, each row was a record of its
# own, "<partition>/" WINDOW_KEY_PREFIX <key as JSON>: still read, and deleted once rewritten.
WINDOW_BUCKET_PREFIX = "\x1fbucket"
WINDOW_KEY_PREFIX = "\x1fwindow"
# The ids folded on the partition (processors.folded_ids), a record per chunk:
# "<partition>/" FOLDED_IDS_PREFIX "<chunk number>".
FOLDED_IDS_PREFIX = "\x1fids/"


def state_key(partition: int, customer_id: str) -> str:
    """Table key of a customer's (or, with "", the partition's) state: "<partition>/<id>"."""
    return f"{partition}/{customer_id}"


def window_bucket_key(partition: int, bucket: Sequence) -> str:
    """Changelog key of the window rows of one bucket (window, window_start, city) of a
    partition."""
    window, start, city = bucket
    return state_key(partition, f"{WINDOW_BUCKET_PREFIX}{window}/{start}/{city}")


def folded_ids_key(partition: int, chunk: int) -> str:
    """Changelog key of one chunk of the ids folded on a partition."""
    return state_key(partition, f"{FOLDED_IDS_PREFIX}{chunk}")


def window_state_key(partition: int, key: Sequence) -> str:
    """Changelog key of one window row in the layout before buckets (WINDOW_KEY_PREFIX)."""
    return state_key(partition, WINDOW_KEY_PREFIX + json.dumps(list(key), separators=(",", ":")))


def encode_state(plain: Any) -> bytes:
    return compact_json(plain)  # the worker encodes every changed customer after every batch


def decode_state(data: bytes) -> Any:
    return orjson.loads(data)


def tune_gc_for_folds() -> None:
    """For a process that folds: collect cyclic garbage less often.

    Fold state and events are plain, acyclic data that reference counting frees; the cyclic
    collector only rescans them, and did so for ~45% of the time of a 300k-event replay.
    Call ``settle_heap`` after each batch as well.
    """
    gc.set_threshold(50_000, 20, 100)


def settle_heap() -> None:
    """Move everything alive after a batch out of the cyclic collector's view (reference
    counting still frees it when it is dropped)."""
    gc.freeze()


class PartitionFolds:
    """One PartitionFold per ledger partition. With ``ledger_partitions`` (the number of
    partitions of the ledger topic) it also runs the hall-months fold over the month closes the
    partition folds drain (processors.halls: replay and the restore of ``cxledger up`` do; the
    live processors run that fold on the closes' own topic, processors.hall_app)."""

    def __init__(self, rules: Rules, ledger_partitions: int | None = None):
        self.rules = rules
        self.folds: dict[int, PartitionFold] = {}
        self.hall_months = (HallMonths(rules, ledger_partitions) if ledger_partitions
                            else None)

    def get(self, partition: int) -> PartitionFold:
        fold = self.folds.get(partition)
        if fold is None:
            fold = self.folds[partition] = PartitionFold(self.rules, partition)
        return fold

    def restore(self, partition: int, entries: Iterable[tuple[str, bytes]]) -> PartitionFold:
        """Rebuild a partition's fold from persisted (key, state) entries of that partition."""
        fold = self.folds[partition] = PartitionFold(self.rules, partition)
        partition_state = None
        legacy: dict[tuple, list] = {}   # one-row records (the layout before buckets)
        bucketed: dict[tuple, list] = {}
        entries = [(key.split("/", 1)[1], decode_state(value)) for key, value in entries]
        fold.folded = FoldedIds.from_chunks({
            int(name[len(FOLDED_IDS_PREFIX):]): folded_from_plain(plain["ids"])
            for name, plain in entries if name.startswith(FOLDED_IDS_PREFIX)})
        for customer_id, plain in entries:
            if plain is None or plain.get("forgotten"):
                continue  # a customer the fold forgot
            if customer_id.startswith(FOLDED_IDS_PREFIX):
                continue
            if customer_id == PARTITION_STATE_KEY:
                partition_state = plain
            elif customer_id.startswith(WINDOW_BUCKET_PREFIX):
                for row_key, *row in plain["windows"]:
                    bucketed[tuple(row_key)] = row
            elif customer_id.startswith(WINDOW_KEY_PREFIX):
                legacy[tuple(json.loads(customer_id[len(WINDOW_KEY_PREFIX):]))] = plain["window"]
            else:
                fold.load_customer(customer_id, plain)
        if partition_state is not None:
            fold.legacy_window_keys = list(legacy)
            fold.restore_partition(partition_state, list({**legacy, **bucketed}.items()))
        fold.clear_dirty()
        return fold

    def drop(self, partition: int) -> None:
        self.folds.pop(partition, None)

    def fold_batch(self, batch: Mapping[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Apply each partition's records in order, then drain; returns the derived events."""
        derived: list[dict[str, Any]] = []
        for partition, records in batch.items():
            fold = self.get(partition)
            apply = fold.apply
            for record in records:
                derived += apply(record)
            derived += fold.drain_windows()
            derived += fold.drain_complaints()
        return self.decide_halls(derived)

    def decide_halls(self, derived: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``derived`` plus what the hall-months fold (when this object runs it) decides from
        the month closes among them."""
        if self.hall_months is not None:
            derived += self.hall_months.apply_all(markers(derived))
        return derived
