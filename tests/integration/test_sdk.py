"""The producer SDK against a real broker that goes away."""

from __future__ import annotations

import pytest

from cxledger.config import load_settings
from cxledger.localstack import LocalBroker
from cxledger.topics import create_topics
from producers.sdk import DeliveryError, LedgerProducer

from tests.unit.events import contact

pytestmark = pytest.mark.integration


def test_undelivered_events_are_reported_not_dropped(tmp_path):
    broker = LocalBroker(log_file=tmp_path / "tansu.log")
    settings = load_settings(environ={}).with_(kafka_bootstrap=broker.start())
    try:
        create_topics(settings)
        producer = LedgerProducer(settings, producer_conf={"message.timeout.ms": 3000})
        producer.publish(contact())
        producer.flush(10)
        assert producer.delivered == 1
    finally:
        broker.stop()
    lost = contact()
    producer.publish(lost)
    with pytest.raises(DeliveryError) as info:
        producer.flush(15)
    assert [event_id for event_id, _ in info.value.failures] == [lost["event_id"]]
    assert "publish them again" in str(info.value)
