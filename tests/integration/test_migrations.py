"""The versioned ClickHouse schema (sinks.migrations, ``cxledger db``) on the real engine (chDB):

* a fresh database is migrated and recorded; a second run changes nothing; the sinks'
  ``create_tables`` is the same migration;
* a store made with the DDL of before migrations (tests/data/ddl_before_migrations) is adopted
  without losing a row, then later migrations apply to it; a table that lacks a column is not
  adopted;
* a schema newer than this build is refused, naming both versions (and so the sinks refuse it);
* a user that may not change the schema gets a message saying who must;
* ``cxledger db ddl`` for one node, applied to an empty database, builds exactly what the sinks
  build; for a cluster it is Replicated tables under Distributed ones, ON CLUSTER, and ClickHouse's
  own parser (formatQuery) accepts every statement;
* the documented TTL for 1-minute window partials removes old minute windows and nothing else;
* the hall tables of migration 3 hold the hall events stored before it and every later one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import clickhouse_connect
import pytest

from sinks.clickhouse import create_tables, statements, view_params
from sinks.migrations import (MIGRATIONS, MIGRATIONS_TABLE, SHARDING_KEYS, Migration,
                              MigrationError, SchemaTooNew, Target, _column_types,
                              applied_migrations, ddl_script, inlets, latest_version,
                              migrate, object_names, refresh_snapshots, refreshers_database,
                              render_ddl, snapshot_tables)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEGACY_DDL = ROOT / "tests" / "data" / "ddl_before_migrations"
TABLES, VIEWS = object_names()
TABLES -= inlets()  # Null tables: the same on every node, no data (migration 7)
SNAPSHOTS = snapshot_tables()  # table -> the refreshable view that fills it (migration 8)
TABLES -= set(SNAPSHOTS)  # a whole copy on every node
TABLES_1, _ = object_names(MIGRATIONS[:1])  # what a store made before migrations has


@pytest.fixture
def database(store_dir, clickhouse):
    """A fresh database in the session's store and a client whose current database it is."""
    created = []

    def make(prefix: str = "t_mig"):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        clickhouse.command(f"CREATE DATABASE {name}")
        created.append(name)
        return name, clickhouse_connect.get_client(dsn=f"chdb://{store_dir}", database=name)

    yield make
    for name in created:
        clickhouse.command(f"DROP DATABASE IF EXISTS {name}")


def schema(client, database: str) -> dict[str, tuple[str, str]]:
    """name -> (engine, CREATE statement with the database name taken out). Not the tables a
    refreshable view fills while it refreshes (.tmp.inner...: exchanged when it is done)."""
    rows = client.query("SELECT name, engine, create_table_query FROM system.tables "
                        "WHERE database = {db:String} AND NOT startsWith(name, '.tmp')",
                        parameters={"db": database}).result_rows
    return {name: (engine, query.replace(f"{database}.", "DB.")) for name, engine, query in rows}


