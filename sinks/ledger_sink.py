"""The raw ledger sink: every interaction event on the ledger topic -> ``ledger_events``.

A record that reached the topic without the SDK gets the SDK's checks here
(``schemas.validation.ledger_refusal``: values, sizes, the message key): a refused one becomes
a dead letter, as the processors skip it. A record carrying the SDK's valid seal (the settings'
seal key, ``schemas.seal``) was checked by the SDK and is not checked again, and is not decoded
here either: it goes to ClickHouse as it is, through the ledger inlet (``ledger_inlet``,
``sinks.ledger_inlets``), which writes its row.

The ledger is immutable: the first version of an event id is the one it keeps. Before a batch
is inserted, ``keep_first_version`` looks its ids up in the store (a bloom-filter index on
event_id keeps that cheap) and in the batch itself: the same event again (a producer's retry, a
redelivery) is dropped, and an event that reuses a stored id with other content becomes a dead
letter with the reason ``event_id conflict``. A sealed message whose id the store or the batch
already has is decoded here for that (``decode_here``).
"""

from __future__ import annotations

import re
from base64 import b64encode
from typing import Any, Iterable

import structlog
from clickhouse_connect.driver.client import Client
from confluent_kafka import Message

from cxledger.config import LEDGER_SINK_GROUP, Settings
from schemas.codec import WireCodec
from schemas.jsonform import dumps, same_payload
from schemas.seal import sealer_of
from schemas.validation import CANONICAL_UUID, ledger_refusal
from sinks.kafka_sink import AvroInlet, ClickHouseSink, Rows
from sinks.ledger_inlets import INLET_TABLE, InletSchema

LEDGER_TABLE = "ledger_events"
LEDGER_COLUMNS = ("event_id", "event_type", "occurred_at", "customer_id", "channel", "city",
                  "agent_id", "correlation_id", "payload", "schema_id", "kafka_partition",
                  "kafka_offset")
LEDGER_GROUP = LEDGER_SINK_GROUP

log = structlog.get_logger("cxledger.sink")


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
_CANONICAL_UUIDS = re.compile(f"(?:{CANONICAL_UUID.pattern})*")  # any number, one after another
_PAYLOAD = LEDGER_COLUMNS.index("payload")


def _stored_versions_query(ids: list[str]) -> tuple[str, dict[str, Any]]:
    """The query for the stored payload of each of ``ids``. Canonical UUIDs (what validation
    lets through) are written into it as their 16 bytes each, base64 in one string literal that
    the engine cuts apart: 22 characters an id instead of 37. Both the engine (parsing and
    splitting the literal, on a 20,000-id batch 39 ms as text, 15 ms as base64) and
    clickhouse-connect (which scans the query's text with regular expressions before sending
    it) take time in proportion to the text. Binding the ids as a parameter escapes each
    character in Python, slower still; anything but canonical UUIDs is bound that way."""
    if all(len(i) == 36 for i in ids) and _CANONICAL_UUIDS.fullmatch("".join(ids)):
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


def decode_here(client: Client, raw: list[tuple[str | None, int, int]], rows: Rows,
                sources: dict[tuple[str, tuple[str, ...]], list[tuple[Message, int]]]
                ) -> set[int]:
    """Of the sealed messages bound for the ledger inlet (``raw``: event id, partition,
    position), the indexes of those to decode in Python, where ``keep_first_version`` sees
    them: an event id the store already has (a redelivery, a producer's retry, a conflict),
    or one that comes earlier in this batch (in (partition, position) order, among these
    messages and the rows decoded already), or no event id at all. The first of each id in
    the batch goes to the inlet, and is stored before the decoded rows are screened."""
    first: dict[str, tuple[int, int]] = {}
    key = (LEDGER_TABLE, LEDGER_COLUMNS)
    for row, (msg, position) in zip(rows.get(key, ()), sources.get(key, ())):
        at = (msg.partition(), position)
        first[str(row[_ID])] = min(at, first.get(str(row[_ID]), at))
    for event_id, partition, position in raw:
        if event_id is not None:
            at = (partition, position)
            if first.setdefault(event_id, at) > at:
                first[event_id] = at
    valid = [event_id for event_id, _, _ in raw if event_id is not None]
    stored = _stored_ids(client, list(dict.fromkeys(valid))) if valid else set()
    return {index for index, (event_id, partition, position) in enumerate(raw)
            if event_id is None or event_id in stored
            or first[event_id] != (partition, position)}


def _stored_ids(client: Client, ids: list[str]) -> set[str]:
    sql, parameters = _stored_versions_query(ids)
    return {event_id for event_id, _ in client.query(
        sql, parameters=parameters,
        settings={"max_query_size": max(262_144, len(sql) + 4096)}).result_rows}


def ledger_inlet(client: Client, codec: WireCodec) -> dict[str, AvroInlet]:
    """event type -> the ledger inlet (migration 9) for every interaction type, framed for the
    shapes the inlet's table has in the store (a schema version it has no shape for is decoded
    in Python); none on a store without it, or one whose shapes this build does not know."""
    try:
        found = client.query(
            "SELECT type FROM system.columns WHERE database = currentDatabase() "
            "AND table = {table:String} AND name = 'event'",
            parameters={"table": INLET_TABLE}).result_rows
    except Exception as exc:  # the store is away: every message is decoded here meanwhile
        log.warning("the ledger inlet could not be looked up; decoding every message here",
                    error=str(exc).strip()[:300])
        return {}
    framing = InletSchema.for_table(found[0][0], codec.catalogue) if found else None
    if framing is None:
        return {}
    inlet = AvroInlet(INLET_TABLE, LEDGER_TABLE, framing=framing)
    return {t: inlet for t in codec.catalogue.interaction_types}


def ledger_sink(settings: Settings, client: Client, codec: WireCodec | None = None,
                **kwargs: Any) -> ClickHouseSink:
    """The ledger sink; sealed messages of a type with an inlet in the store go to it
    undecoded (``sinks.ledger_inlets``)."""
    codec = codec or WireCodec()
    sealer = sealer_of(settings.seal_key)
    if sealer is not None:
        kwargs.setdefault("inlets", ledger_inlet(client, codec))
        kwargs.setdefault("raw_screen", decode_here)
    return ClickHouseSink(settings, client, [settings.topics.ledger], LEDGER_GROUP, map_ledger,
                          codec=codec, screen=keep_first_version, check=ledger_refusal,
                          sealer=sealer, **kwargs)
