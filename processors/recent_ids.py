"""A customer's latest event ids, for duplicate detection, kept in one ``bytes`` object.

A producer's retry reuses the event_id, so the fold remembers the ids of each customer's latest
events (``processors.ledger``: DUPLICATE_HORIZON_MS, DUPLICATE_MEMORY) and does not fold an id
twice. Kept as a dict of 36-character strings to ints, that memory took about 2.4 KB per
customer, the largest share of a worker that has met 120,000 customers. Here it is one ``bytes``
of 24-byte records, oldest first: the id's 16 bytes, then its event time (epoch ms, signed,
little-endian). 16 ids take 417 bytes, and nothing the cycle collector has to track.

An event id is a UUID (the contract's logical type; ``ledger_events.event_id`` is a ClickHouse
UUID) and is kept as its 16 bytes, so ids that name the same UUID are the same id, as they are
in the ledger. Any other string is kept as its 16-byte BLAKE2b digest, as unlikely to collide as
two random UUIDs.

The stored state (``processors.changelog``) holds the records as one hex string.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Mapping

_RECORD = struct.Struct("<16sq")
_AT = struct.Struct("<q")
RECORD_SIZE = _RECORD.size
_ID_SIZE = 16
NONE = b""


def id_key(event_id: str) -> bytes:
    """The 16 bytes an event id is remembered by."""
    try:
        key = bytes.fromhex(event_id.replace("-", ""))
        if len(key) == _ID_SIZE and len(event_id) == 36:
            return key
    except ValueError:
        pass
    return hashlib.blake2b(event_id.encode(), digest_size=_ID_SIZE).digest()


def holds(recent: bytes, key: bytes) -> bool:
    """True when ``key`` is one of the remembered ids."""
    at = recent.find(key)
    while at >= 0:
        if at % RECORD_SIZE == 0:  # an id, not 16 bytes across a time and the next id
            return True
        at = recent.find(key, at + 1)
    return False


def first_at(recent: bytes) -> int:
    """The event time of the oldest remembered id (``recent`` must not be empty)."""
    return _AT.unpack_from(recent, _ID_SIZE)[0]


def since(recent: bytes, oldest: int) -> bytes:
    """The records of ids whose event time is ``oldest`` or later."""
    return b"".join(recent[i:i + RECORD_SIZE] for i in range(0, len(recent), RECORD_SIZE)
                    if _AT.unpack_from(recent, i + _ID_SIZE)[0] >= oldest)


def remember(recent: bytes, key: bytes, at: int, oldest: int, memory: int) -> bytes:
    """``recent`` with ``key`` (event time ``at``) added last, without the ids older than
    ``oldest`` when the oldest is, and at most the latest ``memory`` ids."""
    recent += _RECORD.pack(key, at)
    if len(recent) > RECORD_SIZE and _AT.unpack_from(recent, _ID_SIZE)[0] < oldest:
        recent = since(recent, oldest)
    if len(recent) > memory * RECORD_SIZE:
        recent = recent[-memory * RECORD_SIZE:]
    return recent


def to_plain(recent: bytes) -> str:
    return recent.hex()


def from_plain(text: str) -> bytes:
    recent = bytes.fromhex(text)
    if len(recent) % RECORD_SIZE:
        raise ValueError(f"remembered event ids: {len(recent)} bytes is not a whole number of "
                         f"{RECORD_SIZE}-byte records")
    return recent


def from_ids(ids: Mapping[str, int]) -> bytes:
    """From ``{event_id: event time}`` in the order remembered (the stored form before
    ``to_plain``)."""
    return b"".join(_RECORD.pack(id_key(event_id), at) for event_id, at in ids.items())


def event_ids(recent: bytes) -> dict[str, int]:
    """``{event_id: event time}``, oldest first; a non-UUID id shows as its digest."""
    return {str(uuid.UUID(bytes=key)): at for key, at in _RECORD.iter_unpack(recent)}
