"""The ClickHouse schema, versioned: migrations, the table that records them, and the DDL for one
node or for a cluster.

A migration is a numbered list of idempotent statements (``CREATE ... IF NOT EXISTS``,
``ADD ... IF NOT EXISTS``) kept in ``sinks/sql``. Migration 1 is the schema the sinks have always
created (ledger.sql, derived.sql, views.sql); every later change is a later migration (add
``Migration(2, "name", ("migrations/0002_name.sql",))`` to ``MIGRATIONS``), never an edit of an
applied one. Two more kinds of statement: ``CREATE MATERIALIZED VIEW IF NOT EXISTS v TO t AS
SELECT ...`` (ClickHouse fills ``t`` from every later insert into the view's source), and
``INSERT INTO t COPY FROM v``, which fills ``t`` with what ``v`` would have written for the rows
already in its source (``v``'s own query, so that it is written once); run twice, it writes the
rows twice, which the ReplacingMergeTree tables such views fill collapse (FINAL). And
``CREATE MATERIALIZED VIEW IF NOT EXISTS v REFRESH EVERY ... TO t AS SELECT ...``: ClickHouse
replaces ``t`` (a snapshot table) with the query's rows on that schedule, in the background.

``migrate`` (what ``cxledger db migrate`` and ``sinks.clickhouse.create_tables`` run):

* reads ``schema_migrations`` (version, name, checksum, applied_at, how, cluster) in the
  connection's database;
* refuses a database whose recorded version is newer than the newest migration this build
  knows (``SchemaTooNew`` names both versions): an older build must not write into a schema it
  does not understand;
* adopts a database created before migrations existed: the tables are there, the record is not.
  Migration 1 is applied over them (every statement is ``IF NOT EXISTS``: nothing is dropped or
  rewritten), the columns are checked against migration 1, and version 1 is recorded as
  ``adopted``;
* applies the pending migrations in order and records each one after its last statement;
* does nothing but two reads when the schema is current, so a user that may only write rows
  (the sinks') starts fine; a pending migration under such a user fails with a message that says
  to run ``cxledger db migrate`` as the schema owner.

A cluster (``--cluster NAME``, recorded in ``schema_migrations.cluster`` so later runs follow it)
gets every ``*MergeTree`` table as a ``Replicated*MergeTree`` ``<table>_local`` on every node
(Keeper path ``/clickhouse/tables/{shard}/<db>/<table>_local``, replica ``{replica}``: the
``<macros>`` of each server) and a ``Distributed`` table under the original name over it, so the
sinks, views and dashboards use the same names on one node and on a cluster. Every statement
runs ``ON CLUSTER``. Sharding keys keep what must meet on one shard together:
``ReplacingMergeTree`` collapses duplicates only within a shard, so every version of a row must
land on the same shard; by customer for the ledger and the per-customer tables. A snapshot
table is the exception: every node refreshes a whole copy of its own, from the Distributed
tables.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, Iterable, Sequence

import structlog

from sinks.clickhouse import StoreError, statements, view_params

log = structlog.get_logger("cxledger.migrations")

MIGRATIONS_TABLE = "schema_migrations"
DEFAULT_DATABASE = "cx"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    files: tuple[str, ...] = ()  # under sinks/sql, applied in this order
    sql: str | None = None  # or the statements themselves (tests)

    def template(self) -> str:
        if self.sql is not None:
            return self.sql
        return "\n;\n".join(resources.files("sinks").joinpath("sql", f).read_text(encoding="utf-8")
                            for f in self.files)

    def statements(self, params: dict[str, str] | None = None) -> list[str]:
        """The statements with the ``{placeholders}`` of the views filled (rules values)."""
        text = self.template()
        for key, value in {**view_params(), **(params or {})}.items():
            text = text.replace("{" + key + "}", value)
        return statements(text)

    @property
    def checksum(self) -> str:
        """SHA-256 of the statements as written (comments and layout do not count; the rules
        values that fill the placeholders do not either: they are configuration)."""
        normalized = "\n".join(" ".join(s.split()) for s in statements(self.template()))
        return hashlib.sha256(normalized.encode()).hexdigest()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", ("ledger.sql", "derived.sql", "views.sql")),
    Migration(2, "service_halls", ("migrations/0002_service_halls.sql",)),
    Migration(3, "hall_tables", ("migrations/0003_hall_tables.sql",)),
    Migration(4, "dashboard_views", ("migrations/0004_dashboard_views.sql",)),
    Migration(5, "settled_partitions", ("migrations/0005_settled_partitions.sql",)),
    Migration(6, "incident_events", ("migrations/0006_incident_events.sql",)),
    Migration(7, "window_partials_inlet", ("migrations/0007_window_partials_inlet.sql",)),
    Migration(8, "dashboard_snapshots", ("migrations/0008_dashboard_snapshots.sql",)),
    Migration(9, "ledger_inlet", ("migrations/0009_ledger_inlet.sql",)),
)

# Distributed tables' sharding keys (cluster DDL). Every version of a ReplacingMergeTree row must
# reach the same shard (a redelivery carries the same customer; a window partial's versions
# share its key), or FINAL would not collapse them.
SHARDING_KEYS: dict[str, str] = {
    "ledger_events": "cityHash64(customer_id)",
    "satisfaction_scores": "cityHash64(customer_id)",
    "complaint_sla_breaches": "cityHash64(customer_id)",
    "complaint_state": "cityHash64(customer_id)",
    "churn_risk_changes": "cityHash64(customer_id)",
    "tier_proposals": "cityHash64(customer_id)",
    "tier_changes": "cityHash64(customer_id)",
    "satisfaction_window_partials":
        "cityHash64(window, window_start, city, channel, tier, source_partition)",
    "hall_survey_month_partials": "cityHash64(hall_id, month, source_partition)",
    "hall_survey_month_closes": "cityHash64(month, source_partition)",
    "hall_key_improvement_flags": "cityHash64(hall_id)",
    "hall_key_improvement_clears": "cityHash64(hall_id)",
    # filled by materialized views on each node's ledger_events_local: the ledger's key
    "hall_visit_events": "cityHash64(customer_id)",
    "onsite_shift_events": "cityHash64(customer_id)",
    "ledger_by_type": "cityHash64(customer_id)",
    "incident_events": "cityHash64(customer_id)",
    "feedback_sla_breaches": "cityHash64(customer_id)",
    "deadletter_events": "cityHash64(source_topic, source_partition)",
}

KEEPER_PATH = "/clickhouse/tables/{{shard}}/{database}/{table}"
MIGRATIONS_KEEPER_PATH = "/clickhouse/tables/all/{database}/" + MIGRATIONS_TABLE


class MigrationError(StoreError):
    pass


class SchemaTooNew(MigrationError):
    pass


@dataclass(frozen=True)
class Target:
    """Where DDL goes: ``database`` qualifies every name (None: the connection's database);
    ``cluster`` makes it replicated and distributed, ``ON CLUSTER``."""

    database: str | None = None
    cluster: str | None = None

    def name(self, table: str) -> str:
        return f"{self.database}.{table}" if self.database else table


@dataclass
class Applied:
    version: int
    name: str
    checksum: str
    applied_at: datetime | None
    how: str
    cluster: str


@dataclass
class MigrationReport:
    database: str
    before: int
    after: int
    applied: list[int] = field(default_factory=list)
    adopted: bool = False
    cluster: str | None = None
    checksum_mismatches: list[int] = field(default_factory=list)


# -- rendering --------------------------------------------------------------------------------
_CREATE_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<table>\w+)\s*\((?P<body>.*)\)\s*ENGINE\s*=\s*"
    r"(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$", re.S)
# a Null table: an inlet that keeps nothing, for the materialized views over it
# (its SETTINGS, if any, are the query's: allow_suspicious_variant_types for the ledger inlet)
_CREATE_INLET = re.compile(r"^CREATE TABLE IF NOT EXISTS (?P<table>\w+)\s*\((?P<body>.*)\)\s*"
                           r"ENGINE\s*=\s*Null(?P<settings>\s+SETTINGS\s+[\w\s=,]+?)?\s*$", re.S)
_CREATE_VIEW = re.compile(r"^CREATE VIEW IF NOT EXISTS (?P<view>\w+) AS\s+(?P<query>.*)$", re.S)
_ALTER = re.compile(r"^ALTER TABLE (?P<table>\w+)\s+(?P<rest>.*)$", re.S)
_CREATE_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<view>\w+) TO (?P<table>\w+)"
                        r" AS\s+(?P<query>.*)$", re.S)
_COPY = re.compile(r"^INSERT INTO (?P<table>\w+) COPY FROM (?P<view>\w+)$")
# a refreshable materialized view: ClickHouse replaces the table with the query's rows on a
# schedule (REFRESH EVERY ...), in the background
_CREATE_REFRESHABLE = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<view>\w+) (?P<schedule>REFRESH EVERY [^\n]+?) "
    r"TO (?P<table>\w+) AS\s+(?P<query>.*)$", re.S)
# engines of a database that may hold a refreshable view (chDB's default database, Overlay,
# refuses one)
REFRESHABLE_ENGINES = ("Atomic", "Replicated")


def materialized_views(migrations: Sequence[Migration] = MIGRATIONS) -> dict[str, tuple[str, str]]:
    """Materialized view -> (the table it fills, its query), as the migrations create them."""
    return {m["view"]: (m["table"], m["query"]) for migration in migrations
            for statement in migration.statements() if (m := _CREATE_MV.match(statement))}


def snapshot_tables(migrations: Sequence[Migration] = MIGRATIONS) -> dict[str, str]:
    """Snapshot table -> the refreshable view that fills it, as the migrations create them."""
    return {m["table"]: m["view"] for migration in migrations
            for statement in migration.statements()
            if (m := _CREATE_REFRESHABLE.match(statement))}


def refreshers_database(database: str) -> str:
    """The Atomic database beside ``database`` that holds its refreshable views when its own
    engine cannot (chDB's default database). The tables they fill stay in ``database``."""
    return f"{database}_refreshers"


def inlets(migrations: Sequence[Migration] = MIGRATIONS) -> set[str]:
    """The Null tables the migrations create."""
    return {m["table"] for migration in migrations for statement in migration.statements()
            if (m := _CREATE_INLET.match(statement))}


def object_names(migrations: Sequence[Migration] = MIGRATIONS) -> tuple[set[str], set[str]]:
    """(tables, views) the migrations create."""
    tables, views = set(), set()
    for migration in migrations:
        for statement in migration.statements():
            if m := (_CREATE_TABLE.match(statement) or _CREATE_INLET.match(statement)):
                tables.add(m["table"])
            elif m := _CREATE_VIEW.match(statement):
                views.add(m["view"])
    return tables, views


def _qualify_references(query: str, names: Iterable[str], target: Target) -> str:
    if not target.database:
        return query
    pattern = r"\b(FROM|JOIN)(\s+)(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b(?!\.)"
    return re.sub(pattern, lambda m: f"{m[1]}{m[2]}{target.database}.{m[3]}", query)


def render_statement(statement: str, target: Target, names: Iterable[str],
                     home: str | None = None) -> list[str]:
    """One migration statement for ``target``: qualified, and for a cluster replicated,
    distributed and ``ON CLUSTER``. ``home``: the connection's database when its engine cannot
    hold a refreshable view (see ``refreshers_database``)."""
    on = f" ON CLUSTER {target.cluster}" if target.cluster else ""
    if m := _CREATE_TABLE.match(statement):
        table = m["table"]
        if not target.cluster:  # the statement as written, the name qualified
            return [statement.replace(f"CREATE TABLE IF NOT EXISTS {table}",
                                      f"CREATE TABLE IF NOT EXISTS {target.name(table)}", 1)]
        if table in snapshot_tables():
            # a snapshot table: every node refreshes a whole copy of its own from
            # the Distributed tables, so it is neither replicated nor distributed
            return [statement.replace(f"CREATE TABLE IF NOT EXISTS {table}",
                                      f"CREATE TABLE IF NOT EXISTS {target.name(table)}{on}", 1)]
        if table not in SHARDING_KEYS:
            raise MigrationError(f"no sharding key for table {table}: add it to "
                                 "sinks.migrations.SHARDING_KEYS")
        database = target.database
        local = f"{table}_local"
        path = KEEPER_PATH.format(database=database, table=local)
        args = ", ".join([f"'{path}'", "'{replica}'"] + ([m["args"]] if m["args"] else []))
        # replicated tables deduplicate retried blocks by default: the single-node setting has
        # no meaning there, its replicated twin is set instead
        rest = m["rest"].replace("non_replicated_deduplication_window",
                                 "replicated_deduplication_window")
        return [
            f"CREATE TABLE IF NOT EXISTS {database}.{local}{on}\n({m['body']})\n"
            f"ENGINE = Replicated{m['engine']}({args}){rest}",
            f"CREATE TABLE IF NOT EXISTS {database}.{table}{on} AS {database}.{local}\n"
            f"ENGINE = Distributed({target.cluster}, {database}, {local}, {SHARDING_KEYS[table]})",
        ]
    if m := _CREATE_INLET.match(statement):
        # one on every node: whichever node a sink writes to decodes what it is sent
        return [f"CREATE TABLE IF NOT EXISTS {target.name(m['table'])}{on}\n({m['body']})\n"
                f"ENGINE = Null{m['settings'] or ''}"]
    if m := _ALTER.match(statement):
        # a table's own structure (indexes, TTL) lives on the local tables of a cluster; a new
        # column also on the Distributed table over them, which must show it too
        table = f"{m['table']}_local" if target.cluster else m["table"]
        out = [f"ALTER TABLE {target.name(table)}{on} {m['rest']}"]
        if target.cluster and re.match(r"ADD COLUMN\b", m["rest"].strip(), re.I):
            out.append(f"ALTER TABLE {target.name(m['table'])}{on} {m['rest']}")
        return out
    if m := _CREATE_VIEW.match(statement):
        if not target.database:
            return [statement]
        query = _qualify_references(m["query"], names, target)
        return [f"CREATE VIEW IF NOT EXISTS {target.name(m['view'])}{on} AS\n{query}"]
    if m := _CREATE_MV.match(statement):
        # on a cluster each node's view reads what is inserted into its local ledger table and
        # writes to its local table: a row stays on the shard of the ledger row it came from
        # (a view over an inlet writes through the Distributed table: sharded by its key)
        query, table = m["query"], m["table"]
        over_inlet = re.search(r"\bFROM\s+(\w+)", query)[1] in inlets()
        if target.cluster and not over_inlet:
            query = re.sub(r"\b(FROM|JOIN)(\s+)(\w+)\b", r"\1\2\3_local", query)
            table = f"{table}_local"
        query = _qualify_references(query, [*names, *(f"{n}_local" for n in names)], target)
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {target.name(m['view'])}{on} "
                f"TO {target.name(table)} AS\n{query}"]
    if m := _CREATE_REFRESHABLE.match(statement):
        # on a cluster, one per node, over the Distributed tables and views
        where = Target(home) if home else target
        query = _qualify_references(m["query"], names, where)
        view = (f"{refreshers_database(home)}.{m['view']}" if home
                else target.name(m["view"]))
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view}{on} {m['schedule']} "
                f"TO {where.name(m['table'])} AS\n{query}"]
    if m := _COPY.match(statement):
        # what the materialized view would have written for the rows already in its source
        # (on a cluster through the Distributed tables, whose sharding key puts each row
        # where the view puts it)
        views = materialized_views()
        if m["view"] not in views or views[m["view"]][0] != m["table"]:
            raise MigrationError(f"{statement!r}: no materialized view {m['view']} to "
                                 f"{m['table']} in the migrations")
        query = _qualify_references(views[m["view"]][1], names, target)
        return [f"INSERT INTO {target.name(m['table'])}\n{query}"]
    raise MigrationError(f"cannot render this statement for a cluster or another database "
                         f"(only CREATE TABLE/VIEW IF NOT EXISTS, CREATE MATERIALIZED VIEW IF NOT "
                         f"EXISTS ... [REFRESH EVERY ...] TO, INSERT INTO ... COPY FROM and ALTER "
                         f"TABLE): "
                         f"{statement[:80]!r}")


