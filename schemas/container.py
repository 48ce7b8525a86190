"""Confluent-framed messages as one Avro object container, for ClickHouse to decode.

ClickHouse reads Avro itself (``FORMAT Avro``: an object container file, as the Avro
specification defines it: magic, the writer schema in the file's metadata, then blocks of
records between sync markers). The body of a Confluent-framed message is one record of its
writer schema, so the bodies of messages that share a schema id, joined, are the data of one
block: nothing is decoded or encoded again in Python.

Only bodies known to hold exactly one record belong in a block (a sealed message,
``schemas.seal``): a body with bytes after its record would shift the records after it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

MAGIC = b"Obj\x01"


def zigzag_long(n: int) -> bytes:
    """An Avro ``long``: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_bytes(data: bytes) -> bytes:
    return zigzag_long(len(data)) + data


def object_container(schema: dict[str, Any], bodies: Sequence[bytes],
                     sync: bytes | None = None) -> bytes:
    """An Avro object container (codec null) whose one block holds ``bodies``, each the Avro
    encoding of one record of ``schema`` (a message's value after its 5-byte framing)."""
    sync = sync or os.urandom(16)
    metadata = (zigzag_long(2)
                + _avro_bytes(b"avro.schema") + _avro_bytes(json.dumps(schema).encode())
                + _avro_bytes(b"avro.codec") + _avro_bytes(b"null")
                + zigzag_long(0))
    data = b"".join(bodies)
    return b"".join((MAGIC, metadata, sync,
                     zigzag_long(len(bodies)), zigzag_long(len(data)), data, sync))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the Avro ``long`` at ``pos``."""
    shift = n = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


_FIXED_SIZE = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _skip(data: bytes, pos: int, avro_type: Any, named: dict[str, Any]) -> int:
    """The position after a value of ``avro_type`` (no records, arrays or maps) at ``pos``."""
    if isinstance(avro_type, list):  # a union: the branch's index, then the branch
        branch, pos = _varint(data, pos)
        return _skip(data, pos, avro_type[branch], named)
    if isinstance(avro_type, dict):
        if avro_type["type"] in ("enum", "fixed"):
            named[avro_type["name"]] = avro_type
        if avro_type["type"] == "fixed":
            return pos + avro_type["size"]
        if avro_type["type"] == "enum":
            return _varint(data, pos)[1]
        return _skip(data, pos, avro_type["type"], named)
    if avro_type in named:
        return _skip(data, pos, named[avro_type], named)
    if avro_type in _FIXED_SIZE:
        return pos + _FIXED_SIZE[avro_type]
    if avro_type in ("int", "long"):
        return _varint(data, pos)[1]
    if avro_type in ("string", "bytes"):
        size, pos = _varint(data, pos)
        return pos + size
    raise ValueError(f"cannot skip a value of Avro type {avro_type!r}")


def items_in(schema: dict[str, Any], body: bytes, field_name: str) -> int:
    """How many items the array field ``field_name`` of a record of ``schema`` holds in its
    first block, read from the record's Avro ``body`` without decoding it (the fields before
    it must be of simple types). cavro and fastavro write an array as one block, so for our
    messages this is the array's length: the count a sink reports for records that
    ClickHouse decodes."""
    names = [field["name"] for field in schema["fields"]]
    if field_name not in names:
        raise KeyError(f"no field {field_name!r} in {schema.get('name')}")
    pos, named = 0, {}
    for field in schema["fields"][:names.index(field_name)]:
        pos = _skip(body, pos, field["type"], named)
    return abs(_varint(body, pos)[0])  # negative: a block whose size follows
