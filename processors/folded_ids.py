"""The event ids folded in one ledger partition, so that no event is folded twice.

The ledger in ClickHouse keeps the first version of an event id for good (the ledger sink), and
replay folds that ledger, so the live fold must skip an id it has folded before, and not only a
producer's quick retry: a file published again after an interrupted ingest brings back events
months old in event time, seconds later in arrival. A customer's events all sit on one
partition (the ledger is keyed by customer), so one memory per partition sees every duplicate.

How far back: the partition's latest ``GENERATION`` (524,288) customer events at least, twice
that at most (see ``FoldedIds``): with the default 6 partitions, a file of up to 3 million
events can be published again whole and nothing in it is folded twice. The bound is a count of
events in fold order, not time, so a replay and a restored worker remember exactly what the
live worker remembered; an id older than that is folded again (the ledger still stores it once).

An event id is a UUID (the contract's logical type; ``ledger_events.event_id`` is a ClickHouse
UUID) and is kept as its 16 bytes, so ids that name the same UUID are the same id, as they are
in the ledger; any other string as its 16-byte BLAKE2b digest, as unlikely to collide as two
random UUIDs (``id_key``). The keys sit in up to ``BUCKETS`` ``bytearray`` objects picked by
the key's hash, so a lookup searches two short buckets (about 0.6 us with a million ids) and
nothing here is an object the cycle collector tracks. A million ids take about 32 MB of a
worker's memory, where a ``set`` of them took 93 MB.

On the changelog the ids are records of ``CHUNK`` ids each, in fold order
(``processors.changelog``: ``"<partition>/\\x1fids/<n>"``): a batch writes again only the last,
partial chunk and the ones it filled: 32 characters an event, plus at most 2 KiB a
partition and batch.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

KEY_SIZE = 16
BUCKETS = 65_536
CHUNK = 64  # ids per changelog record: 2 KiB of hex, written again while it fills
# At least this many of the partition's latest ids are held, at most twice as many: 16-32 MB.
GENERATION = 8192 * CHUNK  # 524,288


def id_key(event_id: str) -> bytes:
    """The 16 bytes an event id is remembered by."""
    try:
        key = bytes.fromhex(event_id.replace("-", ""))
        if len(key) == KEY_SIZE and len(event_id) == 36:
            return key
    except ValueError:
        pass
    return hashlib.blake2b(event_id.encode(), digest_size=KEY_SIZE).digest()


class FoldedIds:
    """The ids folded in one partition: ``key in ids``, ``ids.add(key)``, and for the changelog
    ``take_changes`` (the chunks to write and to delete) and ``all_chunks``.

    Ids are kept in generations of ``generation`` ids, counted from the partition's first
    folded id: the current one and the one before. When the current one is full it becomes the
    one before, and the one before it is forgotten. So the latest ``generation`` ids at least
    are always held, at most twice that, whatever the batches were: a worker restored from the
    changelog holds exactly what the worker before it held at the same position.
    """

    def __init__(self, generation: int = GENERATION) -> None:
        if generation <= 0 or generation % CHUNK:
            raise ValueError(f"folded ids: a generation of {generation} ids is not a positive "
                             f"multiple of {CHUNK}")
        self.generation = generation
        self._current: dict[int, bytearray] = {}   # hash bucket -> keys, the current generation
        self._previous: dict[int, bytearray] = {}  # the generation before
        self._count = 0   # ids ever added: the number of the next one
        self._first = 0   # the number of the first id held
        self._saved = 0   # ids written to the changelog (``take_changes``)
        self._unsaved = bytearray()  # the keys from the start of the chunk of id ``_saved``
        self._forgotten: list[int] = []   # chunks of a generation just forgotten
        self._delete_next: list[int] = []  # ... and of the one forgotten before the last call

    def __len__(self) -> int:
        return self._count - self._first

    def __contains__(self, key: bytes) -> bool:
        at = hash(key) % BUCKETS
        return _holds(self._current.get(at), key) or _holds(self._previous.get(at), key)

    def add(self, key: bytes) -> None:
        """Remember ``key`` (the caller checks it is not held already)."""
        if self._count % self.generation == 0 and self._count > self._first:
            self._next_generation()
        at = hash(key) % BUCKETS
        bucket = self._current.get(at)
        if bucket is None:
            bucket = self._current[at] = bytearray()
        bucket += key
        self._unsaved += key
        self._count += 1

    def _next_generation(self) -> None:
        first = self._count - self.generation  # the first id of the generation ending now
        if first > self._first:  # the one before it is forgotten
            self._forgotten += range(self._first // CHUNK, first // CHUNK)
            self._first = first
            if self._saved < first:  # not written yet, and now never to be
                self._unsaved = self._unsaved[(first - self._saved // CHUNK * CHUNK)
                                              * KEY_SIZE:]
                self._saved = first
        self._previous, self._current = self._current, {}

    def take_changes(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """(chunk number, its keys) of every chunk held that gained ids since the last call,
        and the chunks to delete: those forgotten *before* the last call, so that a batch cut
        short never deletes a chunk the last complete state still holds (as window buckets,
        ``PartitionFold.window_changes``)."""
        deleted, self._delete_next, self._forgotten = self._delete_next, self._forgotten, []
        if self._count == self._saved:
            return [], deleted
        first = self._saved // CHUNK
        unsaved = bytes(self._unsaved)
        step = CHUNK * KEY_SIZE
        chunks = [(first + i, unsaved[at:at + step])
                  for i, at in enumerate(range(0, len(unsaved), step))]
        self._saved = self._count
        full = (self._count // CHUNK - first) * step
        self._unsaved = self._unsaved[full:]  # a new object: the old buffer is freed
        return chunks, deleted

    def all_chunks(self) -> list[tuple[int, bytes]]:
        """Every chunk held, for a state written whole (``changelog.seed_state``). Only an
        object that never gave ``take_changes`` holds them all."""
        if self._saved > self._first:
            raise RuntimeError("folded ids: chunks already written are no longer held")
        return self.take_changes()[0]

    @classmethod
    def from_chunks(cls, chunks: Mapping[int, bytes],
                    generation: int = GENERATION) -> "FoldedIds":
        """The memory that wrote ``chunks`` (chunk number -> keys), as ``take_changes`` writes
        them: numbered without a gap from the start of a generation, every one but the last
        full. Chunks of a generation already forgotten are deleted at the next change."""
        ids = cls(generation)
        numbers = sorted(chunks)
        if not numbers:
            return ids
        start = numbers[0] * CHUNK
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or start % generation:
            raise ValueError(f"folded ids: chunks {numbers[0]}..{numbers[-1]} ({len(numbers)}) "
                             "do not run without a gap from the start of a generation")
        ids._count = ids._first = ids._saved = start
        for n in numbers:
            data = chunks[n]
            if len(data) % KEY_SIZE or len(data) > CHUNK * KEY_SIZE or (
                    n != numbers[-1] and len(data) != CHUNK * KEY_SIZE):
                raise ValueError(f"folded ids: chunk {n} holds {len(data)} bytes")
            for at in range(0, len(data), KEY_SIZE):
                ids.add(data[at:at + KEY_SIZE])
        # what was read is written already: keep only the keys of the last chunk, partial
        unsaved_from = ids._saved // CHUNK * CHUNK
        ids._unsaved = ids._unsaved[(ids._count // CHUNK * CHUNK - unsaved_from) * KEY_SIZE:]
        ids._saved = ids._count
        ids._delete_next, ids._forgotten = ids._forgotten, []
        return ids


def _holds(bucket: bytearray | None, key: bytes) -> bool:
    if bucket is None:
        return False
    at = bucket.find(key)
    while at >= 0:
        if at % KEY_SIZE == 0:  # a key, not 16 bytes across two of them
            return True
        at = bucket.find(key, at + 1)
    return False


def to_plain(chunk: bytes) -> str:
    return chunk.hex()


def from_plain(text: str) -> bytes:
    return bytes.fromhex(text)


def legacy_keys(customer: Mapping[str, Any]) -> list[bytes]:
    """The ids a customer's stored state remembered itself before this memory: ``recent_ids``
    (24-byte records, the id's 16 bytes then its event time, as hex) or, before that,
    ``recent`` ({event_id: event time})."""
    if "recent_ids" in customer:
        data = bytes.fromhex(customer["recent_ids"])
        return [data[at:at + KEY_SIZE] for at in range(0, len(data) - len(data) % 24, 24)]
    return [id_key(event_id) for event_id in customer.get("recent", {})]
