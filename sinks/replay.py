"""``cxledger replay``: recompute every derived table from ``ledger_events`` and compare.

The ledger is read back partition by partition in position order, exactly as the live
processors saw it, so each partition's event-time clock advances the same way. The records go
through the same folds (processors.batch) with no Kafka involved, into fresh copies of the
derived tables in the ``cx_replay`` database, which are then compared row for row (FINAL) with
the live tables. Equal tables prove the live pipeline lost and duplicated nothing.

The same pass is how the single-machine stack restarts (``cxledger up`` on a store): the folds
it leaves behind are the processors' state, and ``repair`` makes every derived table equal to
the fold of the ledger in the store (it deletes the rows the fold does not produce and adds the
ones it lacks), whatever a crash left half-done.

Against a running stack the store is read through its read-only query endpoint; the replayed
tables and a copy of the live ones then go to a scratch engine of the replaying process.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator

import structlog
from clickhouse_connect.driver.client import Client
from tqdm import tqdm

from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
from processors.ledger import live_clock_target
from processors.rules import Rules
from sinks.derived_sink import DERIVED_TABLES, derived_row

log = structlog.get_logger("cxledger.replay")

REPLAY_DB = "cx_replay"
LIVE_COPY_DB = "cx_live"  # the live tables copied into a scratch engine
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
    folds: PartitionFolds | None = None  # the state the fold ended in

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


def create_replay_tables(client: Client, database: str = REPLAY_DB) -> None:
    """Fresh copies of the derived tables in ``database``, as the migrations build them (their
    CREATE TABLE and ALTER TABLE statements, in order), so their columns line up with the live
    ones."""
    from sinks.migrations import MIGRATIONS, Target, object_names, render_migration

    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    tables = set(replay_tables(client))
    for table in tables:
        client.command(f"DROP TABLE IF EXISTS {database}.{table}")
    target = Target(database=database)
    created, views = object_names()
    for migration in MIGRATIONS:
        for statement in render_migration(migration, target, names=created | views):
            m = re.match(r"(?:CREATE TABLE IF NOT EXISTS|ALTER TABLE) " + re.escape(database)
                         + r"\.(\w+)", statement)
            if m and m[1] in tables:
                client.command(statement)


def ledger_partition_count(client: Client) -> int:
    """How many partitions the ledger topic has, as far as the store can tell (the highest
    partition with an event, plus one)."""
    rows = client.query("SELECT max(kafka_partition) + 1, count() FROM ledger_events").result_rows
    return int(rows[0][0]) if rows and rows[0][1] else 1


def replay(client: Client, rules: Rules, show_progress: bool = True, *,
           scratch: Client | None = None, live_clock_ms: int | None = None,
           ledger_partitions: int | None = None) -> ReplayReport:
    """Fold the whole ledger of ``client`` into the replay tables and compare them with the
    live ones. ``scratch``: where to write when ``client`` is read-only (a running stack).
    ``live_clock_ms``: wall time at which to finish as the live processors' clock would (idle
    partitions within the live lag move to wall time less the allowed lateness).
    ``ledger_partitions``: the ledger topic's partition count, which the hall-months fold waits
    for (processors.halls; default: what the store shows, ``ledger_partition_count``)."""
    started = time.monotonic()
    scratch = scratch or client
    create_replay_tables(scratch)
    total = client.query("SELECT count() FROM ledger_events FINAL").result_rows[0][0]
    folds = PartitionFolds(rules, ledger_partitions or ledger_partition_count(client))
    tune_gc_for_folds()
    events = derived_count = 0
    with tqdm(total=total, desc="replaying", unit="ev", disable=not show_progress,
              leave=False) as bar:
        for page in ledger_pages(client):
            derived_count += write_derived(scratch, folds.fold_batch(page))
            n = sum(len(records) for records in page.values())
            events += n
            bar.update(n)
            settle_heap()
    if live_clock_ms is not None:
        derived_count += write_derived(scratch, advance_live_clocks(folds, live_clock_ms))
    live_db = ""
    if scratch is not client:
        copy_live_tables(client, scratch)
        live_db = LIVE_COPY_DB
    seconds = time.monotonic() - started
    report = ReplayReport(events, derived_count, seconds, compare(scratch, live_db), folds)
    log.info("replay finished", events=events, derived=derived_count, seconds=round(seconds, 2),
             equal=report.equal)
    return report


def advance_live_clocks(folds: PartitionFolds, wall_ms: int) -> list[dict[str, Any]]:
    """What the live processors' timer does: idle partitions follow wall time."""
    derived: list[dict[str, Any]] = []
    for fold in folds.folds.values():
        target = live_clock_target(fold.clock, wall_ms, folds.rules)
        if target is not None:
            derived += fold.advance_clock(target)
            derived += fold.drain_windows() + fold.drain_complaints()
    return folds.decide_halls(derived)


