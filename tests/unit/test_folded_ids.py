"""The ids folded on a partition: exact membership, the changelog chunks, older stored forms."""

import uuid

import pytest

from processors.folded_ids import CHUNK, GENERATION, KEY_SIZE, FoldedIds, _holds, id_key
from processors.ledger import PartitionFold
from processors.rules import load_rules
from tests.unit.processors_factories import T0, contact


def keys(n, start=0):
    return [uuid.UUID(int=0x1234_5678_9ABC_DEF0 * (i + 1)).bytes for i in range(start, start + n)]


def test_an_id_is_held_only_where_a_key_starts():
    ids = FoldedIds()
    for key in keys(3000):
        ids.add(key)
    assert all(key in ids for key in keys(3000)) and len(ids) == 3000
    assert not any(key in ids for key in keys(100, start=3000))
    first, second = keys(2)
    across = first[8:] + second[:8]  # 16 bytes that straddle two ids kept side by side
    bucket = bytearray(first + second)
    assert across in bucket and not _holds(bucket, across) and _holds(bucket, second)


def test_the_same_uuid_is_the_same_id_and_other_strings_are_digested():
    one = str(uuid.uuid4())
    assert id_key(one) == id_key(one.upper()) == uuid.UUID(one).bytes
    assert id_key("evt-1") != id_key("evt-2") and len(id_key("evt-1")) == KEY_SIZE
    assert id_key("x" * 36) != id_key("y" * 36)  # 36 characters, but not hex


def test_a_batch_writes_its_last_chunk_again_and_the_chunks_it_filled():
    ids = FoldedIds()
    for key in keys(10):
        ids.add(key)
    assert ids.take_changes()[0] == [(0, b"".join(keys(10)))]
    assert ids.take_changes()[0] == []
    for key in keys(CHUNK + 5, start=10):
        ids.add(key)
    written = ids.take_changes()[0]
    assert [n for n, _ in written] == [0, 1]
    assert written[0][1] == b"".join(keys(CHUNK))              # now full
    assert written[1][1] == b"".join(keys(15, start=CHUNK))     # the partial one
    ids.add(keys(1, start=CHUNK + 15)[0])
    assert ids.take_changes()[0] == [(1, b"".join(keys(16, start=CHUNK)))]


def test_the_chunks_read_back_give_the_same_memory_and_go_on_from_there():
    ids = FoldedIds()
    chunks = {}
    for key in keys(2 * CHUNK + 7):
        ids.add(key)
    chunks.update(ids.take_changes()[0])
    restored = FoldedIds.from_chunks(chunks)
    assert len(restored) == 2 * CHUNK + 7 and all(key in restored for key in keys(2 * CHUNK + 7))
    assert restored.take_changes() == ([], [])
    new = keys(1, start=2 * CHUNK + 7)[0]
    restored.add(new)
    assert restored.take_changes() == ([(2, chunks[2] + new)], [])
    with pytest.raises(ValueError, match="do not run without a gap"):
        FoldedIds.from_chunks({0: chunks[0], 2: chunks[2]})
    with pytest.raises(ValueError, match="chunk 0 holds 17 bytes"):
        FoldedIds.from_chunks({0: chunks[0][:17]})
    with pytest.raises(RuntimeError, match="no longer held"):
        restored.all_chunks()


def test_the_latest_generation_at_least_is_held_and_at_most_two():
    ids = FoldedIds(generation=2 * CHUNK)
    for key in keys(4 * CHUNK):
        ids.add(key)
    assert len(ids) == 4 * CHUNK and all(key in ids for key in keys(4 * CHUNK))
    ids.add(keys(1, start=4 * CHUNK)[0])  # a third generation begins: the first is forgotten
    assert len(ids) == 2 * CHUNK + 1
    assert not any(key in ids for key in keys(2 * CHUNK))
    assert all(key in ids for key in keys(2 * CHUNK + 1, start=2 * CHUNK))
    assert GENERATION % CHUNK == 0
    with pytest.raises(ValueError, match="not a positive multiple"):
        FoldedIds(generation=CHUNK + 1)


def test_a_forgotten_generation_leaves_the_log_one_call_later_and_reads_back_the_same():
    """As a worker writes it: the log, cut after any call, reads back to the memory held then
    (a batch cut short never deletes what the last complete state holds)."""
    generation = 2 * CHUNK
    ids = FoldedIds(generation=generation)
    log: dict[int, bytes] = {}
    states = []
    for call, batch in enumerate([70, 100, 90, 3, 200, 40]):
        start = len(ids) + ids._first
        for key in keys(batch, start=start):
            ids.add(key)
        chunks, deleted = ids.take_changes()
        # ids 256-383 begin a third generation at call 2, 384- a fourth at call 4: the first
        # generation's chunks (0, 1) and the second's (2, 3) are deleted one call later
        assert deleted == {3: [0, 1], 5: [2, 3]}.get(call, [])
        assert ids._first == {0: 0, 1: 0, 2: generation, 3: generation}.get(call, 2 * generation)
        log.update(chunks)
        for n in deleted:
            del log[n]
        restored = FoldedIds.from_chunks(log, generation=generation)
        assert len(restored) == len(ids) and restored._first == ids._first
        states.append(restored)
    held = keys(ids._count)[ids._first:]
    assert all(key in states[-1] for key in held)
    assert not any(key in states[-1] for key in keys(ids._first))
    restored = states[-1]
    restored.add(keys(1, start=ids._count)[0])
    ids.add(keys(1, start=ids._count)[0])
    assert restored.take_changes() == ids.take_changes()


@pytest.mark.parametrize("form", ["recent_ids", "recent"])
def test_a_customer_stored_with_an_older_form_still_catches_a_retry(form):
    """Before the partition remembered every id, each customer state held its own latest ids:
    as 24-byte records in hex ("recent_ids"), before that as {event_id: event time}."""
    rules = load_rules()
    event = contact(T0, "c-1", transfers=3)
    fold = PartitionFold(rules)
    fold.apply(event)
    plain = fold.customer_state("c-1")
    plain[form] = ((id_key(event["event_id"]) + T0.to_bytes(8, "little")).hex()
                   if form == "recent_ids" else {event["event_id"]: T0})
    restored = PartitionFold(rules)
    restored.load_customer("c-1", plain)
    assert restored.apply(event) == [] and restored.duplicates == 1
    assert restored.customer_state("c-1") == fold.customer_state("c-1")