def fingerprint(client, tables) -> dict[str, tuple[int, int]]:
    """count and a hash of every row of each table, over the columns migration 1 made (a later
    migration may add columns, with defaults)."""
    columns = {m.group(1): list(_column_types(st)) for st in MIGRATIONS[0].statements()
               if (m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", st))}
    return {t: tuple(client.query(f"SELECT count(), groupBitXor(cityHash64({', '.join(columns[t])})) "
                                  f"FROM {t}").result_rows[0])
            for t in sorted(tables)}


def legacy_store(client) -> None:
    """What create_tables did before migrations: the three files, statement by statement."""
    params = view_params()
    for name in ("ledger.sql", "derived.sql", "views.sql"):
        text = (LEGACY_DDL / name).read_text()
        for key, value in params.items():
            text = text.replace("{" + key + "}", value)
        for statement in statements(text):
            client.command(statement)


def seed_rows(client) -> None:
    now = datetime.now(timezone.utc)
    client.insert("ledger_events", [
        [uuid.uuid4(), "contact.completed", now - timedelta(minutes=i), f"c-{i:06d}", "phone",
         "lanzhou", None, None, '{"event_type": "contact.completed"}', 1, i % 3, i]
        for i in range(50)],
        column_names=["event_id", "event_type", "occurred_at", "customer_id", "channel", "city",
                      "agent_id", "correlation_id", "payload", "schema_id", "kafka_partition",
                      "kafka_offset"])
    client.insert("satisfaction_window_partials", [
        ["1d", now.replace(hour=0, minute=0, second=0, microsecond=0), "lanzhou", "phone", "gold",
         p, 1, 10, 850.0, 10, [0] * 11, "test"] for p in range(3)],
        column_names=["window", "window_start", "city", "channel", "tier", "source_partition",
                      "version", "surveys", "composite_sum", "composite_count",
                      "first_response_buckets", "rules_version"])
    client.insert("deadletter_events", [["cx.ledger", 0, 7, "bad framing: 3 bytes", None, "00"]],
                  column_names=["source_topic", "source_partition", "source_offset", "reason",
                                "key", "value_hex"])


# ------------------------------------------------------------------------------------------------
def test_migration_1_is_the_ddl_of_before_migrations_and_is_frozen():
    """An applied migration never changes (stores out there recorded its checksum): a schema
    change is a new migration. Comments and layout may change."""
    legacy = Migration(1, "initial", sql="\n;\n".join(
        (LEGACY_DDL / f).read_text() for f in ("ledger.sql", "derived.sql", "views.sql")))
    assert MIGRATIONS[0].checksum == legacy.checksum, (
        "sinks/sql/{ledger,derived,views}.sql changed a statement of migration 1: undo it and add "
        "the change as migration 2 (sinks/migrations.py MIGRATIONS)")
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1)), "versions are 1, 2, 3, ... in order"


def test_a_fresh_database_is_migrated_once_and_recorded(database):
    name, client = database()
    report = migrate(client)
    everything = list(range(1, latest_version() + 1))
    assert (report.before, report.after, report.applied, report.adopted) == (0, latest_version(), everything, False)
    record, *later = applied_migrations(client)
    assert (record.version, record.name, record.checksum, record.how) == (
        1, "initial", MIGRATIONS[0].checksum, "applied")
    assert [(a.version, a.name, a.checksum) for a in later] == [
        (m.version, m.name, m.checksum) for m in MIGRATIONS[1:]]
    assert isinstance(record.applied_at, datetime)
    assert TABLES | VIEWS <= set(schema(client, name))
    again = migrate(client)
    assert again.applied == [] and again.after == latest_version()
    assert len(applied_migrations(client)) == latest_version()


def test_the_sinks_create_tables_is_the_migration(database):
    name, client = database()
    create_tables(client)
    create_tables(client)  # idempotent
    assert [a.version for a in applied_migrations(client)] == list(range(1, latest_version() + 1))
    other_name, other = database()
    migrate(other)
    assert schema(client, name) == schema(other, other_name)


def test_the_single_node_ddl_builds_what_the_sinks_build(database, clickhouse):
    sinks_name, sinks_client = database("t_sinks")
    create_tables(sinks_client)
    rendered_name, rendered_client = database("t_ddl")
    for statement in render_ddl(Target(database=rendered_name)):
        clickhouse.command(statement)  # through another client: every name is qualified
    assert schema(rendered_client, rendered_name) == schema(sinks_client, sinks_name)
    rendered = [(a.version, a.name, a.checksum) for a in applied_migrations(rendered_client)]
    assert rendered == [(a.version, a.name, a.checksum) for a in applied_migrations(sinks_client)]
    assert migrate(rendered_client).applied == []  # `db migrate` finds the rendered store current


