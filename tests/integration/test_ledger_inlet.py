"""The ledger sink hands sealed ledger messages to ClickHouse undecoded (sinks.ledger_inlets,
migration 9): the same rows as its own decoding for every interaction type and for awkward
values, the first version of an event id kept as before, nothing lost when ClickHouse cannot
read a message, and an inlet for the latest schema of every type."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from producers.sdk import LedgerProducer
from producers.simulator import simulate
from schemas.codec import WireCodec
from schemas.jsonform import dumps
from schemas.seal import Sealer
from schemas.validation import normalize_event
from sinks.ledger_inlets import INLET_TABLE, InletSchema
from sinks.ledger_sink import ledger_row, ledger_sink
from tests.integration.ledger_helpers import drain, run_until
from tests.unit.events import billing, envelope

pytestmark = pytest.mark.integration

SEAL_KEY = "q" * 40
COLUMNS = ("toString(event_id), event_type, toUnixTimestamp64Milli(occurred_at), customer_id, "
           "channel, city, agent_id, correlation_id, payload, schema_id, kafka_partition, "
           "kafka_offset")
# printable ones for ids and codes; free text (``reason``) takes tab, newline and the rest
AWKWARD_IDS = ["a/b\\c \"quoted\" 'single'", "ünïcödé 汉字 😀", "</script>", "{\"json\": [1, 2]}"]
AWKWARD_TEXT = AWKWARD_IDS + ["tab\there, newline\nthere", "\u2028\u2029 separators", "x" * 300]


_OPTIONAL_AGENT = {t for t in WireCodec().catalogue.interaction_types
                   if any(f["name"] == "agent_id" and isinstance(f["type"], list)
                          for f in WireCodec().catalogue.latest(t).definition["fields"])}


def _events(prefix: str) -> list[dict]:
    """Simulated events of every interaction type (those the simulator leaves out added),
    with awkward text in the free fields and money of every form, in the JSON form."""
    events = list(simulate(1_500, seed=21))
    events.append(envelope("account.port_out_requested", reason="moving to another carrier"))
    events += [envelope("tier.change_decided", decision=d, proposal_id=p)
               for d, p in (("approved", "pr-1"), ("rejected", None))]
    events += [envelope("account.cancellation_requested", reason=text) for text in AWKWARD_TEXT]
    events += [billing(spend=s) for s in ("0.00", "0.50", "7", "12345678.90", "199.99")]
    for i, event in enumerate(events):
        event["event_id"] = str(uuid.uuid4())
        if i % 3 == 0:
            event["correlation_id"] = f"{prefix}/{AWKWARD_IDS[i % len(AWKWARD_IDS)]}"
        if i % 5 == 0 and event["event_type"] in _OPTIONAL_AGENT:
            event["agent_id"] = None
    return events


def _rows(clickhouse, ids: list[str]) -> dict[str, tuple]:
    rows = clickhouse.query(f"SELECT {COLUMNS} FROM ledger_events WHERE event_id IN "
                            "{ids:Array(UUID)}", parameters={"ids": ids}).result_rows
    return {row[0]: row for row in rows}


class _Sender:
    """Messages to the ledger topic as they are given, sealed with SEAL_KEY or not; the
    positions to drain to."""

    def __init__(self, settings):
        self.topic = settings.topics.ledger
        self.producer = Producer(settings.kafka_conf())
        self.sealer = Sealer(SEAL_KEY)
        self.positions: dict = {}

    def send(self, key: bytes, value: bytes, sealed: bool = True) -> None:
        headers = [self.sealer.header(key, value)] if sealed else None
        self.producer.produce(self.topic, key=key, value=value, headers=headers,
                              on_delivery=self._delivered)

    def flush(self) -> dict:
        self.producer.flush(10)
        return self.positions

    def _delivered(self, err, msg) -> None:
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        self.positions[tp] = max(self.positions.get(tp, 0), msg.offset() + 1)


def _dead_letters(clickhouse, settings) -> list[tuple[str, str]]:
    return clickhouse.query(
        "SELECT key, reason FROM deadletter_events FINAL WHERE source_topic = {t:String} "
        "ORDER BY key", parameters={"t": settings.topics.ledger}).result_rows


def _sealed_sink(settings, clickhouse, **kwargs):
    sink = ledger_sink(settings, clickhouse, **kwargs)
    assert sink.inlets and sink.raw_screen is not None, "the ledger inlet is not in the store"
    return sink


def test_sealed_events_of_every_type_become_the_rows_the_sink_would_write(settings, clickhouse):
    settings = settings.with_(seal_key=SEAL_KEY)
    events = _events(f"p{uuid.uuid4().hex[:6]}")
    with LedgerProducer(settings) as producer:
        assert producer.publish_many(events) == []
    sink = _sealed_sink(settings, clickhouse, batch_rows=700)
    run_until(sink, dict(producer.positions))
    assert sink.stats.via_inlets == len(events) and sink.stats.deadlettered == 0

    records = {e["event_id"]: normalize_event(e) for e in events}
    stored = _rows(clickhouse, list(records))
    assert len(stored) == len(records)
    types = set()
    for event_id, record in records.items():
        row = list(stored[event_id])
        want = ledger_row(record, row[9], row[10], row[11])
        # the payload holds the same JSON value (its text may escape differently)
        assert json.loads(row[8]) == json.loads(want[8]), record["event_type"]
        row[8] = want[8] = None
        want[2] = record["occurred_at"]
        assert row == want
        types.add(record["event_type"])
    assert types == set(WireCodec().catalogue.interaction_types)
    spends = {json.loads(stored[i][8])["spend"] for i, r in records.items()
              if r["event_type"] == "billing.period_closed"}
    assert {"0.00", "0.50", "7.00", "12345678.90", "199.99"} <= spends
    reasons = {json.loads(stored[i][8])["reason"] for i, r in records.items()
               if r["event_type"] == "account.cancellation_requested"}
    assert set(AWKWARD_TEXT) <= reasons


def test_the_first_version_of_an_event_id_is_kept_as_when_decoded_here(settings, clickhouse):
    """A retry (the same bytes again, in the batch or in a later one) is dropped; a sealed
    message that reuses a stored id with other content is a dead letter; an unsealed message
    in the batch after a sealed one with its id is screened as well."""
    settings = settings.with_(seal_key=SEAL_KEY)
    codec, sender = WireCodec(), _Sender(settings)
    first = [normalize_event(billing(customer_id=f"f-{i}")) for i in range(6)]
    changed = dict(first[1], spend=Decimal("1.23"))
    unsealed_repeat = dict(first[3], spend=Decimal("9.99"))

    def send(record, sealed=True):
        sender.send(record["customer_id"].encode(), codec.encode(record), sealed)

    for record in first + [first[0], first[2]]:  # two retries within the batch
        send(record)
    send(unsealed_repeat, sealed=False)
    sink = _sealed_sink(settings, clickhouse)
    try:
        drain(sink, sender.flush())
        send(first[4])  # a redelivery, in a later batch
        send(changed)  # a conflict with a stored version
        drain(sink, sender.flush())
    finally:
        sink.close()
    stored = _rows(clickhouse, [r["event_id"] for r in first])
    assert len(stored) == 6
    assert [json.loads(stored[r["event_id"]][8]) for r in first] == \
        [json.loads(dumps(r)) for r in first]
    assert clickhouse.query("SELECT count() FROM ledger_events WHERE event_id IN "
                            "{ids:Array(UUID)}",
                            parameters={"ids": [r["event_id"] for r in first]}
                            ).result_rows[0][0] == 6
    dead = _dead_letters(clickhouse, settings)
    assert [k for k, _ in dead] == [first[1]["customer_id"], first[3]["customer_id"]]
    assert all("event_id conflict" in reason for _, reason in dead)


def test_a_sealed_message_clickhouse_cannot_read_is_a_dead_letter_and_the_rest_is_stored(
        settings, clickhouse):
    settings = settings.with_(seal_key=SEAL_KEY)
    codec, sender = WireCodec(), _Sender(settings)
    records = [normalize_event(billing(customer_id=f"b-{i}")) for i in range(20)]
    sender.send(b"b-x", codec.encode(records[0])[:-7])  # a body cut short, sealed as it is
    for record in records[1:]:
        sender.send(record["customer_id"].encode(), codec.encode(record))
    sink = _sealed_sink(settings, clickhouse)
    try:
        drain(sink, sender.flush())
    finally:
        sink.close()
    assert len(_rows(clickhouse, [r["event_id"] for r in records[1:]])) == 19
    assert [key for key, _ in _dead_letters(clickhouse, settings)] == ["b-x"]


def test_the_store_has_an_inlet_branch_for_the_latest_schema_of_every_type(clickhouse):
    """A new schema version whose fields differ needs a migration that adds its shape; until
    then its messages are decoded in Python (this test says which ones)."""
    (variant,), = clickhouse.query(
        "SELECT type FROM system.columns WHERE database = currentDatabase() AND "
        "table = {t:String} AND name = 'event'", parameters={"t": INLET_TABLE}).result_rows
    framing = InletSchema.for_table(variant)
    assert framing is not None
    catalogue = WireCodec().catalogue
    missing = [t for t in catalogue.interaction_types
               if framing.branch(catalogue.latest(t).definition) is None]
    assert missing == []
