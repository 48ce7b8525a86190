"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

The bodies are written and read with cavro (Avro in Cython, about twice fastavro's speed on our
events, byte for byte the same output: tests/unit/test_codec.py holds both to that), one
compiled schema per event type. cavro has wheels for x86-64 only and up to Python 3.12
(pyproject.toml installs it there); elsewhere fastavro does the same work. A message written
with an older version of a type's schema is read with fastavro, which resolves it to the latest
version (schema evolution is rare; speed there is not the point).

Schema ids: every process must map ids to schemas the same way (all with the same registry, or
all with ``schemas/ids.json``). Every schema starts with the envelope fields ``event_id`` and
``event_type`` (two Avro strings), so the event type a message holds can be read without its
schema; ``decode`` checks it against the type its schema id stands for here, and a message
framed with an id this process maps to another type (or does not know) whose body is one of
our events fails with ``schema ids disagree: ...`` (``framing_problem`` says so without
decoding; cxledger.schema_ids checks the topics with it at start).

Records are the in-memory "record form" of an event: a plain dict with the field names of the
contract, ``occurred_at`` (and other timestamps) as int epoch milliseconds, money as
``decimal.Decimal``, ids as str. Reading skips fastavro's timestamp/uuid conversions (the
bytes are plain long/string underneath) so decoding yields the record form directly and fast.
"""

from __future__ import annotations

import copy
import io
import struct
from typing import Any, Protocol

import fastavro

try:
    import cavro
except ImportError:  # no cavro wheel for this platform: fastavro writes and reads the bodies
    cavro = None

from schemas.catalogue import Catalogue, default_catalogue

MAGIC = 0
_HEADER = struct.Struct(">bI")
# Logical types whose Python conversion we skip when reading: the record form keeps the
# underlying long (epoch millis) and string (uuid). Decimal is kept: money stays exact.
_RAW_LOGICAL = {"timestamp-millis", "timestamp-micros", "uuid"}


class DecodeError(ValueError):
    """Bytes that are not a record we can read; the reason says why."""


class SchemaIds(Protocol):
    """Where schema ids come from: the committed catalogue or a schema registry."""

    def writer_id(self, event_type: str) -> int: ...

    def schema_for_id(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        """(event_type, schema definition) for a wire id; KeyError when unknown."""
        ...


class CatalogueIds:
    """Ids from ``schemas/ids.json``: no server needed, every process agrees."""

    def __init__(self, catalogue: Catalogue | None = None):
        self.catalogue = catalogue or default_catalogue()
        self._by_id = self.catalogue.by_id()

    def describe(self) -> str:
        return "ids from schemas/ids.json: no CXLEDGER_SCHEMA_REGISTRY_URL"

    def writer_id(self, event_type: str) -> int:
        return self.catalogue.latest(event_type).schema_id

    def schema_for_id(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        v = self._by_id[schema_id]
        return v.event_type, v.definition


def _describe(ids: Any) -> str:
    describe = getattr(ids, "describe", None)
    return describe() if callable(describe) else type(ids).__name__


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
        if node.get("logicalType") not in _RAW_LOGICAL and "logicalType" in node:
            out["logicalType"] = node["logicalType"]
        return out
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at ``pos``: (value, next position)."""
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _read_string(data: bytes, pos: int, limit: int = 256) -> tuple[str, int]:
    length, pos = _read_long(data, pos)
    if length < 0 or length > limit or pos + length > len(data):
        raise ValueError("not a short string")
    return data[pos:pos + length].decode("utf-8"), pos + length


def body_event_type(data: bytes) -> str | None:
    """The ``event_type`` of a Confluent-framed event without its schema (the envelope's second
    field, after ``event_id``), or None when the body does not start like an event of ours."""
    try:
        _, pos = _read_string(data, 5)
        event_type, _ = _read_string(data, pos)
    except (ValueError, UnicodeDecodeError):
        return None
    return event_type


def _decodes(data: bytes, definition: dict[str, Any]) -> bool:
    """``data`` (framed) is exactly one record of ``definition``."""
    buf = io.BytesIO(data)
    buf.seek(5)
    try:
        fastavro.schemaless_reader(buf, _reading_schema(definition), None)
    except Exception:
        return False
    return buf.tell() == len(data)


def _reading_schema(definition: dict[str, Any]) -> dict[str, Any]:
    return fastavro.parse_schema(_strip_logical(copy.deepcopy(definition)))


class FastavroBody:
    """A record schema's Avro bodies with fastavro; ``resolve``: the schema to read into when
    the body was written with another version."""

    def __init__(self, definition: dict[str, Any], resolve: dict[str, Any] | None = None):
        self.schema = _reading_schema(definition)
        self.resolve = _reading_schema(resolve) if resolve is not None else None

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def read(self, data: bytes, whole: bool = True) -> tuple[dict[str, Any], int]:
        """(record, bytes left after it) of a framed message's body (``whole`` is cavro's
        shortcut; fastavro knows where it stopped for free)."""
        buf = io.BytesIO(data)
        buf.seek(5)
        record = fastavro.schemaless_reader(buf, self.schema, self.resolve)
        return record, len(data) - buf.tell()