def test_a_store_made_before_migrations_is_adopted_without_data_loss(database):
    name, client = database("t_legacy")
    legacy_store(client)
    seed_rows(client)
    before = fingerprint(client, TABLES_1)
    assert applied_migrations(client) is None
    nxt = latest_version() + 1
    later = Migration(nxt, "add_a_table", sql="""
        -- a later change: a new table and an index on an existing one
        CREATE TABLE IF NOT EXISTS test_later (id UInt64, seen_at DateTime64(3, 'UTC'))
        ENGINE = ReplacingMergeTree ORDER BY id;
        ALTER TABLE deadletter_events ADD INDEX IF NOT EXISTS reason_seen reason TYPE tokenbf_v1(512, 2, 0) GRANULARITY 1
    """)
    report = migrate(client, migrations=(*MIGRATIONS, later))
    assert report.adopted and report.applied == list(range(1, nxt + 1)) and report.after == nxt
    assert [(a.version, a.how) for a in applied_migrations(client)] == [(1, "adopted")] + [
        (v, "applied") for v in range(2, nxt + 1)]
    assert fingerprint(client, TABLES_1) == before, "adoption changed rows"
    assert client.query("SELECT count() FROM ledger").result_rows[0][0] == 50
    assert "test_later" in schema(client, name)
    # the adopted schema is the one a fresh migration builds
    fresh_name, fresh = database("t_fresh")
    migrate(fresh)
    adopted = {k: v for k, v in schema(client, name).items() if k != "test_later"}
    assert "INDEX reason_seen reason" in adopted.pop("deadletter_events")[1]  # the later index
    assert adopted == {k: v for k, v in schema(fresh, fresh_name).items() if k != "deadletter_events"}
    # and this build, which does not know the later migration, refuses the database it made
    with pytest.raises(SchemaTooNew):
        migrate(client)


def test_a_table_without_a_column_of_migration_1_is_not_adopted(database):
    _, client = database("t_legacy")
    legacy_store(client)
    client.command("ALTER TABLE ledger_events DROP COLUMN kafka_offset")
    with pytest.raises(MigrationError, match=r"ledger_events.*kafka_offset"):
        migrate(client)
    assert not [a for a in applied_migrations(client) or [] if a.version == 1]


def test_a_newer_schema_is_refused_naming_both_versions(database):
    _, client = database()
    migrate(client)
    future = latest_version() + 1
    client.insert(MIGRATIONS_TABLE, [[future, "from_the_future", "x" * 64, "applied", ""]],
                  column_names=["version", "name", "checksum", "how", "cluster"])
    with pytest.raises(SchemaTooNew) as refused:
        migrate(client)
    message = str(refused.value)
    assert f"version {future}" in message and f"version {latest_version()}" in message and "from_the_future" in message
    with pytest.raises(SchemaTooNew):
        create_tables(client)  # so a sink of this build does not start on it


def test_a_changed_applied_migration_is_reported(database):
    _, client = database()
    migrate(client)
    client.insert(MIGRATIONS_TABLE, [[1, "initial", "0" * 64, "applied", ""]],
                  column_names=["version", "name", "checksum", "how", "cluster"])
    assert migrate(client).checksum_mismatches == [1]


def test_a_user_that_may_not_change_the_schema_is_told_who_must(database):
    _, client = database()

    class Writer:  # the sinks' user: rows yes, DDL no (what ClickHouse answers it)
        def __getattr__(self, name):
            return getattr(client, name)

        def command(self, sql, *args, **kwargs):
            if sql.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
                raise RuntimeError("Code: 497. DB::Exception: cxledger_writer: Not enough privileges. "
                                   "To execute this query, it's necessary to have the grant CREATE TABLE "
                                   "ON cx.schema_migrations. (ACCESS_DENIED)")
            return client.command(sql, *args, **kwargs)

    with pytest.raises(MigrationError,
                       match=rf"schema version 0.*needs version {latest_version()}.*cxledger db migrate"):
        migrate(Writer())
    migrate(client)
    assert migrate(Writer()).applied == []  # once migrated, the writer starts: reads only


