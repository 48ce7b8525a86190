"""Talk to "a ClickHouse" through clickhouse-connect's one Client API.

The DSN decides what is underneath: ``chdb:///dir`` (embedded chDB, the single-machine default)
or ``http(s)://user:pass@host:8123/db`` (a server or cluster). Nothing else branches on it.
One process owns a chDB directory at a time: anything that reads while the pipeline writes must
go through the process that holds the client.

The views' thresholds and bucket bounds come from the rules file (``view_params``): pass the
configured rules' (``create_tables(client, view_params(rules))``; the pipeline, ``up`` and
``cxledger db migrate`` do). A store made with other rules has its views recreated
(``refresh_views``, run by every migration: ``CREATE OR REPLACE VIEW`` of each view whose stored
query differs from the one these rules give); views hold no data, so nothing else changes.
"""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path

from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

import structlog

from cxledger.config import redact_dsn

log = structlog.get_logger("cxledger.store")

DDL_FILES = ("ledger.sql", "derived.sql", "views.sql")


class StoreError(RuntimeError):
    pass


def connect(dsn: str) -> Client:
    if dsn.startswith("chdb://"):
        if importlib.util.find_spec("chdb") is None:
            raise StoreError(f"{dsn} is the embedded store, which needs chDB: install cxledger "
                             "with the `local` extra (pip install 'cxledger[local]'), or set "
                             "CXLEDGER_CLICKHOUSE_DSN to a ClickHouse server")
        if not dsn.startswith("chdb://memory"):
            Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
    # clickhouse-connect does not read the scheme of an http(s) DSN: say it, or https:// would
    # quietly speak plain HTTP
    scheme = urlsplit(dsn).scheme
    interface = {"interface": scheme} if scheme in ("http", "https") else {}
    shown = redact_dsn(dsn)
    try:
        return clickhouse_connect.get_client(dsn=dsn, **interface)
    except Exception as exc:
        reason = _hide_password(str(exc), dsn)
        if "Cannot lock file" in reason:
            raise StoreError(f"the store {shown} is in use by another process (one process owns a "
                             "chDB directory); stop it, or query through it") from None
        if "already initialized with path" in reason:
            raise StoreError(f"this process already has another embedded store open; chDB opens "
                             f"one directory per process (wanted {shown})") from None
        raise StoreError(f"cannot connect to ClickHouse at {shown}: {reason}") from None


def _hide_password(text: str, dsn: str) -> str:
    password = urlsplit(dsn).password
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


def statements(sql: str) -> list[str]:
    """Split a DDL file into statements (no semicolons inside our string literals)."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in sql.split(";") if s.strip()]


def ddl_text(name: str) -> str:
    return resources.files("sinks").joinpath("sql", name).read_text(encoding="utf-8")


def create_tables(client: Client, params: dict[str, str] | None = None,
                  files: tuple[str, ...] = DDL_FILES) -> None:
    """Bring the schema to the newest migration (sinks.migrations.migrate: idempotent, refuses
    a schema newer than this build, adopts a store made before migrations existed). ``params``
    fill ``{name}`` placeholders of the view definitions (thresholds and bucket bounds from the
    rules file). ``files``, when not all of DDL_FILES, runs just those files' statements,
    unrecorded (a partial schema for tests)."""
    if tuple(files) == DDL_FILES:
        from sinks.migrations import migrate

        migrate(client, params=params)
        return
    params = {**view_params(), **(params or {})}
    for name in files:
        text = ddl_text(name)
        for key, value in params.items():
            text = text.replace("{" + key + "}", value)
        for statement in statements(text):
            client.command(statement)


def refresh_views(client: Client, params: dict[str, str] | None = None,
                  cluster: str | None = None, migrations=None) -> list[str]:
    """Recreate every existing view of the migrations whose stored query differs from the one
    ``params`` (the rules' values) give; returns their names. Both queries are compared as
    ClickHouse formats them (``formatQuerySingleLine``, the stored one without its database
    qualification). A user that may not create views (the sinks' writer) gets a StoreError
    saying to run ``cxledger db migrate`` with the same rules."""
    from sinks.migrations import (MIGRATIONS, MigrationError, Target, _CREATE_VIEW,
                                  _is_access_denied, current_database, object_names,
                                  render_statement)

    wanted: dict[str, tuple[str, str]] = {}  # view -> (statement, query); the last one counts
    migrations = MIGRATIONS if migrations is None else migrations
    for migration in migrations:
        for statement in migration.statements(params):
            if m := _CREATE_VIEW.match(statement):
                wanted[m["view"]] = (statement, m["query"])
    if not wanted:
        return []
    database = current_database(client)
    try:
        stored = dict(client.query(
            "SELECT name, formatQuerySingleLine(replaceRegexpAll(as_select, {q:String}, '')) "
            "FROM system.tables WHERE database = currentDatabase() AND engine = 'View' "
            "AND name IN {names:Array(String)}",
            parameters={"q": r"\b" + re.escape(database) + r"\.", "names": list(wanted)}
        ).result_rows)
        names = [name for name in wanted if name in stored]
        formatted = client.query(
            "SELECT formatQuerySingleLine(q) FROM (SELECT arrayJoin({qs:Array(String)}) AS q)",
            parameters={"qs": [wanted[n][1] for n in names]}).result_rows
    except Exception as exc:  # a ClickHouse without system.tables.as_select: nothing to compare
        log.warning("views not compared with the rules", error=str(exc).strip()[:300])
        return []
    stale = [name for name, (query,) in zip(names, formatted) if stored[name] != query]
    if not stale:
        return []
    target = Target(database if cluster else None, cluster)
    tables, views = object_names(migrations)
    try:
        for name in stale:
            for statement in render_statement(wanted[name][0], target, tables | views):
                client.command(statement.replace("CREATE VIEW IF NOT EXISTS",
                                                 "CREATE OR REPLACE VIEW", 1))
    except Exception as exc:
        if isinstance(exc, MigrationError) or not _is_access_denied(exc):
            raise
        raise StoreError(
            f"the views {', '.join(stale)} of the ClickHouse database {database} were made with "
            f"other rules than these ({json.dumps(params or view_params())}), and this user may "
            "not recreate them: run `cxledger db migrate` as the schema owner with the same "
            "CXLEDGER_RULES") from exc
    log.info("views recreated with the rules' values", views=stale, database=database)
    return stale


def view_params(rules=None) -> dict[str, str]:
    """Placeholders of views.sql from the rules (the shipped rules when None)."""
    from processors.rules import load_rules

    rules = rules or load_rules()
    bounds = list(rules.windows.first_response_bounds) + ["inf"]
    halls = rules.halls
    return {
        "first_response_bounds": "[" + ", ".join(f"toFloat64('{b}')" if b == "inf" else
                                                   f"{float(b)}" for b in bounds) + "]",
        "red_threshold": f"{float(rules.satisfaction.red_below)}",
        "alert_min_responses": f"{int(rules.satisfaction.alert_min_responses)}",
        # migration 2 (service halls): the rules' values, as SQL literals
        "business_timezone": rules.windows.business_timezone,
        "hall_target": f"{float(halls.target)}",
        "hall_min_valid_replies": f"{int(halls.min_valid_replies)}",
        "hall_item_scale": f"{float(halls.item_scale)}",
        "star_exam_mean": f"{float(halls.star_exam_mean_at_least)}",
        "star_spot_check": f"{float(halls.star_spot_check_at_least)}",
        "service_request_seconds": f"{float(rules.service_requests.first_response_seconds):g}",
    }