class CavroBody:
    """A record schema's Avro bodies with cavro, in record form (timestamps as longs, uuids as
    strings), as fastavro behaves: records are dicts both ways, a field missing from the record
    takes its default or, in a union with null, null."""

    def __init__(self, definition: dict[str, Any]):
        options = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True,
                                                missing_values_can_be_null=True)
        self.schema = cavro.Schema(_strip_logical(copy.deepcopy(definition)), options)
        # one byte more after the record must hit the end of the message (cavro stops after it)
        self.one_byte = cavro.Schema({"type": "fixed", "name": "one_byte", "size": 1}, options)

    def encode(self, record: dict[str, Any]) -> bytes:
        return self.schema.binary_encode(record)

    def read(self, data: bytes, whole: bool = True) -> tuple[dict[str, Any], int]:
        """(record, bytes left after it); with ``whole`` False the bytes after the record are
        not looked for (0): cavro tells where it stopped only by failing to read one byte
        more, an exception that is a third of the decoding's time."""
        if not whole:  # binary_decode stops after the record, a quarter faster than a reader
            return self.schema.binary_decode(data[5:]), 0
        reader = cavro.MemoryReader(memoryview(data)[5:])
        record = self.schema.binary_read(reader)
        try:
            self.one_byte.binary_read(reader)
        except EOFError:
            return record, 0
        return record, max(1, len(data) - 5 - len(self.schema.binary_encode(record)))


#: What writes and reads the bodies of the latest schema versions.
Body = CavroBody if cavro is not None else FastavroBody


class WireCodec:
    """Encode records to Confluent-framed Avro and decode them back."""

    def __init__(self, ids: SchemaIds | None = None, catalogue: Catalogue | None = None):
        self.catalogue = catalogue or default_catalogue()
        self.ids = ids or CatalogueIds(self.catalogue)
        self._writers: dict[str, tuple[bytes, Any]] = {}
        # schema id -> (event type, its body reader: ``Body`` when the id is the latest version
        # of its type, else fastavro resolving it to the latest)
        self._readers: dict[int, tuple[str, Any]] = {}

    # -- encoding -------------------------------------------------------------------------
    def _writer(self, event_type: str) -> tuple[bytes, Any]:
        writer = self._writers.get(event_type)
        if writer is None:
            schema_id = self.ids.writer_id(event_type)
            writer = (_HEADER.pack(MAGIC, schema_id),
                      Body(self.catalogue.latest(event_type).definition))
            self._writers[event_type] = writer
        return writer

    def encode(self, record: dict[str, Any]) -> bytes:
        """Framed Avro of a record; a value its schema cannot hold raises ValueError (cavro) or
        TypeError (fastavro) naming the field."""
        header, body = self._writer(record["event_type"])
        return header + body.encode(record)

    def schema_id_for(self, event_type: str) -> int:
        return self.ids.writer_id(event_type)

    # -- decoding -------------------------------------------------------------------------
    def _reader(self, schema_id: int) -> tuple[str, Any]:
        reader = self._readers.get(schema_id)
        if reader is None:
            try:
                event_type, definition = self.ids.schema_for_id(schema_id)
            except KeyError:
                raise DecodeError(f"unknown schema id {schema_id}") from None
            latest = self.catalogue.versions.get(event_type)
            if latest and latest[-1].definition != definition:
                reader = (event_type, FastavroBody(definition, latest[-1].definition))
            else:
                reader = (event_type, Body(definition))
            self._readers[schema_id] = reader
        return reader

    def decode(self, data: bytes | None, sealed: bool = False) -> tuple[dict[str, Any], int]:
        """(record, schema id). Raises DecodeError with the reason for bad bytes.

        ``sealed``: the message carries the SDK's valid seal (``schemas.seal``), so its value
        is exactly what an encoder wrote, one record and nothing after it, and bytes after the
        record are not looked for."""
        if data is None or len(data) < 5:
            raise DecodeError(f"message too short for Confluent framing ({len(data or b'')} bytes)")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"bad magic byte {magic} (expected 0: Confluent wire format)")
        try:
            event_type, body = self._reader(schema_id)
        except DecodeError:
            raise DecodeError(self.framing_problem(data) or f"unknown schema id {schema_id}"
                              ) from None
        try:
            record, trailing = body.read(data, not sealed)
        except Exception as exc:  # EOFError, ValueError, IndexError, UnicodeDecodeError...
            raise DecodeError(self.framing_problem(data) or
                              f"schema id {schema_id}: Avro body does not decode: {exc!r}") from exc
        if trailing:
            raise DecodeError(self.framing_problem(data) or
                              f"schema id {schema_id}: {trailing} trailing bytes after the "
                              "record")
        if record.get("event_type") != event_type:
            raise DecodeError(self.framing_problem(data) or
                              f"schema id {schema_id} is {event_type}, the record says "
                              f"{str(record.get('event_type'))[:80]!r}")
        return record, schema_id

    def framing_problem(self, data: bytes | None) -> str | None:
        """Why ``data`` shows that its writer maps schema ids differently from this codec, or
        None: the body is one of our events (its event_type names a type of the catalogue, and
        it decodes with one of that type's schemas) but its id stands for another type here, or
        for nothing. Garbage is not evidence: None."""
        if data is None or len(data) < 5 or data[0] != MAGIC:
            return None
        schema_id = _HEADER.unpack_from(data)[1]
        body_type = body_event_type(data)
        if body_type is None or body_type not in self.catalogue.versions:
            return None
        try:
            mapped, _ = self._reader(schema_id)
        except DecodeError:
            mapped = None
        if mapped == body_type:
            return None
        if not any(_decodes(data, version.definition)
                   for version in reversed(self.catalogue.versions[body_type])):
            return None
        why = (f"its writer maps schema ids to schemas differently from this process "
               f"({_describe(self.ids)}): a schema registry versus schemas/ids.json, another "
               "registry, or a newer cxledger")
        if mapped is None:
            return f"unknown schema id {schema_id}: the body is a {body_type} event; {why}"
        return (f"schema ids disagree: schema id {schema_id} is {mapped} here, the body is a "
                f"{body_type} event; {why}")