# ------------------------------------------------------------------------------------------------
# Cluster DDL
def test_the_cluster_ddl_is_replicated_distributed_and_on_cluster(clickhouse):
    rendered = render_ddl(Target("cx", "prod"))
    for statement in rendered:
        if not statement.startswith("INSERT"):
            assert " ON CLUSTER prod" in statement.split("\n")[0], statement[:120]
        clickhouse.query("SELECT formatQuery({q:String})", parameters={"q": statement})
    text = "\n".join(rendered)
    creates = {re.match(r"CREATE TABLE IF NOT EXISTS cx\.(\w+)", s).group(1): s for s in rendered
               if s.startswith("CREATE TABLE")}
    columns = {}
    for migration in MIGRATIONS:
        for statement in migration.statements():
            m = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
            if m and m.group(1) in inlets():
                assert f"CREATE TABLE IF NOT EXISTS cx.{m.group(1)} ON CLUSTER prod" in text
            elif m and m.group(1) in SNAPSHOTS:  # a plain table on every node, and its view
                table, view = m.group(1), SNAPSHOTS[m.group(1)]
                assert re.search(rf"CREATE TABLE IF NOT EXISTS cx\.{table} ON CLUSTER prod\n"
                                 r"\([^;]*\)\s*ENGINE = MergeTree\b", creates[table]), creates[table]
                assert re.search(
                    rf"CREATE MATERIALIZED VIEW IF NOT EXISTS cx\.{view} ON CLUSTER prod REFRESH "
                    rf"EVERY [15] MINUTE RANDOMIZE FOR (10 SECOND|1 MINUTE) TO cx\.{table} AS\n"
                    rf"SELECT \* FROM cx\.{table.removesuffix('_snapshot')}\n", text + "\n"), view
            elif m:
                columns[m.group(1)] = set(_column_types(statement))
            m = re.match(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+)", statement)
            if m:  # a later column: on the local tables and on the Distributed one over them
                columns[m.group(1)].add(m.group(2))
                assert (f"ALTER TABLE cx.{m.group(1)}_local ON CLUSTER prod ADD COLUMN IF NOT "
                        f"EXISTS {m.group(2)}") in text
                assert (f"ALTER TABLE cx.{m.group(1)} ON CLUSTER prod ADD COLUMN IF NOT "
                        f"EXISTS {m.group(2)}") in text
    assert set(columns) == TABLES and set(SHARDING_KEYS) >= TABLES
    for table in TABLES:
        local = creates[f"{table}_local"]
        assert re.search(rf"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/{{shard}}/cx/{table}_local', "
                         r"'\{replica\}'", local), local
        distributed = creates[table]
        assert f"AS cx.{table}_local" in distributed
        m = re.search(r"ENGINE = Distributed\(prod, cx, (\w+), (.+)\)$", distributed)
        assert m and m.group(1) == f"{table}_local", distributed
        key_columns = set(re.findall(r"\b[a-z_]+\b", m.group(2))) - {"cityHash64"}
        assert key_columns and key_columns <= columns[table], (table, key_columns)
    assert "cityHash64(customer_id)" in creates["ledger_events"]
    # versions of a window partial meet on one shard: its whole ReplacingMergeTree key
    assert "source_partition" in creates["satisfaction_window_partials"]
    assert "ALTER TABLE cx.ledger_events_local ON CLUSTER prod ADD INDEX" in text
    assert "non_replicated_deduplication_window" not in text
    for view in VIEWS:
        assert f"CREATE VIEW IF NOT EXISTS cx.{view} ON CLUSTER prod AS" in text
    assert "FROM cx.ledger_events FINAL" in text and "FROM ledger_events" not in text
    # the view over the window partials' inlet writes through the Distributed table (its
    # sharding key brings a partial's versions together), reading the node's own inlet
    assert ("CREATE MATERIALIZED VIEW IF NOT EXISTS cx.satisfaction_windows_updated_in_mv ON "
            "CLUSTER prod TO cx.satisfaction_window_partials AS") in text
    assert "FROM cx.satisfaction_windows_updated_in\nARRAY JOIN" in text
    assert "'/clickhouse/tables/all/cx/schema_migrations', '{shard}-{replica}'" in text
    script = ddl_script(Target("cx", "prod"))
    assert "<macros>" in script and "MODIFY TTL" in script