def migrations_table_ddl(target: Target) -> str:
    on = f" ON CLUSTER {target.cluster}" if target.cluster else ""
    if target.cluster:
        path = MIGRATIONS_KEEPER_PATH.format(database=target.database)
        # one replication group over every node of every shard: each node knows the version
        engine = f"ReplicatedReplacingMergeTree('{path}', '{{shard}}-{{replica}}')"
    else:
        engine = "ReplacingMergeTree"
    return (f"CREATE TABLE IF NOT EXISTS {target.name(MIGRATIONS_TABLE)}{on}\n(\n"
            "    version    UInt32,\n"
            "    name       String,\n"
            "    checksum   String,\n"
            "    applied_at DateTime64(3, 'UTC') DEFAULT now64(3),\n"
            "    applied_by String DEFAULT currentUser(),\n"
            "    how        LowCardinality(String),  -- applied | adopted | ddl\n"
            "    cluster    String\n"
            f")\nENGINE = {engine}\nORDER BY version")


def render_migration(migration: Migration, target: Target, params: dict[str, str] | None = None,
                     names: Iterable[str] | None = None,
                     migrations: Sequence[Migration] = MIGRATIONS,
                     home: str | None = None) -> list[str]:
    if names is None:
        tables, views = object_names()
        names = tables | views
    out: list[str] = []
    earlier = _views_before(migration.version, migrations)
    for statement in migration.statements(params):
        rendered = render_statement(statement, target, names, home)
        if (m := _CREATE_VIEW.match(statement)) and m["view"] in earlier:
            # a view an earlier migration made, defined anew (its columns kept: later views
            # read it): replaced, since IF NOT EXISTS would keep the old one
            rendered = [r.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)
                        for r in rendered]
        out += rendered
    return out


