"""Live mode: an idle partition's clock follows wall time, so a deadline passes with no
further events (domain.md: less the allowed lateness, only near wall time)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cxledger.pipeline import Pipeline
from producers.sdk import LedgerProducer

pytestmark = pytest.mark.integration


def test_an_urgent_complaint_breaches_on_wall_time_alone(settings, clickhouse, tmp_path):
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