def test_the_minute_window_ttl_removes_old_minute_windows_only(database):
    _, client = database("t_ttl")
    migrate(client)
    line = next(l for l in ddl_script(Target()).splitlines() if "MODIFY TTL" in l)
    ttl = line.lstrip("- ").rstrip(";")
    assert re.search(r"WHERE window = '1m'", ttl) and "satisfaction_window_partials" in ttl
    doc = (ROOT / "deploy" / "PRODUCTION.md").read_text()
    assert ttl in doc, "deploy/PRODUCTION.md documents the same statement"
    client.command(ttl)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = [[window, start, "lanzhou", "phone", "gold", 0, 1, 1, 90.0, 1, [0] * 11, "test"]
            for window, start in (("1m", now - timedelta(days=200)), ("1d", now - timedelta(days=200)),
                                  ("1m", now - timedelta(days=1)))]
    client.insert("satisfaction_window_partials", rows,
                  column_names=["window", "window_start", "city", "channel", "tier", "source_partition",
                                "version", "surveys", "composite_sum", "composite_count",
                                "first_response_buckets", "rules_version"])
    client.command("OPTIMIZE TABLE satisfaction_window_partials FINAL")
    kept = client.query("SELECT window, window_start < now() - INTERVAL 100 DAY AS old "
                        "FROM satisfaction_window_partials ORDER BY window, old").result_rows
    assert kept == [("1d", 1), ("1m", 0)]


def test_a_settled_month_becomes_one_part_and_reads_the_same(database):
    """Migration 5: every partitioned table the views read FINAL, except the ledger itself,
    merges a month into one part once the month has taken no insert for 5 minutes, so FINAL
    has no overlapping parts left to merge there. Shortened to 1 s here: two inserts into one
    month, one row of them a later version of another, stay two parts while the month is young
    and become one part with the same rows once it is older than that."""
    name, client = database("t_settle")
    migrate(client)
    settled = re.findall(r"ALTER TABLE (\w+) MODIFY SETTING", MIGRATIONS[4].template())
    engines = dict(client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {d:String} "
        "AND engine = 'ReplacingMergeTree' AND partition_key != ''", parameters={"d": name}
    ).result_rows)
    assert set(settled) == set(engines) - {"ledger_events"}
    for table in settled:
        assert "min_age_to_force_merge_seconds = 300" in engines[table], table
        assert "min_age_to_force_merge_on_partition_only = 1" in engines[table], table
    assert "min_age_to_force_merge" not in engines["ledger_events"]
    assert "MODIFY SETTING min_age_to_force_merge_seconds = 300" in "\n".join(
        s for s in render_ddl(Target("cx", "prod")) if "satisfaction_window_partials_local" in s)

    start = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
    columns = ["window", "window_start", "city", "channel", "tier", "source_partition", "version",
               "contacts", "rules_version"]
    client.insert("satisfaction_window_partials",
                  [["1m", start + timedelta(minutes=k), "lanzhou", "phone", "gold", 0, 1, 1, "t"]
                   for k in range(3)], column_names=columns)
    client.insert("satisfaction_window_partials",
                  [["1m", start, "lanzhou", "phone", "gold", 0, 2, 5, "t"]], column_names=columns)

    def parts() -> int:
        return client.query("SELECT count() FROM system.parts WHERE active AND database = "
                            "{d:String} AND table = 'satisfaction_window_partials'",
                            parameters={"d": name}).result_rows[0][0]

    def final() -> list:
        return client.query("SELECT window_start, contacts FROM satisfaction_window_partials "
                            "FINAL ORDER BY window_start").result_rows

    before = final()
    assert [c for _, c in before] == [5, 1, 1]
    time.sleep(3)
    assert parts() == 2  # younger than 5 minutes: ClickHouse's own merges leave two small parts
    client.command("ALTER TABLE satisfaction_window_partials MODIFY SETTING "
                   "min_age_to_force_merge_seconds = 1")
    deadline = time.monotonic() + 60
    while parts() > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert parts() == 1
    assert final() == before
    assert client.query("SELECT count() FROM satisfaction_window_partials").result_rows[0][0] == 3


