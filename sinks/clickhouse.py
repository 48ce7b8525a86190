"""Talk to "a ClickHouse" through clickhouse-connect's one Client API.

The DSN decides what is underneath: ``chdb:///dir`` (embedded chDB, the single-machine default)
or ``http(s)://user:pass@host:8123/db`` (a server or cluster). Nothing else branches on it.
One process owns a chDB directory at a time: anything that reads while the pipeline writes must
go through the process that holds the client.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import resources
from pathlib import Path

from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from cxledger.config import redact_dsn

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


def view_params(rules=None) -> dict[str, str]:
    """Placeholders of views.sql from the rules (the shipped rules when None)."""
    from processors.rules import load_rules

    rules = rules or load_rules()
    bounds = list(rules.windows.first_response_bounds) + ["inf"]
    return {
        "first_response_bounds": "[" + ", ".join(f"toFloat64('{b}')" if b == "inf" else
                                                   f"{float(b)}" for b in bounds) + "]",
        "red_threshold": f"{float(rules.satisfaction.red_below)}",
        "alert_min_responses": f"{int(rules.satisfaction.alert_min_responses)}",
    }