def _views_before(version: int, migrations: Sequence[Migration]) -> set[str]:
    return {m["view"] for migration in migrations if migration.version < version
            for statement in migration.statements() if (m := _CREATE_VIEW.match(statement))}


def render_ddl(target: Target, params: dict[str, str] | None = None,
               migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Every statement that builds the current schema from nothing on ``target``, the
    migrations table and its records included (what ``cxledger db ddl`` prints)."""
    if target.cluster and not target.database:
        target = Target(DEFAULT_DATABASE, target.cluster)
    out = []
    if target.database:
        on = f" ON CLUSTER {target.cluster}" if target.cluster else ""
        out.append(f"CREATE DATABASE IF NOT EXISTS {target.database}{on}")
    out.append(migrations_table_ddl(target))
    tables, views = object_names(migrations)
    for migration in migrations:
        out += render_migration(migration, target, params, tables | views, migrations)
    values = ", ".join(f"({m.version}, '{m.name}', '{m.checksum}', 'ddl', "
                       f"'{target.cluster or ''}')" for m in migrations)
    out.append(f"INSERT INTO {target.name(MIGRATIONS_TABLE)} "
               f"(version, name, checksum, how, cluster) VALUES {values}")
    return out


def ddl_script(target: Target, params: dict[str, str] | None = None) -> str:
    where = (f"cluster {target.cluster}, database {target.database or DEFAULT_DATABASE}"
             if target.cluster else f"database {target.database}" if target.database
             else "the connection's database")
    head = [f"-- cxledger ClickHouse schema, version {latest_version()} ({where}).",
            "-- Generated by `cxledger db ddl`; `cxledger db migrate` applies the same statements",
            "-- and records them in schema_migrations.",
            "-- Partitioning: by month of event time (toYYYYMM(occurred_at)); window partials by",
            "-- (window, month). The ledger and the derived tables have no TTL: the ledger is the",
            "-- record. Optional, for the 1-minute window partials only (see deploy/PRODUCTION.md):",
            "--   ALTER TABLE satisfaction_window_partials"
            + ("_local ON CLUSTER " + target.cluster if target.cluster else "")
            + " MODIFY TTL toDateTime(window_start) + INTERVAL 90 DAY DELETE WHERE window = '1m';"]
    if target.cluster:
        head += ["-- Every node needs <macros> with {shard} and {replica}, and Keeper (or",
                 "-- ZooKeeper); the cluster must be defined in <remote_servers>."]
    body = ";\n\n".join(re.sub(r"\n(?:[ \t]*\n)+", "\n", s) for s in render_ddl(target, params))
    return "\n".join(head) + "\n\n" + body + ";\n"


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return max(m.version for m in migrations)


# -- applying ---------------------------------------------------------------------------------
def _scalar(client, sql: str, parameters: dict[str, Any] | None = None):
    rows = client.query(sql, parameters=parameters or {}).result_rows
    return rows[0][0] if rows else None


def current_database(client) -> str:
    return _scalar(client, "SELECT currentDatabase()")


def _table_exists(client, table: str) -> bool:
    return bool(_scalar(client, "SELECT count() FROM system.tables WHERE database = "
                        "currentDatabase() AND name = {t:String}", {"t": table}))


def applied_migrations(client) -> list[Applied] | None:
    """The recorded migrations, oldest first; None when the database has no record table."""
    if not _table_exists(client, MIGRATIONS_TABLE):
        return None
    rows = client.query(f"SELECT version, name, checksum, applied_at, how, cluster FROM "
                        f"{MIGRATIONS_TABLE} FINAL ORDER BY version").result_rows
    return [Applied(int(v), n, c, at, how, cl) for v, n, c, at, how, cl in rows]


def schema_version(client) -> int:
    applied = applied_migrations(client)
    return max((a.version for a in applied), default=0) if applied else 0


def _column_types(statement: str) -> dict[str, str]:
    """Column -> type of a CREATE TABLE statement of ours (types as ClickHouse prints them,
    whitespace removed)."""
    m = _CREATE_TABLE.match(statement)
    columns: dict[str, str] = {}
    depth, start, body, items = 0, 0, m["body"], []
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    for item in items:
        item = item.strip()
        name, _, rest = item.partition(" ")
        if not name or name.upper() in ("INDEX", "PROJECTION", "CONSTRAINT"):
            continue
        type_ = re.split(r"\s+(?:DEFAULT|MATERIALIZED|ALIAS|EPHEMERAL|CODEC|COMMENT|TTL)\b",
                         rest.strip())[0]
        columns[name.strip("`")] = re.sub(r"\s+", "", type_)
    return columns


def _check_adopted(client, migration: Migration, target: Target) -> None:
    """The tables of an adopted database have the columns migration ``migration`` defines."""
    for statement in migration.statements():
        if not _CREATE_TABLE.match(statement):
            continue
        table = _CREATE_TABLE.match(statement)["table"]
        local = f"{table}_local" if target.cluster else table
        have = {name: re.sub(r"\s+", "", type_) for name, type_ in client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND "
            "table = {t:String}", parameters={"t": local}).result_rows}
        for column, type_ in _column_types(statement).items():
            if column not in have:
                raise MigrationError(
                    f"cannot adopt the existing table {local}: it has no column {column} "
                    f"({type_}) that migration {migration.version} ({migration.name}) defines. "
                    "It was made by another version of cxledger; add the column with ALTER "
                    "TABLE ... ADD COLUMN, then run `cxledger db migrate` again")
            if have[column] != type_:
                raise MigrationError(
                    f"cannot adopt the existing table {local}: column {column} is "
                    f"{have[column]}, migration {migration.version} ({migration.name}) defines "
                    f"{type_}")


def _is_access_denied(exc: Exception) -> bool:
    text = str(exc)
    return "ACCESS_DENIED" in text or "Code: 497" in text or "Not enough privileges" in text


def migrate(client, *, cluster: str | None = None, params: dict[str, str] | None = None,
            migrations: Sequence[Migration] = MIGRATIONS) -> MigrationReport:
    """Bring the connection's database to the newest migration (see the module docstring)."""
    migrations = sorted(migrations, key=lambda m: m.version)
    latest = latest_version(migrations)
    database = current_database(client)
    applied = applied_migrations(client)
    done = {a.version: a for a in applied or []}
    before = max(done, default=0)
    if before > latest:
        newest = done[before]
        raise SchemaTooNew(
            f"the ClickHouse database {database} is at schema version {before} "
            f"({newest.name}, applied {newest.applied_at}), newer than this cxledger knows "
            f"(version {latest}): run a cxledger release that includes migration {before}, "
            "or restore the database it was made for")
    recorded = {a.cluster for a in done.values() if a.cluster}
    if cluster and recorded and cluster not in recorded:
        raise MigrationError(f"the database {database} was migrated on cluster "
                             f"{sorted(recorded)[0]}, not {cluster}")
    cluster = cluster or (sorted(recorded)[0] if recorded else None)
    target = Target(database if cluster else None, cluster)
    report = MigrationReport(database, before, before, cluster=cluster)
    for migration in migrations:
        if migration.version in done and done[migration.version].checksum != migration.checksum:
            report.checksum_mismatches.append(migration.version)
            log.warning("an applied migration differs from this build's; changes belong in a "
                        "new migration", version=migration.version, name=migration.name,
                        recorded=done[migration.version].checksum[:12],
                        this_build=migration.checksum[:12])
    pending = [m for m in migrations if m.version not in done]
    if not pending:
        _refresh_views(client, params, cluster, migrations)
        return report
    tables, views = object_names(migrations)
    home = None  # see refreshers_database
    if not cluster and any(_CREATE_REFRESHABLE.match(statement) for migration in pending
                           for statement in migration.statements()):
        engine = _scalar(client, "SELECT engine FROM system.databases "
                                 "WHERE name = currentDatabase()")
        if engine not in REFRESHABLE_ENGINES:
            home = database
    adopting = applied is None and any(
        _table_exists(client, f"{t}_local" if cluster else t) for t in tables)
    try:
        if applied is None:
            client.command(migrations_table_ddl(target))
        if home:
            client.command(f"CREATE DATABASE IF NOT EXISTS {refreshers_database(home)} "
                           "ENGINE = Atomic")
        for migration in pending:
            for statement in render_migration(migration, target, params, tables | views,
                                              migrations, home):
                client.command(statement)
            how = "applied"
            if adopting and migration.version == 1:
                _check_adopted(client, migration, target)
                how = "adopted"
                report.adopted = True
            client.insert(MIGRATIONS_TABLE,
                          [[migration.version, migration.name, migration.checksum, how,
                            cluster or ""]],
                          column_names=["version", "name", "checksum", "how", "cluster"])
            report.applied.append(migration.version)
            report.after = migration.version
            log.info("schema migration applied", database=database, version=migration.version,
                     name=migration.name, how=how, cluster=cluster)
    except MigrationError:
        raise
    except Exception as exc:
        if _is_access_denied(exc):
            raise MigrationError(
                f"the ClickHouse database {database} is at schema version {report.after}, this "
                f"cxledger needs version {latest}, and this ClickHouse user may not change the "
                "schema. Run `cxledger db migrate` as the schema owner (compose: the db-migrate "
                "service; Kubernetes: the cxledger-init Job), then start this process again. "
                f"({str(exc).strip().splitlines()[0][:300]})") from exc
        raise
    _refresh_views(client, params, cluster, migrations)
    return report


def refresh_snapshots(client) -> list[str]:
    """Refresh the tables of every refreshable view of the connection's database now, and wait
    until they hold what the store holds (tests and the benchmark read them right after
    writing). Returns the views, qualified; raises what a failed refresh raised."""
    database = current_database(client)
    ours = set(snapshot_tables().values())
    views = [f"{db}.{view}" for db, view in client.query(
        "SELECT database, view FROM system.view_refreshes WHERE database IN {dbs:Array(String)} "
        "ORDER BY database, view",
        parameters={"dbs": [database, refreshers_database(database)]}).result_rows
        if view in ours]
    for view in views:
        client.command(f"SYSTEM REFRESH VIEW {view}")
    for view in views:
        client.command(f"SYSTEM WAIT VIEW {view}")
    return views


def _refresh_views(client, params: dict[str, str] | None, cluster: str | None,
                   migrations: Sequence[Migration] = MIGRATIONS) -> None:
    """Views made with other rules' values are recreated (sinks.clickhouse.refresh_views); a
    user that may not (the sinks' writer) logs why, and goes on: views hold no data."""
    from sinks.clickhouse import refresh_views

    try:
        refresh_views(client, params, cluster, migrations)
    except StoreError as exc:
        log.error("views out of step with the rules", error=str(exc))
