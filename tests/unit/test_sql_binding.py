"""Every SQL statement the project builds binds its values as parameters (security).

A static check of the source: any call of a ClickHouse client method (``query``, ``command``,
``raw_query``, ``insert``, ...) whose SQL is built at run time (an f-string with a value in it,
``.format``, ``%``, ``+``, ``.replace``, or a variable) must be in a function listed below with
the reason why what it puts into the SQL is not user input. A new one fails this test until it
binds its values (``{name:Type}`` with ``parameters=``) or is listed with its reason.
"""

from __future__ import annotations

import ast
import base64
import re
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cxledger", "producers", "processors", "sinks", "schemas")
CLIENT_METHODS = {"query", "command", "raw_query", "raw_insert", "insert", "query_df",
                  "query_arrow", "query_np", "raw_stream", "query_rows_stream",
                  "query_row_block_stream", "query_column_block_stream"}

# (file, function) -> why the SQL it builds carries no value from outside.
REVIEWED = {
    ("cxledger/cli.py", "cmd_sql"):
        "runs the user's own query (`cxledger sql QUERY`): what the command is for",
    ("cxledger/customer.py", "partition_cut"):
        "appends _cut(), a constant fragment whose value is bound ({cut:Int64})",
    ("cxledger/customer.py", "customer_ledger"):
        "constant text plus _cut(); the customer, partition and cut are bound",
    ("cxledger/customer.py", "partition_ledger"):
        "constant text plus _cut(); partition, offset and page size are bound",
    ("cxledger/customer.py", "incidents_in"):
        "constant text plus _cut(), whose value is bound ({cut:Int64})",
    ("cxledger/demo.py", "pretty"):
        "runs the module's constant queries; the customer id is bound ({customer:String})",
    ("cxledger/query_endpoint.py", "_rows"):
        "constant queries of the endpoint's own start-up",
    ("cxledger/query_endpoint.py", "_execute"):
        "runs the client's own query (the endpoint's purpose) with its parameters bound by "
        "the engine; the statement check runs on ClickHouse's parse of it",
    ("cxledger/query_endpoint.py", "_run"):
        "SET of a request setting: the name must be an identifier and a known, permitted "
        "setting, the value a quoted literal (_quote escapes \\ and '); USE of a database "
        "quoted as an identifier. ClickHouse cannot bind parameters in SET or USE",
    ("cxledger/up.py", "_restore"):
        "DROP DATABASE of REPLAY_DB, a constant identifier",
    ("sinks/clickhouse.py", "create_tables"):
        "runs the shipped DDL files; their placeholders are numbers from the rules file, "
        "formatted by view_params as int/float",
    ("sinks/clickhouse.py", "refresh_views"):
        "the shipped migrations' view statements, rendered by sinks.migrations for the "
        "connection's database and a recorded cluster name; their placeholders are numbers "
        "from the rules file, formatted by view_params",
    ("sinks/kafka_sink.py", "_insert_raw"):
        "client.raw_insert(table, container): the messages are sent as data; table is an "
        "AvroInlet's, one of our table names (sinks.derived_sink.WINDOWS_INLET, "
        "sinks.ledger_inlets.INLET_TABLE)",
    ("sinks/kafka_sink.py", "_insert_isolating"):
        "client.insert(table, rows): rows are sent as data; table is one of our table names",
    ("sinks/ledger_sink.py", "keep_first_version"):
        "_stored_versions_query writes event ids into a string literal only when every one "
        "matched the canonical UUID form, and then as base64 of their bytes (letters, digits, "
        "+, / and =: nothing to quote); else they are bound",
    ("sinks/ledger_sink.py", "_stored_ids"):
        "the same query as keep_first_version (_stored_versions_query), for the ids of the "
        "messages bound for the ledger inlet",
    ("sinks/migrations.py", "_scalar"):
        "runs the module's constant queries with parameters bound",
    ("sinks/migrations.py", "applied_migrations"):
        "MIGRATIONS_TABLE, a constant identifier",
    ("sinks/migrations.py", "migrate"):
        "the shipped migrations, rendered for a database and cluster the CLI checks are "
        "identifiers; rows go as data",
    ("sinks/migrations.py", "refresh_snapshots"):
        "the refreshable views the store lists in system.view_refreshes, kept only when they "
        "are ours (names of the shipped migrations), in the connection's database or the one "
        "beside it",
    ("sinks/replay.py", "create_replay_tables"):
        "REPLAY_DB/LIVE_COPY_DB and derived table names: constant identifiers of ours",
    ("sinks/replay.py", "copy_live_tables"):
        "derived table names and LIVE_COPY_DB: constant identifiers of ours",
    ("sinks/replay.py", "repair"):
        "our table names and their sorting key as the store reports it for our own DDL",
    ("sinks/replay.py", "write_derived"):
        "client.insert into derived tables of ours, in REPLAY_DB or the client's database (its "
        "callers pass those constants); rows go as data",
    ("sinks/replay.py", "compare"):
        "our table names only",
}


def _dynamic(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "replace", "join", "format_map")
    return isinstance(node, (ast.BinOp, ast.Name, ast.Attribute, ast.Subscript, ast.IfExp))


def built_sql() -> dict[tuple[str, str], list[str]]:
    """(file, function) -> 'line: sql' of every client call with SQL built at run time."""
    found: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr in CLIENT_METHODS and node.args
                            and _dynamic(node.args[0])):
                        where = (str(path.relative_to(ROOT)), fn.name)
                        found.setdefault(where, []).append(
                            f"{node.lineno}: {ast.unparse(node.args[0])[:100]}")
    return found


def test_sql_built_at_run_time_is_reviewed():
    unreviewed = {k: v for k, v in built_sql().items() if k not in REVIEWED}
    assert not unreviewed, (
        "SQL built at run time outside the reviewed functions: bind the values as parameters "
        "({name:Type} with parameters=...), or add the function to REVIEWED with the reason "
        f"nothing from outside reaches the text: {unreviewed}")


def test_no_formatted_values_in_the_demo_and_customer_queries():
    for name in ("cxledger/demo.py", "cxledger/customer.py"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "_quote(" not in text, f"{name} quotes a value into SQL: bind it instead"


def test_the_identifiers_put_into_sql_are_identifiers():
    from sinks.replay import LIVE_COPY_DB, REPLAY_DB, replay_tables

    names = [REPLAY_DB, LIVE_COPY_DB, *replay_tables(None)]
    try:
        from sinks.migrations import MIGRATIONS_TABLE
        names.append(MIGRATIONS_TABLE)
    except ImportError:
        pass
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names), names


def test_event_ids_are_written_into_sql_only_in_canonical_form():
    from sinks.ledger_sink import _stored_versions_query

    ids = ["0b6f7e64-3b7c-4c1e-9a57-2f1c9d3e8a10", "7d9b2c4e-1f3a-4b5c-8d6e-9f0a1b2c3d4e"]
    sql, parameters = _stored_versions_query(ids)
    packed = base64.b64encode(uuid.UUID(ids[0]).bytes + uuid.UUID(ids[1]).bytes).decode()
    assert f"base64Decode('{packed}')" in sql and parameters == {}
    for hostile in ("0b6f7e64-3b7c-4c1e-9a57-2f1c9d3e8a10') OR 1=1 --",
                    "0B6F7E64-3B7C-4C1E-9A57-2F1C9D3E8A10"):
        sql, parameters = _stored_versions_query([ids[0], hostile])
        assert hostile not in sql and "{ids:Array(UUID)}" in sql
        assert parameters == {"ids": [ids[0], hostile]}
