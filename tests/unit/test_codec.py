"""The Confluent wire format: our bytes, decoded independently, and bad bytes."""

import io
import json
import struct
from decimal import Decimal

import fastavro
import pytest

from schemas.catalogue import load_catalogue
from schemas.codec import Body, CavroBody, DecodeError, FastavroBody, WireCodec, cavro
from schemas.validation import normalize_event

from tests.unit.events import billing, contact, survey


@pytest.fixture(scope="module")
def codec():
    return WireCodec()


@pytest.mark.parametrize("make", [contact, survey, billing])
def test_round_trip(codec, make):
    record = normalize_event(make())
    decoded, schema_id = codec.decode(codec.encode(record))
    assert decoded == record
    assert schema_id == load_catalogue().latest(record["event_type"]).schema_id


def test_bytes_are_confluent_framed_and_readable_without_our_codec(codec):
    """Decode with plain fastavro and the .avsc file, as any Confluent consumer would."""
    record = normalize_event(billing(spend="1234.50"))
    data = codec.encode(record)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    version = load_catalogue().by_id()[schema_id]
    schema = fastavro.parse_schema(json.loads(version.path.read_text()))
    independent = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)
    assert independent["spend"] == Decimal("1234.50")
    assert str(independent["event_id"]) == record["event_id"]
    assert int(independent["occurred_at"].timestamp() * 1000) == record["occurred_at"]


def test_registry_ids_and_confluent_deserializer():
    """In registry mode our bytes carry the registry's id, and confluent-kafka's own
    AvroDeserializer reads them (confluent-kafka's in-memory registry client, ``mock://``)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from schemas.registry import RegistryIds

    registry = SchemaRegistryClient.new_client({"url": "mock://"})
    codec = WireCodec(RegistryIds(registry, auto_register=True))
    record = normalize_event(contact())
    data = codec.encode(record)
    registered = registry.get_latest_version("cxledger.events.ContactCompleted")
    assert struct.unpack(">bI", data[:5]) == (0, registered.schema_id)
    value = AvroDeserializer(registry)(data, SerializationContext("cx.ledger", MessageField.VALUE))
    assert value["contact_id"] == record["contact_id"]
    assert value["transfers"] == record["transfers"]
    # and a second process, knowing only the registry, decodes by id
    assert WireCodec(RegistryIds(registry)).decode(data) == (record, registered.schema_id)


def test_bad_magic_byte(codec):
    with pytest.raises(DecodeError, match="magic byte"):
        codec.decode(b"\x01\x00\x00\x00\x0e" + b"\x00" * 10)


def test_unknown_schema_id(codec):
    with pytest.raises(DecodeError, match="unknown schema id 4242"):
        codec.decode(struct.pack(">bI", 0, 4242) + b"\x00")


def test_truncated_body(codec):
    data = codec.encode(normalize_event(contact()))
    with pytest.raises(DecodeError, match="does not decode"):
        codec.decode(data[:20])


def test_too_short(codec):
    with pytest.raises(DecodeError, match="too short"):
        codec.decode(b"\x00\x01")


@pytest.fixture(scope="module")
def every_kind_of_record():
    """Simulated ledger events and what the folds derive from them: every type of both."""
    from processors.batch import PartitionFolds
    from processors.rules import load_rules
    from producers.simulator import simulate

    ledger = [normalize_event(e) for e in simulate(6000, seed=3)]
    derived = PartitionFolds(load_rules(), 1).fold_batch({0: ledger})
    records = ledger + derived
    assert len({r["event_type"] for r in records}) >= 25
    return records


BODIES = [FastavroBody] + ([CavroBody] if cavro is not None else [])


@pytest.mark.parametrize("body_class", BODIES, ids=lambda b: b.__name__)
def test_each_body_writes_what_fastavro_writes_and_reads_it_the_same(body_class,
                                                                    every_kind_of_record):
    """The codec's bodies (cavro where it has a wheel, fastavro elsewhere) against fastavro with
    the .avsc files, the reference: the same bytes for every record, the same record read back
    from them, and bytes after it counted."""
    catalogue = load_catalogue()
    bodies: dict[str, object] = {}
    for record in every_kind_of_record:
        version = catalogue.latest(record["event_type"])
        body = bodies.setdefault(version.event_type, body_class(version.definition))
        data = body.encode(record)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, version.parsed, record)
        assert data == buf.getvalue(), record["event_type"]
        framed = struct.pack(">bI", 0, version.schema_id) + data
        assert body.read(framed) == (record, 0)
        assert body.read(framed + b"\x00\x00")[1] == 2
    assert len(bodies) >= 25


def test_the_codec_uses_cavro_where_it_is_installed():
    assert Body is (CavroBody if cavro is not None else FastavroBody)


def test_the_codec_reads_back_what_it_writes(codec, every_kind_of_record):
    catalogue = load_catalogue()
    for record in every_kind_of_record:
        data = codec.encode(record)
        assert codec.decode(data) == (record, catalogue.latest(record["event_type"]).schema_id)


def test_trailing_bytes_are_named(codec):
    data = codec.encode(normalize_event(contact()))
    with pytest.raises(DecodeError, match="schema id [0-9]+: 2 trailing bytes after the record"):
        codec.decode(data + b"\x00\x00")


def test_a_sealed_value_is_read_without_looking_past_the_record(codec):
    """The seal fixes the bytes to what an encoder wrote: one record and nothing after it, so
    the reader does not look for more. A value cut short still fails."""
    record = normalize_event(contact())
    data = codec.encode(record)
    assert codec.decode(data, sealed=True)[0] == record
    assert codec.decode(data + b"\x00\x00", sealed=True)[0] == record
    with pytest.raises(DecodeError, match="does not decode"):
        codec.decode(data[:-3], sealed=True)


@pytest.mark.parametrize("body_class", BODIES, ids=lambda b: b.__name__)
def test_a_value_the_schema_cannot_hold_names_the_field(body_class):
    record = normalize_event(contact())
    record["transfers"] = "three"
    body = body_class(load_catalogue().latest("contact.completed").definition)
    with pytest.raises((ValueError, TypeError), match="transfers"):
        body.encode(record)
