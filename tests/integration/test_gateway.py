"""The HTTP gateway against the real broker: what it accepts is on the ledger, in Avro."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from producers.gateway import Gateway
from schemas.codec import WireCodec

from tests.integration.ledger_helpers import read_topic
from tests.unit.events import contact, survey

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(settings):
    gw = Gateway(settings, port=0)
    thread = threading.Thread(target=gw.serve_forever, daemon=True)
    thread.start()
    yield gw
    gw.shutdown()


def post(gw, body: bytes, content_type="application/json", path="/events"):
    request = urllib.request.Request(f"http://127.0.0.1:{gw.port}{path}", data=body,
                                     headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_batch_is_published_and_bad_events_are_named(settings, gateway):
    good = [contact(), survey()]
    bad = contact(transfers=-2)
    status, body = post(gateway, json.dumps([good[0], bad, good[1]]).encode())
    assert status == 422
    assert body["published"] == 2
    assert body["event_ids"] == [good[0]["event_id"], good[1]["event_id"]]
    assert body["rejected"] == [{"index": 1, "field": "transfers",
                                 "error": "field 'transfers': must be between 0 and 1000, got -2"}]
    messages = read_topic(settings, settings.topics.ledger, expected=2)
    decoded = sorted(WireCodec().decode(m.value())[0]["event_id"] for m in messages)
    assert decoded == sorted(e["event_id"] for e in good)
    assert {m.key().decode() for m in messages} == {good[0]["customer_id"]}


def test_json_lines_and_a_single_event(gateway):
    lines = "\n".join(json.dumps(e) for e in [contact(), contact()]).encode()
    assert post(gateway, lines, "application/x-ndjson")[0] == 202
    status, body = post(gateway, json.dumps(survey()).encode())
    assert (status, body["published"], body["rejected"]) == (202, 1, [])


def test_malformed_bodies_and_paths(gateway):
    status, body = post(gateway, b'{"event_type": ')
    assert status == 400 and "not valid JSON" in body["error"]
    assert post(gateway, b"{}", path="/nope")[0] == 404
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