# ------------------------------------------------------------------------------------------------
# The command
def test_cxledger_db_commands(tmp_path):
    """`cxledger db migrate | status | ddl` in a process of their own (chDB: one store per process)."""
    script = f"""
import contextlib, io, sys
from cxledger.cli import main
store = {str(tmp_path / 'store')!r}
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["db", "status", "--store", store]) == 1        # nothing recorded yet
    assert main(["db", "migrate", "--store", store]) == 0
    assert main(["db", "migrate", "--store", store]) == 0
    assert main(["db", "status", "--store", store]) == 0
    assert main(["db", "ddl", "--cluster", "prod", "--database", "cx"]) == 0
sys.stdout.write(out.getvalue())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    latest = latest_version()
    assert f"schema version 0 -> {latest}" in out and f"schema version {latest}, up to date" in out
    assert re.search(r"^\s+1\s+initial\s+applied", out, re.M)
    assert re.search(r"^\s+2\s+service_halls\s+applied", out, re.M)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/cx/ledger_events_local'" in out
    bad = subprocess.run([sys.executable, "-m", "cxledger.cli", "db", "ddl", "--database", "cx; DROP"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode != 0 and "identifier" in bad.stderr


def test_the_hall_tables_hold_the_stored_hall_events_and_every_later_one(database):
    """Migration 3: ClickHouse copies what the service-hall views read into tables of their own
    (materialized views); the views of migration 2 keep their names and rows."""
    from producers.simulator import simulate
    from schemas.validation import normalize_event
    from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

    _, client = database("t_halls")
    migrate(client, migrations=MIGRATIONS[:2])
    records = [normalize_event(e, now_ms=4_000_000_000_000) for e in simulate(6_000, seed=5)]
    rows = [ledger_row(r, 1, 0, i) for i, r in enumerate(records)]
    first, later = rows[:4_000], rows[4_000:]
    client.insert("ledger_events", first, column_names=list(LEDGER_COLUMNS))

    def views() -> tuple[list, ...]:
        return tuple(client.query(f"SELECT * FROM {view} ORDER BY ALL").result_rows
                     for view in ("hall_visits", "onsite_shifts", "staff_exams", "spot_checks",
                                  "feedback_sla_compliance", "incidents"))

    parsed = views()  # migration 2's views: the whole ledger read, its JSON parsed
    assert all(parsed)
    report = migrate(client, migrations=MIGRATIONS[:3])
    assert report.applied == [3]
    assert views() == parsed  # the stored events, copied into the typed tables
    client.insert("ledger_events", later, column_names=list(LEDGER_COLUMNS))
    client.insert("ledger_events", later[:500], column_names=list(LEDGER_COLUMNS))  # redelivered
    visits, shifts, exams, *_ = views()
    assert len(exams) == sum(r["event_type"] == "staff.exam_scored" for r in records)
    hall_visits = sum(r["event_type"] == "hall.visit_completed" for r in records)
    assert len(visits) == hall_visits > len(parsed[0])
    assert len(shifts) == sum(r["event_type"] == "supervision.onsite_shift" for r in records)
    assert len({v[0] for v in visits}) == len(visits)
    assert "JSONExtract" not in client.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
        "AND name = 'hall_visits'").result_rows[0][0]
    assert migrate(client, migrations=MIGRATIONS[:3]).applied == []


def _records_with_an_open_incident() -> list[dict]:
    """6,000 simulated events in record form with two incidents or more, the last one never
    resolved (its incident.resolved taken out)."""
    from producers.simulator import simulate
    from schemas.validation import normalize_event

    records = [normalize_event(e, now_ms=4_000_000_000_000) for e in simulate(6_000, seed=5)]
    resolved = [r for r in records if r["event_type"] == "incident.resolved"]
    assert len(resolved) >= 2
    records.remove(resolved[-1])  # that incident is still open
    return records


def _write_folded(client, records: list[dict]) -> None:
    """The derived rows of ``records`` folded in one partition, written as replay does."""
    from processors.batch import PartitionFolds
    from processors.rules import load_rules
    from sinks.replay import write_derived

    write_derived(client, PartitionFolds(load_rules(), 1).fold_batch({0: records}), database="")


def test_the_faster_dashboard_views_give_the_same_rows(database):
    """Migration 4 defines contact_volume_hourly, incident_tags and hall_metrics_monthly anew
    (for speed): on a folded ledger with incidents, one of them still open, every row is the
    same as migration 3's, and the hall league over hall_metrics_monthly too."""
    from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

    _, client = database("t_dash")
    migrate(client, migrations=MIGRATIONS[:3])
    records = _records_with_an_open_incident()
    client.insert("ledger_events", [ledger_row(r, 1, 0, i) for i, r in enumerate(records)],
                  column_names=list(LEDGER_COLUMNS))
    _write_folded(client, records)

    def views() -> dict[str, list]:
        return {view: client.query(f"SELECT * FROM {view} ORDER BY ALL").result_rows
                for view in ("contact_volume_hourly", "incident_tags", "hall_metrics_monthly",
                             "hall_league_monthly")}

    before = views()
    assert all(before[view] for view in ("contact_volume_hourly", "incident_tags",
                                         "hall_metrics_monthly"))
    assert {row[0] for row in before["incident_tags"]} <= {
        r["incident_id"] for r in records if r["event_type"] == "incident.detected"}
    assert any(row[4] for row in before["contact_volume_hourly"])  # hours with incidents open
    assert migrate(client, migrations=MIGRATIONS[:4]).applied == [4]
    assert views() == before


