"""Confluent wire format on fastavro: magic byte 0, 4-byte big-endian schema id, Avro body.

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

    def writer_id(self, event_type: str) -> int:
        return self.catalogue.latest(event_type).schema_id

    def schema_for_id(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        v = self._by_id[schema_id]
        return v.event_type, v.definition


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
        if node.get("logicalType") not in _RAW_LOGICAL and "logicalType" in node:
            out["logicalType"] = node["logicalType"]
        return out
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _reading_schema(definition: dict[str, Any]) -> dict[str, Any]:
    return fastavro.parse_schema(_strip_logical(copy.deepcopy(definition)))


class WireCodec:
    """Encode records to Confluent-framed Avro and decode them back."""

    def __init__(self, ids: SchemaIds | None = None, catalogue: Catalogue | None = None):
        self.catalogue = catalogue or default_catalogue()
        self.ids = ids or CatalogueIds(self.catalogue)
        self._writers: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._readers: dict[int, tuple[str, dict[str, Any], dict[str, Any] | None]] = {}

    # -- encoding -------------------------------------------------------------------------
    def _writer(self, event_type: str) -> tuple[bytes, dict[str, Any]]:
        writer = self._writers.get(event_type)
        if writer is None:
            schema_id = self.ids.writer_id(event_type)
            writer = (_HEADER.pack(MAGIC, schema_id), self.catalogue.latest(event_type).parsed)
            self._writers[event_type] = writer
        return writer

    def encode(self, record: dict[str, Any]) -> bytes:
        header, schema = self._writer(record["event_type"])
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    def schema_id_for(self, event_type: str) -> int:
        return self.ids.writer_id(event_type)

    # -- decoding -------------------------------------------------------------------------
    def _reader(self, schema_id: int) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        reader = self._readers.get(schema_id)
        if reader is None:
            try:
                event_type, definition = self.ids.schema_for_id(schema_id)
            except KeyError:
                raise DecodeError(f"unknown schema id {schema_id}") from None
            writer = _reading_schema(definition)
            latest = self.catalogue.versions.get(event_type)
            resolve = None
            if latest and latest[-1].definition != definition:
                resolve = _reading_schema(latest[-1].definition)
            reader = (event_type, writer, resolve)
            self._readers[schema_id] = reader
        return reader

    def decode(self, data: bytes | None) -> tuple[dict[str, Any], int]:
        """(record, schema id). Raises DecodeError with the reason for bad bytes."""
        if data is None or len(data) < 5:
            raise DecodeError(f"message too short for Confluent framing ({len(data or b'')} bytes)")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"bad magic byte {magic} (expected 0: Confluent wire format)")
        _, writer, reader = self._reader(schema_id)
        buf = io.BytesIO(data)
        buf.seek(5)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
            raise DecodeError(f"schema id {schema_id}: Avro body does not decode: {exc!r}") from exc
        if buf.tell() != len(data):
            raise DecodeError(
                f"schema id {schema_id}: {len(data) - buf.tell()} trailing bytes after the record"
            )
        return record, schema_id
