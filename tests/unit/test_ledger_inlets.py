"""The ledger inlet's container (sinks.ledger_inlets): a framed body is a record of the
container schema (read back by fastavro here), the shapes and the table's Variant agree, and a
field the view cannot write as the JSON form does has no shape."""

from __future__ import annotations

import io

import fastavro
import pytest

from schemas.catalogue import default_catalogue
from schemas.codec import WireCodec
from schemas.validation import normalize_event
from sinks.ledger_inlets import (InletSchema, Unsupported, first_string, migration_sql, shape,
                                 shapes, split_variant)
from tests.unit.events import billing, contact, operational

CATALOGUE = default_catalogue()
VARIANT = "Variant(" + ", ".join(shapes(CATALOGUE)) + ")"


def test_a_framed_body_reads_as_its_position_and_its_event():
    framing = InletSchema.for_table(VARIANT, CATALOGUE)
    codec = WireCodec()
    records = [normalize_event(e) for e in (
        billing(spend="12.50"), contact(), operational("staff.exam_scored", exam_id="e-1",
                                                       hall_id=None, score=88.5))]
    framed, events = [], []
    for position, record in enumerate(records, start=1_000_000):
        value = codec.encode(record)
        schema_id = int.from_bytes(value[1:5], "big")
        definition = codec.ids.schema_for_id(schema_id)[1]
        branch = framing.branch(definition)
        assert branch is not None
        framed.append(framing.framed(7, position, schema_id, branch, value[5:]))
        events.append(fastavro.schemaless_reader(io.BytesIO(value[5:]),
                                                 fastavro.parse_schema(definition)))
    schema = fastavro.parse_schema(framing.container)
    buffer = io.BytesIO(b"".join(framed))
    for position, event in enumerate(events, start=1_000_000):
        read = fastavro.schemaless_reader(buffer, schema)
        assert (read["kafka_partition"], read["kafka_offset"]) == (7, position)
        assert read["event"] == event
    assert buffer.read() == b""


def test_event_types_with_the_same_fields_share_a_shape_and_every_type_has_one():
    types = CATALOGUE.interaction_types
    found = shapes(CATALOGUE)
    assert len(found) < len(types)
    assert {shape(CATALOGUE.latest(t).definition) for t in types} == set(found)
    assert split_variant(VARIANT) == list(found)
    assert "allow_suspicious_variant_types = 1" in migration_sql(CATALOGUE)


def test_the_variant_as_clickhouse_writes_it_is_split_at_its_top_level_commas():
    written = ("Variant(Tuple(a Enum8('x,)' = 0, 'y' = 1), b Nullable(String)), "
               "Tuple(c Decimal(14, 2), d Array(String)))")
    assert split_variant(written) == ["Tuple(a Enum8('x,)' = 0, 'y' = 1), b Nullable(String))",
                                      "Tuple(c Decimal(14, 2), d Array(String))"]
    assert split_variant("String") == []


def test_a_store_with_a_shape_this_build_does_not_know_gets_no_framing():
    unknown = VARIANT[:-1] + ", Tuple(event_id UUID, other String))"
    assert InletSchema.for_table(unknown, CATALOGUE) is None


@pytest.mark.parametrize("field_type", [
    {"type": "map", "values": "string"}, "bytes", "float",
    {"type": "long", "logicalType": "timestamp-millis"},
    {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 4},
    ["null", "string", "int"]])
def test_a_field_the_view_cannot_write_as_the_json_form_does_has_no_shape(field_type):
    definition = dict(CATALOGUE.latest("complaint.closed").definition)
    definition["fields"] = [*definition["fields"], {"name": "extra", "type": field_type}]
    with pytest.raises(Unsupported, match="extra"):
        shape(definition)


def test_the_event_id_is_read_from_the_front_of_the_body():
    record = normalize_event(contact())
    assert first_string(WireCodec().encode(record)[5:]) == record["event_id"]
    with pytest.raises(ValueError):
        first_string(b"\x50abc")
