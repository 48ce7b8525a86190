"""The faust worker on the real broker: live clock, dead letters."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cxledger.pipeline import Pipeline
from confluent_kafka import Producer

from producers.sdk import LedgerProducer
from tests.integration.ledger_helpers import read_topic
from tests.unit.events import survey

pytestmark = pytest.mark.integration


def test_an_urgent_complaint_breaches_on_wall_time_alone(settings, clickhouse, tmp_path):
    """Live mode: an idle partition's clock follows wall time, so a deadline passes with no
    further events (domain.md: less the allowed lateness, only near wall time)."""
    complaint = f"cp-{uuid.uuid4().hex[:8]}"
    filed_at = datetime.now(timezone.utc) - timedelta(minutes=11)
    # first response due filed + 5 min = now - 6 min; the clock may move to now - 5 min
    event = {"event_type": "complaint.filed", "occurred_at": filed_at.isoformat(),
             "customer_id": "c-live", "channel": "app", "city": "hohhot",
             "complaint_id": complaint, "category": "network", "severity": "urgent"}
    with Pipeline(settings.with_(live_clock=True)) as pipe:
        pipe.start_sinks()
        pipe.start_processors(1, log_dir=tmp_path)
        pipe.wait_for_processor_group()
        with LedgerProducer(pipe.settings) as producer:
            producer.publish(event)
        pipe.wait_for_processors(producer.positions, show_progress=False)
        topics = list(dict.fromkeys(settings.topics.derived.values()))
        deadline = time.monotonic() + 60
        found = []
        while not found and time.monotonic() < deadline:
            pipe.wait_for_sinks(pipe.fence(topics), show_progress=False)
            found = clickhouse.query(
                "SELECT sla, escalated_to_level FROM complaint_sla_breaches FINAL "
                "WHERE complaint_id = {c:String}", parameters={"c": complaint}).result_rows
            time.sleep(1)
    assert found == [("first_response", 1)]


def test_the_worker_dead_letters_undecodable_input_and_goes_on(settings, tmp_path):
    """... and what the checks refuse, unless the SDK sealed it with the worker's seal key
    (schemas.seal): a forged seal is checked, and refused, like no seal at all."""
    from schemas.codec import WireCodec
    from schemas.seal import SEAL_HEADER, Sealer
    from schemas.validation import normalize_event

    key = "w" * 40
    settings = settings.with_(seal_key=key)
    good = survey(customer_id=f"c-{uuid.uuid4().hex[:8]}")
    trusted = normalize_event(survey(customer_id=f"c-{uuid.uuid4().hex[:8]}"))
    forged = normalize_event(survey(customer_id=f"c-{uuid.uuid4().hex[:8]}"))
    codec, positions = WireCodec(), {}

    def delivered(err, msg):
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        positions[tp] = max(positions.get(tp, 0), msg.offset() + 1)

    def miskeyed(record, sealer):  # keyed by another than its customer: the check refuses it
        value, wrong = codec.encode(record), b"not-" + record["customer_id"].encode()
        return dict(key=wrong, value=value, headers=[(SEAL_HEADER, sealer.seal(wrong, value))],
                    on_delivery=delivered)

    with Pipeline(settings.with_(live_clock=False)) as pipe:
        pipe.start_processors(1, log_dir=tmp_path)
        pipe.wait_for_processor_group()
        raw = Producer(settings.kafka_conf())
        with LedgerProducer(pipe.settings) as producer:
            raw.produce(settings.topics.ledger, key=good["customer_id"].encode(),
                        value=b"\x00\x00\x00\x00\x0e\xff", on_delivery=delivered)
            raw.produce(settings.topics.ledger, **miskeyed(trusted, Sealer(key)))
            raw.produce(settings.topics.ledger, **miskeyed(forged, Sealer("f" * 40)))
            raw.flush(10)
            producer.publish(good)
        del raw
        for tp, end in producer.positions.items():
            positions[tp] = max(positions.get(tp, 0), end)
        pipe.wait_for_processors(positions, show_progress=False)
        scored = read_topic(settings, settings.topics.for_derived("satisfaction.scored"), 2)
    dead = read_topic(settings, settings.topics.deadletter, 2)
    assert len(dead) == 2
    reasons = {}
    for message in dead:
        headers = {k: v.decode() for k, v in message.headers()}
        assert headers["dead_lettered_by"] == settings.topics.processors_app
        reasons[message.value()] = headers["reason"]
    assert reasons[b"\x00\x00\x00\x00\x0e\xff"].startswith(
        "schema id 14: Avro body does not decode")
    assert "is not the event's customer_id" in reasons[codec.encode(forged)]
    # the valid event after them was still folded, and so was the sealed one
    assert sorted(m.key() for m in scored) == sorted([good["customer_id"].encode(),
                                                      trusted["customer_id"].encode()])