def test_the_incidents_come_from_a_table_of_their_own_with_the_same_rows(database):
    """Migration 6: ClickHouse types the incident events into incident_events (a materialized
    view over ledger_events); the incidents view reads that table, not the ledger's JSON, and
    it and every view over it (incident_tags, the hourly contact volume with incidents
    overlaid) keep their rows: the stored incidents copied, later ones added once each however
    often a batch is redelivered, and an incident not resolved yet still open."""
    from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

    _, client = database("t_incidents")
    migrate(client, migrations=MIGRATIONS[:5])
    records = _records_with_an_open_incident()
    rows = [ledger_row(r, 1, 0, i) for i, r in enumerate(records)]
    cut = next(i for i, r in enumerate(records) if r["event_type"] == "incident.detected") + 1
    first, later = rows[:cut], rows[cut:]  # one incident stored before the migration
    client.insert("ledger_events", first, column_names=list(LEDGER_COLUMNS))
    _write_folded(client, records)

    def views() -> dict[str, list]:
        return {view: client.query(f"SELECT * FROM {view} ORDER BY ALL").result_rows
                for view in ("incidents", "incident_tags", "contact_volume_hourly")}

    def columns() -> list:
        return client.query("SELECT name, type FROM system.columns WHERE database = "
                            "currentDatabase() AND table = 'incidents' ORDER BY position"
                            ).result_rows

    stored, typed = views(), columns()
    assert len(stored["incidents"]) == 1
    assert migrate(client, migrations=MIGRATIONS[:6]).applied == [6]
    assert views() == stored and columns() == typed  # the stored incident, copied

    client.insert("ledger_events", later, column_names=list(LEDGER_COLUMNS))
    before = views()
    # the incidents view as migration 3 defined it (parsing ledger_by_type's JSON), to compare
    client.command("CREATE VIEW incidents_before_migration_6 AS SELECT * FROM ("
                   + MIGRATIONS[2].template().split("CREATE VIEW IF NOT EXISTS incidents AS")[1]
                   .split(";")[0] + ")")
    old = client.query("SELECT * FROM incidents_before_migration_6 ORDER BY ALL").result_rows
    client.insert("ledger_events", later[:300], column_names=list(LEDGER_COLUMNS))  # redelivered
    assert views() == before
    assert before["incidents"] == old
    detected = {r["incident_id"] for r in records if r["event_type"] == "incident.detected"}
    assert {row[0] for row in old} == detected and len(detected) >= 2
    assert sum(row[2] is None for row in old) == 1  # the open one
    assert any(row[4] for row in before["contact_volume_hourly"])  # hours with incidents open
    assert "JSONExtract" not in client.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
        "AND name = 'incidents'").result_rows[0][0]
    assert migrate(client, migrations=MIGRATIONS[:6]).applied == []