def copy_live_tables(source: Client, scratch: Client) -> None:
    """Copy the live derived tables (FINAL) from ``source`` into ``scratch``'s cx_live."""
    create_replay_tables(scratch, LIVE_COPY_DB)
    for table in replay_tables(source):
        block = source.raw_query(f"SELECT * FROM {table} FINAL", fmt="Native")
        if block:
            scratch.raw_insert(f"{LIVE_COPY_DB}.{table}", insert_block=block, fmt="Native")


def repair(client: Client, report: ReplayReport) -> dict[str, tuple[int, int]]:
    """Make every live derived table equal to its replay: delete the live rows the replay
    does not have (by the table's sorting key), then insert the replay rows the live table
    lacks. Returns table -> (rows deleted, rows inserted) for the tables that differed."""
    changed: dict[str, tuple[int, int]] = {}
    for t in report.tables:
        if t.equal:
            continue
        key = client.query("SELECT sorting_key FROM system.tables WHERE database = "
                           "currentDatabase() AND name = {t:String}",
                           parameters={"t": t.table}).result_rows[0][0]
        live, again = f"{t.table} FINAL", f"{REPLAY_DB}.{t.table} FINAL"
        if t.only_live:
            extra = f"{REPLAY_DB}.{t.table}__extra"
            client.command(f"DROP TABLE IF EXISTS {extra}")
            client.command(f"CREATE TABLE {extra} ENGINE = Memory AS SELECT {key} FROM "
                           f"(SELECT * FROM {live} EXCEPT SELECT * FROM {again})")
            client.command(f"DELETE FROM {t.table} WHERE ({key}) IN (SELECT {key} FROM {extra})")
            client.command(f"DROP TABLE {extra}")
        client.command(f"INSERT INTO {t.table} SELECT * FROM {again} EXCEPT SELECT * FROM {live}")
        changed[t.table] = (t.only_live, t.only_replay)
        log.warning("derived table repaired from the ledger", table=t.table,
                    rows_removed=t.only_live, rows_added=t.only_replay)
    return changed


def write_derived(client: Client, derived: list[dict[str, Any]],
                  database: str = REPLAY_DB) -> int:
    """Insert derived events as the derived sink maps them, into the tables of ``database``
    (the replay tables by default; "" for the client's own database). Returns their count."""
    rows: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = defaultdict(list)
    for record in derived:
        mapped = derived_row(record)
        if mapped is not None:
            table, columns, row = mapped
            rows[(table, columns)].append(row)
    for (table, columns), table_rows in rows.items():
        client.insert(f"{database}.{table}" if database else table, table_rows,
                      column_names=list(columns))
    return len(derived)


def compare(client: Client, live_db: str = "") -> list[TableComparison]:
    """Row-for-row comparison (FINAL, so versions and redeliveries are resolved)."""
    out = []
    prefix = f"{live_db}." if live_db else ""
    for table in replay_tables(client):
        live, again = f"{prefix}{table} FINAL", f"{REPLAY_DB}.{table} FINAL"
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
