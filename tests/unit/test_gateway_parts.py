"""The gateway's parts without a broker: the OpenAPI document, API keys and their settings,
rate limits, body parsing, and per-request acknowledgement bookkeeping."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from cxledger.config import ConfigError, load_settings
from producers.acks import Acks, Batch, with_event_id
from producers.api_keys import KeyRing, hash_key, new_api_key
from producers.openapi import openapi_document
from producers.rate_limit import RateLimiter, TokenBucket
from producers.request_body import BodyTooLarge, MalformedBody, parse_events, read_limited
from schemas import validation
from schemas.catalogue import DERIVED_TYPES, default_catalogue


# -- the OpenAPI document -------------------------------------------------------------------
def test_every_interaction_type_is_a_schema_and_no_derived_type_is_publishable():
    document = openapi_document()
    schemas = document["components"]["schemas"]
    catalogue = default_catalogue()
    by_type = {s["title"]: s for s in schemas.values() if "title" in s}
    assert sorted(by_type) == sorted(catalogue.interaction_types)
    text = json.dumps(document["components"]["schemas"]["Event"])
    assert not any(f'"{t}"' in text for t in DERIVED_TYPES)
    for event_type, schema in by_type.items():
        fields = catalogue.latest(event_type).field_names
        assert list(schema["properties"]) == list(fields)
        assert schema["properties"]["event_type"]["enum"] == [event_type]
        assert "event_id" not in schema["required"]
        assert schema["additionalProperties"] is False
        assert "unknown" not in schema["properties"]["channel"]["enum"]


def test_ranges_and_formats_are_validations_own():
    schemas = openapi_document()["components"]["schemas"]
    contact, survey = schemas["ContactCompleted"], schemas["SurveyResponded"]
    for name in ("wait_seconds", "transfers"):
        prop = contact["properties"][name]
        assert (prop["minimum"], prop["maximum"]) == validation._RANGES[name]
    assert (survey["properties"]["nps"]["minimum"],
            survey["properties"]["nps"]["maximum"]) == validation._RANGES["nps"]
    assert survey["properties"]["nps"]["nullable"] is True
    assert validation._CITY.pattern in contact["properties"]["city"]["pattern"]
    assert contact["properties"]["direction"]["enum"] == ["inbound", "outbound"]
    assert "contact_id" in contact["required"] and "intent" not in contact["required"]


# -- API keys and their settings ------------------------------------------------------------
def test_a_new_key_round_trips_through_toml_json_and_a_keys_file(tmp_path):
    key, entry = new_api_key("callcentre", channels=("phone", "ivr"), event_types=("complaint.*",),
                             rate=50, burst=100)
    assert key.startswith("cxl_") and len(key) > 40 and entry.sha256 == hash_key(key)
    config = tmp_path / "c.toml"
    config.write_text(entry.toml())
    assert load_settings(config, environ={}).gateway_keys == (entry,)
    env = {"CXLEDGER_GATEWAY_KEYS": json.dumps({"callcentre": entry.as_json()})}
    assert load_settings(environ=env).gateway_keys == (entry,)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"callcentre": entry.as_json()}))
    assert load_settings(environ={"CXLEDGER_GATEWAY_KEYS_FILE": str(keys_file)}).gateway_keys == (
        entry,)
    # what `up` hands its gateway child: the settings as TOML, keys included, never the key
    settings = load_settings(environ={}).with_(gateway_keys=(entry,))
    child = tmp_path / "child.toml"
    child.write_text(settings.to_toml())
    assert load_settings(child, environ={}).gateway_keys == (entry,)
    assert key not in settings.to_toml()


@pytest.mark.parametrize("entry, complaint", [
    ({"sha256": "abc", "channels": ["*"], "event_types": ["*"]}, "sha256"),
    ({"sha256": "a" * 64, "event_types": ["*"]}, "channels"),
    ({"sha256": "a" * 64, "channels": ["*"], "event_types": ["*"], "rte": 3}, "unknown field"),
    ({"sha256": "a" * 64, "channels": ["*"], "event_types": ["*"], "rate": 0}, "rate"),
])
def test_a_bad_key_entry_is_a_config_error_that_says_what_to_fix(entry, complaint):
    with pytest.raises(ConfigError, match=complaint):
        load_settings(environ={"CXLEDGER_GATEWAY_KEYS": json.dumps({"k": entry})})


def test_keys_are_recognised_by_either_header_and_scoped():
    key, entry = new_api_key("cc", channels=("phone",), event_types=("complaint.*",))
    ring = KeyRing(load_settings(environ={}).with_(gateway_keys=(entry,)))
    assert ring.authenticate({"authorization": f"Bearer {key}"}).name == "cc"
    assert ring.authenticate({"x-api-key": key}).name == "cc"
    assert ring.authenticate({"authorization": "Bearer cxl_other"}) is None
    assert ring.authenticate({}) is None
    api_key = ring.authenticate({"x-api-key": key})
    assert api_key.refusal({"event_type": "complaint.filed", "channel": "phone"}) is None
    assert api_key.refusal({"event_type": "contact.completed", "channel": "phone"})[0] == \
        "event_type"
    assert api_key.refusal({"event_type": "complaint.filed", "channel": "email"})[0] == "channel"
    assert api_key.refusal({"channel": 5}) is None  # malformed: validation's to reject


def test_a_scope_that_names_nothing_is_refused_at_start():
    _, entry = new_api_key("cc", channels=("phnoe",))
    with pytest.raises(ValueError, match="'phnoe' matches nothing"):
        KeyRing(load_settings(environ={}).with_(gateway_keys=(entry,)))


# -- rate limits ----------------------------------------------------------------------------
def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=10, burst=5, updated=100.0)
    assert bucket.take(5, now=100.0) == 0
    assert bucket.take(1, now=100.0) == pytest.approx(0.1)
    assert bucket.take(1, now=100.1) == 0
    assert bucket.take(3, now=101.0) == 0  # refilled to the burst, not past it
    limiter = RateLimiter()
    assert limiter.take("k", 1, 2, 2) == 0 and limiter.take("k", 1, 2, 1) == 1
    assert limiter.wait("k", 1, 2) == 1


# -- bodies ---------------------------------------------------------------------------------
def test_bodies_parse_as_json_or_ndjson_or_say_where_they_break():
    assert parse_events(b'{"a": 1}', ndjson=False) == [{"a": 1}]
    assert parse_events(b'[{"a": 1}, 2]', ndjson=False) == [{"a": 1}, 2]
    assert parse_events(b'{"a": 1}\n\n{"b": 2}\n', ndjson=True) == [{"a": 1}, {"b": 2}]
    for body, ndjson, message in [(b'{"a": 1}\n{"b"', True, "line 2"),
                                  (b"\xff", False, "not UTF-8"),
                                  (b'{"a": NaN}', False, "NaN"),
                                  (b"[" * 100_000, False, "nested too deeply"),
                                  (b"1" * 5000, False, "not usable JSON")]:
        with pytest.raises(MalformedBody, match=message):
            parse_events(body, ndjson)


def test_a_body_is_never_read_past_its_limit():
    read = []

    async def chunks():
        for _ in range(100):
            read.append(1)
            yield b"x" * 1000

    with pytest.raises(BodyTooLarge):
        asyncio.run(read_limited(chunks(), 2500))
    assert len(read) == 3
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_limited(chunks(), 2500, declared_length="99999"))
    assert asyncio.run(read_limited(chunks(), 100_000)) == b"x" * 100_000


# -- acknowledgements ------------------------------------------------------------------------
def test_each_request_waits_for_its_own_events_only():
    async def scenario():
        loop = asyncio.get_running_loop()
        acks = Acks(lambda: {("t", 0): 7})
        first, second = Batch(loop), Batch(loop)
        for batch, ids in ((first, ["a", "b"]), (second, ["b", "c"])):
            for event_id in ids:
                acks.expect(batch, event_id)
        acks.delivered("a")  # before the request has sent everything: not done yet
        acks.seal(first)
        acks.seal(second)
        acks.delivered("b")
        await asyncio.sleep(0)
        assert first.done.done() and first.positions == {("t", 0): 7}
        assert not second.done.done()
        acks.failed("c", "broker said no")
        acks.delivered("b")
        await asyncio.sleep(0)
        assert second.done.done() and second.failed == {"c": "broker said no"}
        assert acks.in_flight_total == 0

        late = Batch(loop)
        acks.expect(late, "d")
        acks.seal(late)
        assert acks.abort("stopping") == 1
        await asyncio.sleep(0)
        assert late.done.done() and late.failed == {"d": "stopping"}
        assert acks.unreported() == ["d"]

    asyncio.run(scenario())


def test_the_event_id_is_known_before_the_event_is_sent():
    event, event_id = with_event_id({"event_type": "x"})
    assert event["event_id"] == event_id and uuid.UUID(event_id)
    upper = str(uuid.uuid4()).upper()
    assert with_event_id({"event_id": upper})[1] == upper.lower()
    assert with_event_id({"event_id": "nope"})[1] is None
    assert with_event_id([1])[1] is None


def test_cxledger_gateway_key_prints_the_key_once_and_its_entry(capsys):
    from cxledger.cli import build_parser, cmd_gateway

    def run(*argv: str) -> int:
        return cmd_gateway(build_parser().parse_args(["gateway", "key", *argv]), None)

    assert run("--name", "hall", "--channels", "service_hall",
               "--event-types", "contact.completed,survey.*", "--format", "json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["entry"] == {"sha256": hash_key(printed["key"]),
                                "channels": ["service_hall"],
                                "event_types": ["contact.completed", "survey.*"]}
    assert run("--name", "hall") == 0
    text = capsys.readouterr().out
    assert "[gateway.keys.hall]" in text and 'channels = ["*"]' in text
    with pytest.raises(SystemExit, match="matches nothing"):
        run("--name", "hall", "--event-types", "complaint.filled")
