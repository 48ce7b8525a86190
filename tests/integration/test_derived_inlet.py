"""The derived sink hands the workers' sealed window partials to ClickHouse undecoded
(sinks.derived_sink.WINDOWS_INLET, migration 7): the same rows as its own decoding, nothing
lost when ClickHouse cannot read a message, and nothing taken that a worker did not seal."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from processors.derived import message_key
from processors.window_batches import WINDOWS_UPDATED, pack_window_partials
from schemas.codec import WireCodec
from schemas.seal import Sealer
from sinks.derived_sink import DERIVED_GROUP, WINDOWS_INLET, derived_sink, map_derived
from tests.integration.ledger_helpers import drain
from tests.unit.processors_factories import fold_simulated

SEAL_KEY = "s" * 40
COLUMNS = ("window, window_start, city, channel, tier, source_partition, version, surveys, "
           "composite_sum, composite_count, first_response_buckets, contacts, transfers_sum, "
           "complaints, service_requests, service_requests_met, rules_version")


@pytest.fixture(scope="module")
def windows_updated():
    """satisfaction.windows_updated records of 3,000 simulated events in three partitions."""
    return [r for r in pack_window_partials(fold_simulated(3_000, seed=8, partitions=3))
            if r["event_type"] == WINDOWS_UPDATED]


def _send(settings, records, seal: Sealer | None, extra: list[bytes] = ()) -> dict:
    """Encode ``records`` (each with a rules_version of this test, so that its rows are its
    own), send them to their derived topic, sealed with ``seal``; then the ``extra`` values as
    they are (sealed too). Returns the positions to drain to."""
    codec = WireCodec()
    topic = settings.topics.for_derived(WINDOWS_UPDATED)
    producer = Producer(settings.kafka_conf())
    positions: dict = {}

    def delivered(err, msg):
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        positions[tp] = max(positions.get(tp, 0), msg.offset() + 1)

    values = [(message_key(r), codec.encode(r)) for r in records]
    values += [(b"bad", value) for value in extra]
    for key, value in values:
        headers = None if seal is None else [seal.header(key, value)]
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
    producer.flush(20)
    return positions


def _rows(clickhouse, version: str) -> list:
    return clickhouse.query(f"SELECT {COLUMNS} FROM satisfaction_window_partials FINAL "
                            "WHERE rules_version = {v:String} ORDER BY ALL",
                            parameters={"v": version}).result_rows


def _expected(clickhouse, records) -> list:
    """The rows the sink's own mapping gives for ``records``, written to a twin table."""
    version = records[0]["rules_version"]
    clickhouse.command("CREATE TABLE IF NOT EXISTS inlet_expected AS satisfaction_window_partials")
    table, columns, rows = None, None, []
    for record in records:
        for table, columns, row in map_derived(record, 0, 0, 0):
            rows.append(row)
    clickhouse.insert("inlet_expected", rows, column_names=list(columns))
    return clickhouse.query(f"SELECT {COLUMNS} FROM inlet_expected FINAL "
                            "WHERE rules_version = {v:String} ORDER BY ALL",
                            parameters={"v": version}).result_rows


def _rows_written(table: str) -> float:
    """The process's rows-written counter of the derived sink for ``table``."""
    from cxledger.metrics import process_metrics

    return process_metrics().registry.get_sample_value(
        "cxledger_sink_rows_written_total", {"sink": DERIVED_GROUP, "table": table}) or 0.0


def _drain(settings, clickhouse, positions):
    """A derived sink run until it passed ``positions``: (the sink, the rows it counted for
    the window partials' table in the process's metrics)."""
    counted = _rows_written(WINDOWS_INLET.rows_table)
    sink = derived_sink(settings, clickhouse)
    try:
        drain(sink, positions)
    finally:
        sink.close()
    return sink, _rows_written(WINDOWS_INLET.rows_table) - counted


def _versioned(records) -> list[dict]:
    version = f"inlet-{uuid.uuid4().hex[:8]}"
    return [{**r, "rules_version": version,
             "partials": [dict(p) for p in r["partials"]]} for r in records]


def test_sealed_window_partials_are_decoded_by_clickhouse_into_the_same_rows(
        settings, clickhouse, windows_updated):
    settings = settings.with_(seal_key=SEAL_KEY)
    records = _versioned(windows_updated)
    positions = _send(settings, records, Sealer(SEAL_KEY))
    sink, counted = _drain(settings, clickhouse, positions)
    partials = sum(len(r["partials"]) for r in records)
    got = _rows(clickhouse, records[0]["rules_version"])
    assert got == _expected(clickhouse, records)
    assert len(got) > 100
    # ClickHouse decoded them (the inlet), and the sink counts each partial as a row
    assert sink.stats.written == sink.stats.via_inlets == partials
    assert counted == partials


def test_a_sealed_message_clickhouse_cannot_read_is_a_dead_letter_and_the_rest_is_stored(
        settings, clickhouse, windows_updated):
    """A message with the window partials' schema id and a body that is not one: ClickHouse
    refuses the batch, the sink decodes it itself, the bad message becomes a dead letter with
    the reason and every other row is stored."""
    settings = settings.with_(seal_key=SEAL_KEY)
    records = _versioned(windows_updated[:4])
    header = WireCodec().encode(records[0])[:5]
    positions = _send(settings, records, Sealer(SEAL_KEY), extra=[header + b"\xff" * 7])
    sink, counted = _drain(settings, clickhouse, positions)
    assert _rows(clickhouse, records[0]["rules_version"]) == _expected(clickhouse, records)
    dead = clickhouse.query(
        "SELECT key, reason FROM deadletter_events FINAL WHERE source_topic = {t:String}",
        parameters={"t": settings.topics.for_derived(WINDOWS_UPDATED)}).result_rows
    assert len(dead) == 1 and dead[0][0] == "bad"
    assert "Avro body does not decode" in dead[0][1]
    assert sink.stats.via_inlets == 0
    assert counted == sink.stats.written > 0


def test_what_a_worker_did_not_seal_is_decoded_and_checked_by_the_sink(settings, clickhouse,
                                                                      windows_updated):
    """A seal of another key: the sink decodes the message itself (trailing bytes
    after the record are refused), as without a seal key."""
    settings = settings.with_(seal_key=SEAL_KEY)
    records = _versioned(windows_updated[:2])
    trailing = WireCodec().encode(records[1]) + b"\x00"
    positions = _send(settings, records[:1], Sealer("o" * 40), extra=[trailing])
    sink, counted = _drain(settings, clickhouse, positions)
    assert _rows(clickhouse, records[0]["rules_version"]) == _expected(clickhouse, records[:1])
    assert sink.stats.via_inlets == 0
    assert counted == sink.stats.written > 0
    dead = clickhouse.query(
        "SELECT reason FROM deadletter_events FINAL WHERE source_topic = {t:String}",
        parameters={"t": settings.topics.for_derived(WINDOWS_UPDATED)}).result_rows
    assert len(dead) == 1 and "trailing bytes" in dead[0][0]
