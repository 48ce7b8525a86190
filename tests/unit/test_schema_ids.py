"""Schema ids: a registry's ids against schemas/ids.json, and ``register_all`` on ``mock://``."""

from __future__ import annotations

import pytest
from confluent_kafka.schema_registry import Schema

from schemas.catalogue import default_catalogue
from schemas.codec import DecodeError, WireCodec, body_event_type
from schemas.registry import RegistryIds, register_all, registry_client
from schemas.validation import normalize_event
from tests.unit.events import contact as contact_event, survey as survey_event


def contact():
    return normalize_event(contact_event())


def survey():
    return normalize_event(survey_event())


def test_register_all_works_on_the_mock_registry():
    catalogue = default_catalogue()
    client = registry_client("mock://register-all")
    registered = register_all(client, catalogue)
    assert set(registered) == {v[-1].full_name for v in catalogue.versions.values()}
    assert [len(ids) for ids in registered.values()] == [len(v) for v in
                                                         catalogue.versions.values()]
    ids = [i for found in registered.values() for i in found]
    assert len(set(ids)) == len(ids)
    assert register_all(client, catalogue) == registered  # idempotent
    # a codec on the same client writes the registered ids and reads them back
    codec = WireCodec(RegistryIds(client, catalogue))
    record = survey()
    data = codec.encode(record)
    assert codec.decode(data)[0]["event_id"] == record["event_id"]
    assert int.from_bytes(data[1:5], "big") == registered[
        catalogue.latest("survey.responded").full_name][-1]


def registry_codec_with_other_ids() -> WireCodec:
    """A codec whose ids come from a fresh (mock) registry: 1, 2, 3, ... in registration
    order, here the reverse of the catalogue's, so they collide with ids.json's for other
    schemas, as a fresh registry's do."""
    catalogue = default_catalogue()
    client = registry_client("mock://other-ids")
    for versions in reversed(list(catalogue.versions.values())):
        for version in versions:
            client.register_schema(version.full_name, Schema(version.text, "AVRO"))
    return WireCodec(RegistryIds(client, catalogue))


def test_a_message_framed_with_another_mapping_is_recognised_not_misread():
    registry, local = registry_codec_with_other_ids(), WireCodec()
    record = contact()
    data = registry.encode(record)
    registry_id = int.from_bytes(data[1:5], "big")
    assert registry_id != local.schema_id_for("contact.completed")
    assert body_event_type(data) == "contact.completed"
    problem = local.framing_problem(data)
    assert problem and "contact.completed" in problem and "schemas/ids.json" in problem
    with pytest.raises(DecodeError) as info:
        local.decode(data)
    assert str(info.value) == problem
    assert str(info.value).startswith(("schema ids disagree", "unknown schema id"))
    # and the other way round
    back = local.encode(record)
    assert registry.framing_problem(back) and "schema registry" in registry.framing_problem(back)
    # the same mapping on both sides: nothing to say
    assert local.framing_problem(back) is None and registry.framing_problem(data) is None


def test_garbage_is_not_evidence_of_another_mapping():
    local = WireCodec()
    for data in (None, b"", b"\x00\x00", b"not avro", b"\x00\x00\x00\x10\x92" + b"\x01" * 8,
                 b"\x00\x00\x00\x00\x0e\xff"):
        assert local.framing_problem(data) is None
    with pytest.raises(DecodeError, match="^unknown schema id 4242$"):
        local.decode(b"\x00\x00\x00\x10\x92" + b"\x01" * 8)
    # a valid body under an id nobody has keeps the reason the hostile catalogue expects
    data = local.encode(contact())
    with pytest.raises(DecodeError, match="^unknown schema id 4242: the body is a "
                                          "contact.completed event"):
        local.decode(data[:1] + (4242).to_bytes(4, "big") + data[5:])
