"""The HTTP ingest gateway over real HTTP, against the real broker and the real store.

Each test runs the gateway in this process (uvicorn in a thread, on a free port) with topics
of its own; the shutdown test runs ``cxledger gateway`` as a process, as ``cxledger up`` and a
container do.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cxledger.localstack import free_port
from producers.api_keys import new_api_key
from producers.gateway import Gateway
from sinks.ledger_sink import ledger_sink
from tests.integration.ledger_helpers import read_topic
from tests.unit.events import contact, survey

pytestmark = pytest.mark.integration

ALL_KEY, ALL = new_api_key("everything")
PHONE_KEY, PHONE = new_api_key("callcentre", channels=("phone", "ivr"),
                               event_types=("contact.completed", "complaint.*"))
SLOW_KEY, SLOW = new_api_key("slow", rate=0.05, burst=3)  # a token per 20 s


# -- HTTP helpers ---------------------------------------------------------------------------
def request(gw: Gateway, path: str, body: bytes | None = None, key: str | None = None,
            content_type: str = "application/json", method: str | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(gw.url + path, data=body, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(gw: Gateway, events, key: str | None = ALL_KEY, path: str = "/v1/events",
         **kw) -> tuple[int, dict]:
    status, _, body = request(gw, path, json.dumps(events).encode(), key, **kw)
    return status, json.loads(body)


def get(gw: Gateway, path: str) -> tuple[int, bytes]:
    status, _, body = request(gw, path, method="GET")
    return status, body


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The value of one sample of the gateway's /metrics (0 when absent)."""
    status, text = get(gw, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


@pytest.fixture
def gateway(settings):
    with Gateway(settings.with_(gateway_keys=(ALL, PHONE, SLOW), gateway_max_events=20,
                                gateway_max_body_bytes=32 * 1024), port=0) as gw:
        yield gw


# -- tests ----------------------------------------------------------------------------------
def test_accepted_events_are_stored_before_the_answer_and_a_retry_adds_nothing(settings,
                                                                               clickhouse):
    """The single-machine stack's promise: a 2xx means in the store. Bad events are named by
    field; the same request sent again leaves one row per event; counters move."""
    settings = settings.with_(acks_wait_for_store=True, gateway_keys=(ALL,))
    prefix = f"gw-{uuid.uuid4().hex[:8]}"
    with Gateway(settings, port=0) as gw:
        status, body = get(gw, "/readyz")
        assert status == 503 and "nothing writes the ledger" in json.loads(body)["store"]
        sink = ledger_sink(settings, clickhouse)
        stop = threading.Event()
        writer = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        writer.start()
        try:
            wait_until(lambda: get(gw, "/readyz")[0] == 200, 30, "ready once the sink runs")
            good = [contact(customer_id=f"{prefix}-1"), survey(customer_id=f"{prefix}-2")]
            batch = [good[0], contact(customer_id=f"{prefix}-1", transfers=-2), good[1],
                     contact(customer_id=f"{prefix}-3", city="Lanzhou"), {"event_type": "x"}]
            status, body = post(gw, batch)
            assert status == 207, body
            assert (body["accepted"], body["rejected"]) == (2, 3)
            assert body["results"][0] == {"index": 0, "status": "accepted",
                                          "event_id": good[0]["event_id"]}
            assert body["results"][1] == {"index": 1, "status": "rejected", "field": "transfers",
                                          "reason": "must be between 0 and 1000, got -2"}
            assert [r.get("field") for r in body["results"][3:]] == ["city", "event_type"]

            assert post(gw, batch) == (status, body)  # the client retries: same answer

            lines = [contact(customer_id=f"{prefix}-4"), contact(customer_id=f"{prefix}-4")]
            status, _, raw = request(gw, "/v1/events:batch",
                                     "\n".join(json.dumps(e) for e in lines).encode(), ALL_KEY,
                                     content_type="application/x-ndjson")
            assert status == 202, raw
            unnamed = {k: v for k, v in contact(customer_id=f"{prefix}-5").items()
                       if k != "event_id"}
            status, body = post(gw, unnamed, path="/events")  # the older route, one event
            assert status == 202 and body["results"][0]["status"] == "accepted"
            generated = body["results"][0]["event_id"]
            assert post(gw, [contact(transfers=-1)])[0] == 422
            assert metric(gw, "cxledger_gateway_events_total", event_type="contact.completed",
                          key="everything", outcome="accepted") == 5
            assert metric(gw, "cxledger_gateway_requests_total", route="/v1/events",
                          status="207") == 2
            assert metric(gw, "cxledger_gateway_request_duration_seconds_count",
                          route="/v1/events:batch") == 1
            assert metric(gw, "process_resident_memory_bytes") > 0
        finally:
            stop.set()
            writer.join(timeout=30)
    stored = clickhouse.query(
        "SELECT toString(event_id), customer_id FROM ledger WHERE customer_id LIKE {p:String}",
        parameters={"p": f"{prefix}-%"}).result_rows
    assert sorted(stored) == sorted([(good[0]["event_id"], f"{prefix}-1"),
                                     (good[1]["event_id"], f"{prefix}-2"),
                                     *((e["event_id"], f"{prefix}-4") for e in lines),
                                     (generated, f"{prefix}-5")])


def test_keys_decide_who_publishes_what(settings, gateway):
    """401 without a valid key; 403, and nothing published, for events outside its scope."""
    event = contact()
    status, headers, body = request(gateway, "/v1/events", json.dumps(event).encode())
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert "no API key" in json.loads(body)["error"]
    assert post(gateway, event, key="cxl_not-a-key")[0] == 401
    status, _, body = request(gateway, "/v1/events", json.dumps(event).encode(),
                              headers={"X-API-Key": PHONE_KEY})
    assert status == 202, body

    status, body = post(gateway, [contact(), contact(channel="email"), survey()], key=PHONE_KEY)
    assert status == 403
    assert [(r["index"], r["field"]) for r in body["results"]] == [(1, "channel"),
                                                                    (2, "event_type")]
    assert "nothing was published" in body["error"]
    # the older route takes the key (and NDJSON) the same way
    status, _, _ = request(gateway, "/events", json.dumps(contact(channel="ivr")).encode(),
                           PHONE_KEY, content_type="application/x-ndjson")
    assert status == 202
    assert len(read_topic(gateway.settings, gateway.settings.topics.ledger, expected=3,
                          timeout=1.5)) == 2
    assert get(gateway, "/readyz")[0] == 200


def test_concurrent_requests_each_wait_for_their_own_events(gateway):
    """Many requests at once on the one shared producer: each gets its own events' answer."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[contact(customer_id=f"c-conc-{n}-{i}") for i in range(10)] for n in range(40)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda batch: post(gateway, batch), batches))
    for batch, (status, body) in zip(batches, answers):
        assert status == 202, body
        assert [r["event_id"] for r in body["results"]] == [e["event_id"] for e in batch]
    assert len(read_topic(gateway.settings, gateway.settings.topics.ledger, expected=400)) == 400
    assert metric(gateway, "cxledger_gateway_events_in_flight") == 0


def test_rates_and_sizes_are_limited(gateway):
    """429 with Retry-After past a key's rate; 413 past the body limit (however it is sent),
    past the events per request and past a key's burst; 400 and 415 for what is not JSON."""
    assert post(gateway, [contact() for _ in range(4)], key=SLOW_KEY)[0] == 413  # > its burst
    assert post(gateway, [contact() for _ in range(3)], key=SLOW_KEY)[0] == 202
    status, headers, body = request(gateway, "/v1/events", json.dumps(contact()).encode(),
                                    SLOW_KEY)
    assert status == 429 and int(headers["retry-after"]) >= 1, body
    assert post(gateway, [contact() for _ in range(21)])[0] == 413  # > max_events

    big = json.dumps([contact(agent_id="a" * 100) for _ in range(200)]).encode()
    assert len(big) > 32 * 1024
    status, _, body = request(gateway, "/v1/events", big, ALL_KEY)
    assert status == 413 and "split the batch" in json.loads(body)["error"]
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:  # chunked, no Content-Length: the gateway stops reading past the limit
        conn.request("POST", "/v1/events", body=iter([big[i:i + 4096]
                                                      for i in range(0, len(big), 4096)]),
                     headers={"Authorization": f"Bearer {ALL_KEY}",
                              "Content-Type": "application/json"}, encode_chunked=True)
        assert conn.getresponse().status == 413
    finally:
        conn.close()

    status, _, body = request(gateway, "/v1/events", b'{"event_type": ', ALL_KEY)
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    assert request(gateway, "/v1/events", b"[]", ALL_KEY)[0] == 400
    assert request(gateway, "/v1/events", b"{}", ALL_KEY, content_type="text/plain")[0] == 415
    status, _, body = request(gateway, "/nope", b"{}", ALL_KEY)
    assert status == 404 and "/openapi.json" in json.loads(body)["error"]


def test_without_keys_it_serves_the_api_and_refuses_every_publish(settings):
    with Gateway(settings, port=0) as gw:
        status, body = get(gw, "/openapi.json")
        assert status == 200 and "/v1/events" in json.loads(body)["paths"]
        assert get(gw, "/healthz") == (200, b'{"status":"ok"}')
        status, body = post(gw, contact(), key=ALL_KEY)
        assert status == 401 and "no API keys configured" in body["error"]


def test_readyz_says_when_kafka_does_not_answer(settings):
    down = settings.with_(kafka_bootstrap=f"127.0.0.1:{free_port()}", gateway_keys=(ALL,))
    with Gateway(down, port=0) as gw:
        assert get(gw, "/healthz")[0] == 200
        started = time.monotonic()
        status, body = get(gw, "/readyz")
        assert status == 503 and "no answer" in json.loads(body)["kafka"]
        assert time.monotonic() - started < 5


def test_shutdown_with_kafka_down_ends_within_the_grace_period(tmp_path):
    """SIGTERM while a publish waits for an unreachable Kafka: the request is answered 503,
    the process exits 0 in well under Kubernetes' 30 s, and the log names the event."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[kafka]\nbootstrap = "127.0.0.1:{free_port()}"\n'
                      f"[gateway]\nport = {port}\n{ALL.toml()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    log = open(tmp_path / "gateway.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cxledger.cli", "--config", str(config),
                             "--log-format", "json", "gateway"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(healthy, 30, "the gateway answers /healthz")
        answer: dict = {}

        def publish() -> None:
            req = urllib.request.Request(url + "/v1/events", data=json.dumps(event).encode(),
                                         headers={"Authorization": f"Bearer {ALL_KEY}",
                                                  "Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as err:
                answer.update(status=err.code, retry=err.headers.get("Retry-After"),
                              body=json.loads(err.read()))

        event = contact(contact_id=f"payload-{uuid.uuid4().hex}")
        publisher = threading.Thread(target=publish)
        publisher.start()
        time.sleep(1.0)  # the publish is waiting for Kafka
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - started
        publisher.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = Path(log.name).read_text()
    assert code == 0, output
    assert seconds < 10, f"stopped in {seconds:.1f}s"  # shutdown_flush (5 s) + about 1
    assert answer["status"] == 503 and answer["retry"], answer
    assert answer["body"]["results"][0] == {
        "index": 0, "status": "unacknowledged", "event_id": event["event_id"],
        "reason": "the gateway is stopping and Kafka had not acknowledged it"}
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    unacknowledged = [line for line in lines if "had not acknowledged" in line["event"]]
    assert unacknowledged and unacknowledged[-1]["event_ids"] == [event["event_id"]], output
    # the access log: one line per request, with the key's name, never the key or the payload
    (access,) = [line for line in lines if line["event"] == "request" and line["status"] == 503]
    assert (access["key"], access["events"], access["path"]) == ("everything", 1, "/v1/events")
    assert ALL_KEY not in output and event["contact_id"] not in output
