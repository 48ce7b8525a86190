"""The raw ledger sink: every interaction event on the ledger topic -> ``ledger_events``.

A record that reached the topic without the SDK gets the SDK's checks here
(``schemas.validation.ledger_refusal``: values, sizes, the message key): a refused one becomes
a dead letter, as the processors skip it. A record carrying the SDK's valid seal (the settings'
seal key, ``schemas.seal``) was checked by the SDK and is not checked again. The ledger is immutable: the first version of an
event id is the one it keeps. Before a batch
is inserted, ``keep_first_version`` looks its ids up in the store (a bloom-filter index on
event_id keeps that cheap) and in the batch itself: the same event again (a producer's retry, a
redelivery) is dropped, and an event that reuses a stored id with other content becomes a dead
letter with the reason ``event_id conflict``.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any, Iterable

from clickhouse_connect.driver.client import Client

from cxledger.config import LEDGER_SINK_GROUP, Settings
from schemas.codec import WireCodec
from schemas.jsonform import dumps, same_payload
from schemas.seal import sealer_of
from schemas.validation import CANONICAL_UUID, ledger_refusal
from sinks.kafka_sink import ClickHouseSink

LEDGER_TABLE = "ledger_events"
LEDGER_COLUMNS = ("event_id", "event_type", "occurred_at", "customer_id", "channel", "city",
                  "agent_id", "correlation_id", "payload", "schema_id", "kafka_partition",
                  "kafka_offset")
LEDGER_GROUP = LEDGER_SINK_GROUP


def ledger_row(record: dict[str, Any], schema_id: int, partition: int, offset: int) -> list[Any]:
    """The ``ledger_events`` row of a record. An operational event (no customer: supervision,
    quality, staff, incidents) has customer_id '' there: ``customer_id != ''`` selects the
    customers' events, ``payload`` holds the event's own key (hall_id, unit_id, ...)."""
    return [record["event_id"], record["event_type"], record["occurred_at"],
            record.get("customer_id") or "", record["channel"], record["city"], record["agent_id"],
            record["correlation_id"], dumps(record), schema_id, partition, offset]


def map_ledger(record: dict[str, Any], schema_id: int, partition: int,
               position: int) -> Iterable[tuple[str, tuple[str, ...], list[Any]]]:
    yield LEDGER_TABLE, LEDGER_COLUMNS, ledger_row(record, schema_id, partition, position)


_ID = LEDGER_COLUMNS.index("event_id")
_PAYLOAD = LEDGER_COLUMNS.index("payload")


def _stored_versions_query(ids: list[str]) -> tuple[str, dict[str, Any]]:
    """The query for the stored payload of each of ``ids``. Canonical UUIDs (what validation
    lets through) are written into it as their 16 bytes each, base64 in one string literal that
    the engine cuts apart: 22 characters an id instead of 37. Both the engine (parsing and
    splitting the literal, on a 20,000-id batch 39 ms as text, 15 ms as base64) and
    clickhouse-connect (which scans the query's text with regular expressions before sending
    it) take time in proportion to the text. Binding the ids as a parameter escapes each
    character in Python, slower still; anything but canonical UUIDs is bound that way."""
    if all(map(CANONICAL_UUID.fullmatch, ids)):
        packed = b64encode(bytes.fromhex("".join(ids).replace("-", ""))).decode()
        return ("SELECT toString(event_id), any(payload) FROM ledger_events "
                "WHERE event_id IN (SELECT arrayJoin(arrayMap(i -> toUUID(UUIDNumToString("
                "toFixedString(substring(ids, 16 * i + 1, 16), 16))), range(length(ids) DIV 16))) "
                f"FROM (SELECT base64Decode('{packed}') AS ids)) GROUP BY event_id"), {}
    return ("SELECT toString(event_id), any(payload) FROM ledger_events "
            "WHERE event_id IN {ids:Array(UUID)} GROUP BY event_id"), {"ids": ids}


def keep_first_version(client: Client, table: str, columns: tuple[str, ...],
                       rows: list[list[Any]]) -> tuple[list[int], list[tuple[int, str]]]:
    """The rows of a ledger batch to insert, and the conflicting ones with their reason."""
    if table != LEDGER_TABLE:
        return list(range(len(rows))), []
    ids = list(dict.fromkeys(str(row[_ID]) for row in rows))
    sql, parameters = _stored_versions_query(ids)
    # 22 bytes per id: a batch's list is longer than the default max_query_size (256 KiB)
    stored = dict(client.query(sql, parameters=parameters,
                               settings={"max_query_size": max(262_144, len(sql) + 4096)}
                               ).result_rows)
    first: dict[str, str] = {}
    kept: list[int] = []
    refused: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        event_id, payload = str(row[_ID]), row[_PAYLOAD]
        earlier = stored.get(event_id, first.get(event_id))
        if earlier is None:
            first[event_id] = payload
            kept.append(index)
        elif not same_payload(earlier, payload):
            refused.append((index, f"event_id conflict: {event_id} is already in the ledger "
                                   "with other content; the ledger keeps the first version"))
    return kept, refused


def ledger_sink(settings: Settings, client: Client, codec: WireCodec | None = None,
                **kwargs: Any) -> ClickHouseSink:
    return ClickHouseSink(settings, client, [settings.topics.ledger], LEDGER_GROUP, map_ledger,
                          codec=codec, screen=keep_first_version, check=ledger_refusal,
                          sealer=sealer_of(settings.seal_key), **kwargs)
