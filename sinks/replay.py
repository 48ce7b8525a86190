"""``cxledger replay``: recompute every derived table from ``ledger_events`` and compare.

The ledger is read back partition by partition in Kafka offset order, exactly as the live
processors saw it, so each partition's event-time clock advances the same way. The records go
through the same folds (processors.batch) with no Kafka involved, into fresh copies of the
derived tables in the ``cx_replay`` database, which are then compared row for row (FINAL) with
the live tables. Equal tables prove the live pipeline lost and duplicated nothing.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator

import structlog
from clickhouse_connect.driver.client import Client
from tqdm import tqdm

from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
from processors.rules import Rules
from sinks.clickhouse import ddl_text, statements
from sinks.derived_sink import DERIVED_TABLES, derived_row

log = structlog.get_logger("cxledger.replay")

REPLAY_DB = "cx_replay"
_CHUNK = 50_000


@dataclass
class TableComparison:
    table: str
    live_rows: int
    replay_rows: int
    only_live: int
    only_replay: int

    @property
    def equal(self) -> bool:
        return self.only_live == 0 and self.only_replay == 0


@dataclass
class ReplayReport:
    events: int
    derived: int
    seconds: float
    tables: list[TableComparison]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def record_from_payload(payload: str, occurred_ms: int) -> dict[str, Any]:
    """The record form of a ledger row: its JSON payload with time and money typed."""
    record = json.loads(payload)
    record["occurred_at"] = occurred_ms
    spend = record.get("spend")
    if spend is not None:
        record["spend"] = Decimal(spend)
    return record


def ledger_pages(client: Client, page_rows: int = _CHUNK
                 ) -> Iterator[dict[int, list[dict[str, Any]]]]:
    """Pages of ledger records, {partition: records in offset order}, partition by partition.

    Pages rather than one result stream: the store must accept the replayed rows between reads.
    """
    partitions = [p for (p,) in client.query(
        "SELECT DISTINCT kafka_partition FROM ledger_events ORDER BY 1").result_rows]
    for partition in partitions:
        after = -1
        while True:
            rows = client.query(
                "SELECT kafka_offset, toUnixTimestamp64Milli(occurred_at), payload "
                "FROM ledger_events FINAL WHERE kafka_partition = {p:UInt16} "
                "AND kafka_offset > {after:Int64} ORDER BY kafka_offset LIMIT {n:UInt32}",
                parameters={"p": partition, "after": after, "n": page_rows}).result_rows
            if not rows:
                break
            after = rows[-1][0]
            yield {partition: [record_from_payload(payload, ms) for _, ms, payload in rows]}


def replay_tables(client: Client) -> list[str]:
    return sorted({table for table, _ in DERIVED_TABLES.values()})


def create_replay_tables(client: Client) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS {REPLAY_DB}")
    for table in replay_tables(client):
        client.command(f"DROP TABLE IF EXISTS {REPLAY_DB}.{table}")
    for statement in statements(ddl_text("derived.sql")):
        client.command(statement.replace("CREATE TABLE IF NOT EXISTS ",
                                         f"CREATE TABLE IF NOT EXISTS {REPLAY_DB}.", 1))


def replay(client: Client, rules: Rules, show_progress: bool = True) -> ReplayReport:
    started = time.monotonic()
    create_replay_tables(client)
    total = client.query("SELECT count() FROM ledger_events FINAL").result_rows[0][0]
    folds = PartitionFolds(rules)
    tune_gc_for_folds()
    events = derived_count = 0
    with tqdm(total=total, desc="replaying", unit="ev", disable=not show_progress,
              leave=False) as bar:
        for page in ledger_pages(client):
            derived_count += _write(client, folds.fold_batch(page))
            n = sum(len(records) for records in page.values())
            events += n
            bar.update(n)
            settle_heap()
    seconds = time.monotonic() - started
    report = ReplayReport(events, derived_count, seconds, compare(client))
    log.info("replay finished", events=events, derived=derived_count, seconds=round(seconds, 2),
             equal=report.equal)
    return report


def _write(client: Client, derived: list[dict[str, Any]]) -> int:
    rows: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = defaultdict(list)
    for record in derived:
        mapped = derived_row(record)
        if mapped is not None:
            table, columns, row = mapped
            rows[(table, columns)].append(row)
    for (table, columns), table_rows in rows.items():
        client.insert(f"{REPLAY_DB}.{table}", table_rows, column_names=list(columns))
    return len(derived)


def compare(client: Client) -> list[TableComparison]:
    """Row-for-row comparison (FINAL, so versions and redeliveries are resolved)."""
    out = []
    for table in replay_tables(client):
        live, again = f"{table} FINAL", f"{REPLAY_DB}.{table} FINAL"
        count = lambda sql: client.query(sql).result_rows[0][0]  # noqa: E731
        out.append(TableComparison(
            table,
            live_rows=count(f"SELECT count() FROM {live}"),
            replay_rows=count(f"SELECT count() FROM {again}"),
            only_live=count(f"SELECT count() FROM (SELECT * FROM {live} EXCEPT "
                            f"SELECT * FROM {again})"),
            only_replay=count(f"SELECT count() FROM (SELECT * FROM {again} EXCEPT "
                              f"SELECT * FROM {live})"),
        ))
    return out