def test_the_dashboard_snapshots_hold_their_views_rows_and_follow_the_store(database, clickhouse):
    """Migration 8: each snapshot table holds its view's rows once refreshed, a later change
    once refreshed again, and ClickHouse has the next refresh scheduled: within the minute for
    the contact volume and churn risk, five for the hall views (and their random shift). In a
    database that may hold refreshable views (Atomic) they live in it;
    in chDB's default database (Overlay, the shared store's) in an Atomic database beside it,
    still filling the tables there."""
    from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row

    name, client = database("t_snap")
    migrate(client)
    records = _records_with_an_open_incident()
    client.insert("ledger_events", [ledger_row(r, 1, 0, i) for i, r in enumerate(records)],
                  column_names=list(LEDGER_COLUMNS))
    _write_folded(client, records)
    assert sorted(refresh_snapshots(client)) == sorted(f"{name}.{v}" for v in SNAPSHOTS.values())
    for table in SNAPSHOTS:
        view = table.removesuffix("_snapshot")
        rows = client.query(f"SELECT * FROM {view} ORDER BY ALL").result_rows
        assert client.query(f"SELECT * FROM {table} ORDER BY ALL").result_rows == rows, table
        if view in ("hall_metrics_monthly", "hall_metrics_district_monthly",
                    "contact_volume_hourly", "hall_satisfaction_monthly"):
            assert rows, view

    # one more hall visit, of a hall never seen: in the snapshot once it is refreshed
    visit = next(r for r in records if r["event_type"] == "hall.visit_completed")
    new = {**visit, "event_id": str(uuid.uuid4()), "hall_id": "H-SNAPSHOT"}
    client.insert("ledger_events", [ledger_row(new, 1, 0, len(records))],
                  column_names=list(LEDGER_COLUMNS))
    seen = lambda: client.query("SELECT count() FROM hall_metrics_monthly_snapshot "  # noqa: E731
                                "WHERE hall_id = 'H-SNAPSHOT'").result_rows[0][0]
    assert not seen()
    refresh_snapshots(client)
    assert seen() == 1
    schedule = client.query(
        "SELECT view, status, exception, dateDiff('second', now(), next_refresh_time) "
        "FROM system.view_refreshes WHERE database = currentDatabase()").result_rows
    assert len(schedule) == len(SNAPSHOTS)
    for view, status, exception, due_in in schedule:
        assert status in ("Scheduled", "Running") and not exception, (view, status, exception)
        assert 0 <= due_in <= (335 if view.startswith("hall_") else 70), (view, due_in)

    home = clickhouse.query("SELECT currentDatabase(), engine FROM system.databases "
                            "WHERE name = currentDatabase()").result_rows[0]
    assert home[1] == "Overlay"
    assert sorted(refresh_snapshots(clickhouse)) == sorted(
        f"{refreshers_database(home[0])}.{v}" for v in SNAPSHOTS.values())
