"""The producer's checks beyond the schema (size bound, event id conflicts) and file ingest
through them, with librdkafka's producer replaced by a stub that records what would be sent."""

from __future__ import annotations

import json

import pytest

from cxledger.config import load_settings
from producers.ingest import publish_file
from producers.sdk import MESSAGE_MAX_BYTES, LedgerProducer, RecentEventIds
from schemas.validation import EventValidationError, normalize_event

from tests.unit.events import contact, envelope


class StubProducer:
    """What LedgerProducer needs of librdkafka's Producer; keeps what it was given."""

    def __init__(self):
        self.values: list[bytes] = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.values.append(value)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0


def stub_producer(**conf) -> LedgerProducer:
    settings = load_settings(environ={}).with_(kafka_bootstrap="127.0.0.1:9")
    producer = LedgerProducer(settings, producer_conf=conf or None)
    producer._producer = StubProducer()
    return producer


@pytest.fixture
def producer():
    return stub_producer()


# -- size -----------------------------------------------------------------------------------------

def test_an_event_over_message_max_bytes_is_refused_before_librdkafka(producer):
    record = normalize_event(contact())
    record["agent_id"] = "a" * 5_000_000
    with pytest.raises(EventValidationError) as info:
        producer.publish_record(record)
    err = info.value
    assert err.field is None and err.event_id == record["event_id"]
    assert "over the producer's limit of 1,000,000 (message.max.bytes); its largest field is " \
           "'agent_id' (5,000,000 characters): shorten it" in str(err)
    assert err.describe().startswith(f"contact.completed {record['event_id']}: the encoded event")
    assert producer._producer.values == []


def test_the_limit_follows_the_producers_configuration():
    producer = stub_producer(**{"message.max.bytes": 2_000})
    assert producer.max_message_bytes == 2_000
    producer.publish(envelope("account.port_out_requested", reason="r" * 1_500))
    with pytest.raises(EventValidationError, match="over the producer's limit of 2,000"):
        producer.publish(envelope("account.port_out_requested", reason="r" * 1_999))
    assert len(producer._producer.values) == 1


def test_the_default_limit_is_librdkafkas():
    assert stub_producer().max_message_bytes == MESSAGE_MAX_BYTES == 1_000_000


def test_the_largest_valid_event_fits_with_room_to_spare(producer):
    """With every string at its limit, an event is kilobytes: the size bound only catches what
    skipped validation."""
    event = envelope("account.port_out_requested", customer_id="c" * 128, agent_id="a" * 128,
                     correlation_id="k" * 128, reason="网" * 2_000)
    producer.publish(event)
    assert len(producer._producer.values[0]) < 10_000


# -- event id conflicts ---------------------------------------------------------------------------

def test_the_same_event_again_is_a_retry(producer):
    event = contact()
    assert producer.publish(event) == producer.publish(dict(event)) == event["event_id"]
    assert len(producer._producer.values) == 2


def test_another_event_with_the_same_id_is_refused_naming_the_first(producer):
    first = contact()
    producer.publish(first, source="day.jsonl:7")
    with pytest.raises(EventValidationError) as info:
        producer.publish({**first, "city": "wuhan"}, source="day.jsonl:9")
    err = info.value
    assert err.field == "event_id"
    assert err.reason.startswith(f"event_id conflict: {first['event_id']} was already published "
                                 "with other content (day.jsonl:7)")
    assert len(producer._producer.values) == 1


def test_without_a_source_the_occurrence_is_named(producer):
    first = contact()
    producer.publish(contact())
    producer.publish(first)
    with pytest.raises(EventValidationError, match=r"\(event 2 of this producer\)"):
        producer.publish({**first, "transfers": 2})


def test_a_refused_event_is_not_remembered(producer):
    first = contact()
    producer.publish(first)
    with pytest.raises(EventValidationError):
        producer.publish({**first, "city": "wuhan"})
    with pytest.raises(EventValidationError, match="event 1 of this producer"):
        producer.publish({**first, "city": "hohhot"})
    producer.publish(first)  # the first, unchanged, is still fine


def test_the_memory_of_ids_is_bounded():
    recent = RecentEventIds(size=3)
    for n in range(5):
        recent.remember(f"id-{n}", recent.digest(b"x"), f"line {n}")
    assert len(recent) == 3
    assert recent.conflict("id-0", recent.digest(b"y")) is None  # forgotten
    assert recent.conflict("id-4", recent.digest(b"y")) == "line 4"
    assert recent.conflict("id-4", recent.digest(b"x")) is None


# -- file ingest through the producer ------------------------------------------------------------

def test_a_file_with_hostile_lines_publishes_all_the_others(tmp_path, producer):
    path = tmp_path / "day.jsonl"
    first = contact()
    lines = [
        json.dumps(first).encode(),
        json.dumps(envelope("account.port_out_requested", reason="x" * 2_000_000)).encode(),
        b'{"event_type": "account.port_out_requested", "reason": "caf\xe9"}',
        json.dumps({**first, "city": "wuhan"}).encode(),
        json.dumps(contact(customer_id="c-1\x00")).encode(),
        json.dumps(contact()).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = publish_file(path, producer, show_progress=False)
    assert summary.published == 2 and len(producer._producer.values) == 2
    reasons = {r.line: r.reason for r in summary.rejected}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert reasons[2].endswith("field 'reason': at most 2000 characters, got 2000000")
    assert reasons[3].startswith("not valid UTF-8 (byte 0xe9 at column")
    assert f"event_id conflict: {first['event_id']} was already published with other content " \
           f"({path}:1)" in reasons[4]
    assert "field 'customer_id': contains U+0000 (NUL) at position 4" in reasons[5]
    rejects = summary.rejects_file.read_text(encoding="utf-8").splitlines()
    assert [line.split(":")[1] for line in rejects] == ["2", "3", "4", "5"]
