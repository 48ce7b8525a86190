"""The window partials of a drain travel as satisfaction.windows_updated: few messages, the
same rows in the store."""

import pytest

from processors.derived import message_key
from processors.window_batches import (MAX_PARTIALS, WINDOWS_UPDATED, pack_window_partials,
                                       windows_updated)
from processors.windows import WINDOW_UPDATED
from schemas.codec import WireCodec
from sinks.derived_sink import derived_row, map_derived
from tests.unit.processors_factories import fold_simulated


@pytest.fixture(scope="module")
def derived():
    """The derived events of 20,000 simulated events folded in one batch, six partitions."""
    return fold_simulated(20_000, seed=3, partitions=6)


def test_the_store_gets_the_same_rows_through_the_wire(derived):
    """Packed, encoded, decoded and mapped by the derived sink: the rows the per-window events
    give (what replay writes), no more, no fewer."""
    codec = WireCodec()
    packed = pack_window_partials(derived)
    windows = [d for d in derived if d["event_type"] == WINDOW_UPDATED]
    assert len(windows) > 5 * MAX_PARTIALS  # several messages per partition, some full
    assert len(packed) < len(derived) - len(windows) + len(windows) / 100
    through_wire = []
    for record in packed:
        decoded, schema_id = codec.decode(codec.encode(record))
        through_wire += [repr(row) for row in map_derived(decoded, schema_id, 0, 0)]
    direct = [repr(derived_row(d)) for d in derived if derived_row(d) is not None]
    assert sorted(through_wire) == sorted(direct)


def test_each_message_holds_one_partitions_partials_in_drain_order(derived):
    packed = pack_window_partials(derived)
    others = [d for d in derived if d["event_type"] != WINDOW_UPDATED]
    assert packed[:len(others)] == others  # the other events first, in their order
    batches = packed[len(others):]
    assert all(b["event_type"] == WINDOWS_UPDATED for b in batches)
    assert all(0 < len(b["partials"]) <= MAX_PARTIALS for b in batches)
    for partition in range(6):
        mine = [p for p in derived
                if p["event_type"] == WINDOW_UPDATED and p["source_partition"] == partition]
        sent = [p for b in batches if b["source_partition"] == partition for p in b["partials"]]
        assert sent == mine
        keys = {message_key(b) for b in batches if b["source_partition"] == partition}
        assert keys == {f"partition-{partition}".encode()}


def test_ids_are_derived_from_the_partials(derived):
    """The same partials give the same id (a replay of the drain), other partials another."""
    partials = [d for d in derived if d["event_type"] == WINDOW_UPDATED
                and d["source_partition"] == 0][:10]
    version = partials[0]["rules_version"]
    one = windows_updated(0, version, partials)
    assert one["event_id"] == windows_updated(0, version, list(partials))["event_id"]
    assert one["event_id"] != windows_updated(0, version, partials[:9])["event_id"]
    assert one["event_id"] != windows_updated(1, version, partials)["event_id"]
    assert one["occurred_at"] == max(p["window_start"] for p in partials)
