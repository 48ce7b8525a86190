"""The raw ledger sink: every interaction event on the ledger topic -> ``ledger_events``."""

from __future__ import annotations

from typing import Any, Iterable

from clickhouse_connect.driver.client import Client

from cxledger.config import LEDGER_SINK_GROUP, Settings
from schemas.codec import WireCodec
from schemas.jsonform import dumps
from sinks.kafka_sink import ClickHouseSink

LEDGER_TABLE = "ledger_events"
LEDGER_COLUMNS = ("event_id", "event_type", "occurred_at", "customer_id", "channel", "city",
                  "agent_id", "correlation_id", "payload", "schema_id", "kafka_partition",
                  "kafka_offset")
LEDGER_GROUP = LEDGER_SINK_GROUP


def ledger_row(record: dict[str, Any], schema_id: int, partition: int, offset: int) -> list[Any]:
    return [record["event_id"], record["event_type"], record["occurred_at"],
            record["customer_id"], record["channel"], record["city"], record["agent_id"],
            record["correlation_id"], dumps(record), schema_id, partition, offset]


def map_ledger(record: dict[str, Any], schema_id: int, partition: int,
               position: int) -> Iterable[tuple[str, tuple[str, ...], list[Any]]]:
    yield LEDGER_TABLE, LEDGER_COLUMNS, ledger_row(record, schema_id, partition, position)


def ledger_sink(settings: Settings, client: Client, codec: WireCodec | None = None,
                **kwargs: Any) -> ClickHouseSink:
    return ClickHouseSink(settings, client, [settings.topics.ledger], LEDGER_GROUP, map_ledger,
                          codec=codec, **kwargs)
