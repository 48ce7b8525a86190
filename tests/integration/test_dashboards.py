"""Grafana dashboards, provisioning and deployment manifests, checked by what runs here.

The build machines have no Grafana, Apache Kafka, schema registry or Docker engine
(shared/local-stack.md), so the deployment is checked through what can run:

* every dashboard JSON is well formed and every panel and variable uses the provisioned data
  source (uid ``cxledger-clickhouse``);
* every panel query and every template-variable query is expanded the way Grafana and the
  grafana-clickhouse-datasource plugin expand it, for a fixed time range and several variable
  selections, and executed on the real ClickHouse engine with the real schema (the session's
  ``clickhouse`` fixture: chDB). Expansion happens in the plugin's order:

  1. frontend, ``CHDatasource.applyTemplateVariables``: ``$__conditionalAll(condition, $var)``
     becomes ``1=1`` when the variable is "All" (or empty), else the condition (same argument
     scanner as the plugin: the last macro first, commas split at bracket depth 1);
  2. frontend, Grafana's template service: ``$var``, ``${var}``, ``${var:format}``; without a
     format the plugin formats a multi-value as ``'a','b'`` and a single value as it is;
     "All" without an allValue becomes every option (query variables: the variable's own query);
  3. backend, sqlds ``interpolate`` with the plugin's macro table (pkg/macros/macros.go): the
     regex ``\\$__name\\b(?:\\((.*?)\\))?``, arguments split on commas and trimmed;
     ``$__timeFilter(c)`` -> ``c >= toDateTime(from) AND c <= toDateTime(to)``,
     ``$__fromTime``/``$__toTime`` -> ``toDateTime(epoch)``, ``$__timeInterval(c)`` ->
     ``toStartOfInterval(toDateTime(c), INTERVAL n second)``, ``_ms`` variants with
     ``fromUnixTimestamp64Milli``, ``$__dateFilter``, ``$__dateTimeFilter``/``$__dt``,
     ``$__interval_s``.

  Anything left with a ``$`` afterwards is an unknown macro or variable and fails the test. A few
  panels are also checked on rows seeded for this module (removed again afterwards);
* compose.yaml, the k8s manifests and the Dockerfile parse, run only commands that
  ``cxledger.cli.build_parser()`` accepts (``process`` and ``gateway`` are allowed before they
  exist), set only CXLEDGER_* variables that cxledger/config.py reads, and wire services,
  secrets, mounts and the Grafana provisioning together consistently.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
import yaml

from cxledger.cli import build_parser
from cxledger.config import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml"
DASHBOARD_PROVIDER_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "cxledger.yaml"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
GRAFANA_USERS_FILE = DEPLOY / "clickhouse" / "users.d" / "grafana.xml"
PLUGIN_ID = "grafana-clickhouse-datasource"
FUTURE_COMMANDS = {"process", "gateway"}  # referenced by the deployment, may not be in the parser yet

# The fixed dashboard time range: six business-time-zone months (Asia/Shanghai), Oct 2024 - Mar 2025.
SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FROM = datetime(2024, 10, 1, tzinfo=SHANGHAI).astimezone(timezone.utc)
TIME_TO = datetime(2025, 3, 31, 23, 59, 59, tzinfo=SHANGHAI).astimezone(timezone.utc)
INTERVAL_SECONDS = 3600
ALL = "$__all"


# ------------------------------------------------------------------------------------------------
# Loading
def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def load_dashboards() -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARD_FILES]


def provisioned_datasource() -> dict:
    (ds,) = load_yaml_docs(DATASOURCE_FILE)[0]["datasources"]
    return ds


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside (collapsed) rows."""
    out = []
    for p in panels:
        out.append(p)
        out += all_panels(p.get("panels", []))
    return out


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard["panels"]) if p.get("type") != "row"]


def variable_sql(var: dict) -> str:
    query = var.get("query")
    return query.get("rawSql", "") if isinstance(query, dict) else (query or "")


# ------------------------------------------------------------------------------------------------
# Expansion, step 1 (frontend): $__conditionalAll, ported from CHDatasource.applyConditionalAll
def _macro_args(query: str, args_index: int) -> list[str]:
    """CHDatasource.getMacroArgs: arguments of the macro whose '(' is at ``args_index``."""
    args: list[str] = []
    depth = 0
    last = 1
    sub = query[args_index:]
    for m in re.finditer(r"[(),]", sub):
        ch, end = m.group(), m.end()
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 1:
            args.append(sub[last:end - 1])
            last = end
        if depth == 0:
            args.append(sub[last:end - 1])
            return args
    return []


def apply_conditional_all(sql: str, values: dict[str, Any]) -> str:
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    while index != -1:
        params = _macro_args(sql, index + len(macro) - 1)
        assert len(params) == 2, f"$__conditionalAll needs (condition, $variable): {sql[index:index + 120]!r}"
        name = params[1].strip()
        assert name.startswith("$") and name[1:] in values, (
            f"$__conditionalAll refers to {name!r}, not a variable of this dashboard ({sorted(values)})")
        value = values[name[1:]]
        text = ",".join(value) if isinstance(value, list) else str(value)
        phrase = "1=1" if text in ("", ALL) else params[0]
        sql = sql.replace(f"{macro}{params[0]},{params[1]})", phrase, 1)
        index = sql.rfind(macro)
    return sql


# Expansion, step 2 (frontend): Grafana's template service with the plugin's format function.
_TEMPLATE_VAR = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _format(value: Any, fmt: str | None) -> str:
    if fmt is None:  # CHDatasource.format: arrays as 'a','b', anything else as it is
        return "'" + "','".join(value) + "'" if isinstance(value, list) else str(value)
    values = value if isinstance(value, list) else [str(value)]
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt in ("csv", "raw"):
        return ",".join(values)
    raise AssertionError(f"variable format {fmt!r} is not one this test knows; add it")


def replace_variables(sql: str, values: dict[str, Any], options: dict[str, list[str]],
                      all_values: dict[str, str | None]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in values:
            return m.group(0)  # not a dashboard variable: left for the backend (macros)
        value = values[name]
        if value == ALL or value == [ALL]:
            if all_values.get(name):
                return all_values[name]  # a custom allValue is used as it is
            value = options[name]
        return _format(value, fmt)

    return _TEMPLATE_VAR.sub(sub, sql)


# Expansion, step 3 (backend): sqlds interpolate with the plugin's macros (pkg/macros/macros.go).
def expand_macros(sql: str, t_from: datetime, t_to: datetime, interval_s: int) -> str:
    def dt(t: datetime) -> str:
        return f"toDateTime({int(t.timestamp())})"

    def dt64(t: datetime) -> str:
        return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"

    def date(t: datetime) -> str:
        return f"toDate('{t.astimezone(timezone.utc):%Y-%m-%d}')"

    seconds = max(int(interval_s), 1)
    macros: dict[str, tuple[int | None, Callable[[list[str]], str]]] = {
        "fromTime": (None, lambda a: dt(t_from)),
        "toTime": (None, lambda a: dt(t_to)),
        "fromTime_ms": (None, lambda a: dt64(t_from)),
        "toTime_ms": (None, lambda a: dt64(t_to)),
        "timeFilter": (1, lambda a: f"{a[0]} >= {dt(t_from)} AND {a[0]} <= {dt(t_to)}"),
        "timeFilter_ms": (1, lambda a: f"{a[0]} >= {dt64(t_from)} AND {a[0]} <= {dt64(t_to)}"),
        "dateFilter": (1, lambda a: f"{a[0]} >= {date(t_from)} AND {a[0]} <= {date(t_to)}"),
        "dateTimeFilter": (2, lambda a: f"({a[0]} >= {date(t_from)} AND {a[0]} <= {date(t_to)}) AND "
                                        f"({a[1]} >= {dt(t_from)} AND {a[1]} <= {dt(t_to)})"),
        "dt": (2, lambda a: f"({a[0]} >= {date(t_from)} AND {a[0]} <= {date(t_to)}) AND "
                            f"({a[1]} >= {dt(t_from)} AND {a[1]} <= {dt(t_to)})"),
        "timeInterval": (1, lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {seconds} second)"),
        "timeInterval_ms": (1, lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), "
                                         f"INTERVAL {seconds * 1000} millisecond)"),
        "interval_s": (None, lambda a: str(seconds)),
    }
    for name, (arity, render) in macros.items():
        for m in list(re.finditer(r"\$__" + name + r"\b(?:\((.*?)\))?", sql)):
            args = [a.strip() for a in (m.group(1) or "").split(",")]
            assert arity is None or len(args) == arity, (
                f"$__{name} expects {arity} argument(s), got {args} in {m.group(0)!r}")
            assert arity is None or all(args), f"empty argument in {m.group(0)!r}"
            sql = sql.replace(m.group(0), render(args))
    return sql


def render_sql(sql: str, values: dict[str, Any], options: dict[str, list[str]],
               all_values: dict[str, str | None]) -> str:
    out = apply_conditional_all(sql, values)
    out = replace_variables(out, values, options, all_values)
    out = expand_macros(out, TIME_FROM, TIME_TO, INTERVAL_SECONDS)
    leftover = re.search(r"\$\{?\w*", out)
    assert leftover is None, (
        f"unexpanded macro or unknown variable {leftover.group(0)!r} after expansion:\n{out}")
    return out


# ------------------------------------------------------------------------------------------------
# Unit checks of the expansion itself (the port must behave like the plugin)
def test_expansion_follows_the_plugin():
    values = {"city": [ALL], "channel": ["phone", "web"], "tier": "gold"}
    options = {"city": ["beijing", "o'hare"], "channel": [], "tier": []}
    sql = ("SELECT 1 FROM t WHERE $__timeFilter(ts) AND $__conditionalAll(city IN (${city:singlequote}), $city)"
           " AND $__conditionalAll(channel IN (${channel:singlequote}), $channel) AND tier = '$tier'"
           " AND d = $__fromTime AND x IN ($channel) AND b = $__timeInterval(ts) AND s = $__interval_s")
    out = render_sql(sql, values, options, {})
    t0, t1 = int(TIME_FROM.timestamp()), int(TIME_TO.timestamp())
    assert out == (f"SELECT 1 FROM t WHERE ts >= toDateTime({t0}) AND ts <= toDateTime({t1}) AND 1=1"
                   f" AND channel IN ('phone','web') AND tier = 'gold'"
                   f" AND d = toDateTime({t0}) AND x IN ('phone','web')"
                   f" AND b = toStartOfInterval(toDateTime(ts), INTERVAL {INTERVAL_SECONDS} second)"
                   f" AND s = {INTERVAL_SECONDS}")
    # "All" outside a $__conditionalAll expands to every option, quoted per the format
    assert render_sql("SELECT ${city:singlequote}", values, options, {}) == "SELECT 'beijing','o\\'hare'"
    # the _ms macros are not mistaken for the plain ones
    assert render_sql("SELECT $__fromTime_ms", {}, {}, {}) == (
        f"SELECT fromUnixTimestamp64Milli({t0 * 1000})")
    for bad in ("SELECT $__timeFiltr(ts)", "SELECT $cty", "SELECT ${city:nosuchformat}",
                "SELECT $__timeFilter()", "SELECT $__conditionalAll(a = 1, $nope)"):
        with pytest.raises(AssertionError):
            render_sql(bad, values, options, {})


# ------------------------------------------------------------------------------------------------
# Dashboard structure
def test_every_dashboard_is_well_formed_and_uses_the_provisioned_datasource():
    assert {"churn-tiers.json", "complaints-sla.json", "satisfaction.json"} <= {p.name for p in DASHBOARD_FILES}
    ds = provisioned_datasource()
    assert ds["type"] == PLUGIN_ID and ds["uid"]
    expected_ds = {"type": PLUGIN_ID, "uid": ds["uid"]}
    uids = set()
    for name, board in load_dashboards():
        assert board.get("uid") and board.get("title"), name
        assert len(board["uid"]) <= 40, f"{name}: Grafana uids are at most 40 characters"
        assert board["uid"] not in uids, f"{name}: duplicate uid {board['uid']}"
        uids.add(board["uid"])
        assert "id" not in board or board["id"] is None, f"{name}: provisioned dashboards carry no id"
        panels = query_panels(board)
        assert panels, name
        ids = [p["id"] for p in all_panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        titles = [p["title"] for p in panels]
        assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"
        for panel in panels:
            where = f"{name} / {panel.get('title')!r}"
            assert panel.get("title"), where
            assert set(panel.get("gridPos", {})) >= {"h", "w", "x", "y"}, where
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            assert panel.get("datasource") == expected_ds, where
            assert panel.get("targets"), where
            for target in panel["targets"]:
                assert target.get("datasource") == expected_ds, where
                assert target.get("editorType") == "sql", where
                assert target.get("format") in (0, 1), where  # 0 time series, 1 table
                assert target.get("refId"), where
                sql = target.get("rawSql", "")
                assert re.match(r"\s*(SELECT|WITH)\b", sql, re.I), f"{where}: not a SELECT"
                assert ";" not in sql, f"{where}: one statement per query"
        for var in board.get("templating", {}).get("list", []):
            assert var.get("name"), name
            if var["type"] == "query":
                assert var.get("datasource") == expected_ds, f"{name} / ${var['name']}"
                assert variable_sql(var).strip(), f"{name} / ${var['name']}: empty query"
        # every variable is used by some panel, every panel variable is defined (render fails)
        text = json.dumps([t["rawSql"] for p in panels for t in p["targets"]])
        for var in board.get("templating", {}).get("list", []):
            assert re.search(r"\$\{?" + var["name"] + r"\b", text), f"{name}: ${var['name']} is unused"


def _steps(panel: dict) -> list:
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_satisfaction_thresholds_and_time_zone_follow_the_rules():
    from processors.rules import load_rules

    rules = load_rules()
    sat = rules.satisfaction
    expected = [None, sat.red_below, sat.recovery_target, sat.national_target]
    board = dict(load_dashboards())["satisfaction.json"]
    panels = {p["title"]: p for p in query_panels(board)}
    for title in ("Composite satisfaction", "City heat map: daily composite", "Top 5 cities",
                  "Bottom 3 cities", "6-month trend per city", "Satisfaction alerts (daily composite below 80)"):
        assert title in panels, f"satisfaction dashboard lost the panel {title!r}"
        assert _steps(panels[title]) == expected, title
        assert panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"] == "red", title
    (tz,) = [v for v in board["templating"]["list"] if v["name"] == "tz"]
    assert tz["type"] == "constant" and tz["query"] == rules.windows.business_timezone


# ------------------------------------------------------------------------------------------------
# Seeded rows (unique city codes; deleted again at the end of the module)
PREFIX = f"dash{uuid.uuid4().hex[:6]}"
CITIES = [f"{PREFIX}c{i}" for i in range(8)]
SCORES = [92.1, 91.5, 90.8, 90.2, 89.7, 83.2, 82.9, 78.5]  # the last is below 80 every day
SEED_DAYS = [datetime(y, m, d, tzinfo=SHANGHAI) for y, m in
             [(2024, 10), (2024, 11), (2024, 12), (2025, 1), (2025, 2), (2025, 3)] for d in (5, 20)]
HIGH_RISK = f"{PREFIX}-cust-high"
SEEDED_TABLES = ("satisfaction_window_partials", "complaint_state", "complaint_sla_breaches",
                 "churn_risk_changes", "tier_proposals", "tier_changes")


def _uuid() -> str:
    return str(uuid.uuid4())


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def seed(client) -> None:
    dims = ("response_speed", "resolution_efficiency", "attitude", "follow_up")
    offsets = (1.0, -1.0, 2.0, -3.0)
    partial_cols = ["window", "window_start", "city", "channel", "tier", "source_partition", "version",
                    "surveys", "composite_sum", "composite_count"]
    partial_cols += [f"{d}_{k}" for d in dims for k in ("sum", "count")]
    partial_cols += ["nps_responses", "promoters", "detractors", "contacts", "fcr_contacts",
                     "ai_contacts", "transfers_sum", "first_response_count", "first_response_sum",
                     "first_response_buckets", "complaints", "rules_version"]
    rows = []
    for city, score in zip(CITIES, SCORES):
        for n, day in enumerate(SEED_DAYS):
            month_shift = 0.1 * (n // 2)  # +0.1 per month: every month-over-month delta is 0.1
            for channel in ("phone", "ai_assistant"):
                row = ["1d", _ms(day), city, channel, "gold", 0, 1, 10, (score + month_shift) * 10, 10]
                for off in offsets:
                    row += [(score + off + month_shift) * 10, 10]
                row += [10, 6, 2, 50, 35, 50 if channel == "ai_assistant" else 0, 20, 40, 1200.0,
                        [4, 6, 10, 10, 5, 3, 2, 0, 0, 0, 0], 3, "test"]
                rows.append(row)
    client.insert("satisfaction_window_partials", rows, column_names=partial_cols)

    march = datetime(2025, 3, 10, 9, 0, tzinfo=SHANGHAI)
    state_cols = ["complaint_id", "customer_id", "city", "channel", "category", "severity", "status",
                  "level", "filed_at", "acknowledged_at", "resolved_at", "breaches", "updated_at",
                  "version", "rules_version", "next_deadline", "next_sla"]
    c = CITIES
    client.insert("complaint_state", [
        [f"{PREFIX}-cp1", f"{PREFIX}-cu1", c[0], "phone", "logistics", "urgent", "closed", 0,
         _ms(march), _ms(march), _ms(march + timedelta(hours=2)), [], _ms(march), 5, "test", None, None],
        [f"{PREFIX}-cp2", f"{PREFIX}-cu2", c[0], "wechat", "logistics", "normal", "acknowledged", 1,
         _ms(march), _ms(march + timedelta(hours=3)), None, ["first_response"], _ms(march), 3, "test",
         _ms(march + timedelta(hours=24)), "resolution"],
        [f"{PREFIX}-cp3", f"{PREFIX}-cu3", c[1], "phone", "billing", "normal", "resolved", 1,
         _ms(march), _ms(march), _ms(march + timedelta(hours=30)), ["resolution", "feedback"],
         _ms(march), 4, "test", _ms(march + timedelta(hours=102)), "follow_up"],
    ], column_names=state_cols)
    breach_cols = ["event_id", "complaint_id", "customer_id", "city", "channel", "sla", "deadline",
                   "escalated_to_level", "severity", "category", "occurred_at", "rules_version"]
    client.insert("complaint_sla_breaches", [
        [_uuid(), f"{PREFIX}-cp2", f"{PREFIX}-cu2", c[0], "wechat", "first_response",
         _ms(march + timedelta(hours=2)), 1, "normal", "logistics", _ms(march + timedelta(hours=2)), "test"],
        [_uuid(), f"{PREFIX}-cp3", f"{PREFIX}-cu3", c[1], "phone", "resolution",
         _ms(march + timedelta(hours=24)), 1, "normal", "billing", _ms(march + timedelta(hours=24)), "test"],
        [_uuid(), f"{PREFIX}-cp3", f"{PREFIX}-cu3", c[1], "phone", "feedback",
         _ms(march + timedelta(hours=54)), None, "normal", "billing", _ms(march + timedelta(hours=54)), "test"],
    ], column_names=breach_cols)

    churn_cols = ["event_id", "customer_id", "city", "tier", "score", "level", "previous_level",
                  "reasons", "occurred_at", "rules_version"]
    client.insert("churn_risk_changes", [
        [_uuid(), HIGH_RISK, c[0], "gold", 80.0, "high", "medium", ["port_out", "sla_breach"], _ms(march), "test"],
        [_uuid(), f"{PREFIX}-cust-med", c[1], "silver", 45.0, "medium", "low", ["cancel"], _ms(march), "test"],
        [_uuid(), f"{PREFIX}-cust-was-high", c[2], "gold", 65.0, "high", "low", ["port_out"],
         _ms(march - timedelta(days=3)), "test"],
        [_uuid(), f"{PREFIX}-cust-was-high", c[2], "gold", 10.0, "low", "high", [], _ms(march), "test"],
    ], column_names=churn_cols)
    proposal_cols = ["event_id", "proposal_id", "customer_id", "city", "from_tier", "to_tier", "basis",
                     "requires_approval", "occurred_at", "rules_version"]
    client.insert("tier_proposals", [
        [_uuid(), f"{PREFIX}-p1", HIGH_RISK, c[0], "gold", "silver", 850, True, _ms(march), "test"],
        [_uuid(), f"{PREFIX}-p2", f"{PREFIX}-cust-up", c[3], "silver", "gold", 1500, False, _ms(march), "test"],
    ], column_names=proposal_cols)
    client.insert("tier_changes", [
        [_uuid(), f"{PREFIX}-p2", f"{PREFIX}-cust-up", c[3], "silver", "gold", _ms(march), "test"],
    ], column_names=["event_id", "proposal_id", "customer_id", "city", "from_tier", "to_tier",
                     "occurred_at", "rules_version"])


@pytest.fixture(scope="module")
def seeded(clickhouse):
    """The shared store with this module's rows; they are deleted again afterwards."""
    try:
        seed(clickhouse)
        yield clickhouse
    finally:
        for table in SEEDED_TABLES:
            clickhouse.command(f"ALTER TABLE {table} DELETE WHERE startsWith(city, '{PREFIX}') "
                               "SETTINGS mutations_sync = 2")


# What selected cities / channels / tiers look like in each variable selection.
SELECTIONS = {
    "all": lambda var: [ALL],
    "one": lambda var: {"city": "beijing", "channel": "phone", "tier": "gold"}.get(var["name"]),
    "seeded": lambda var: {"city": CITIES, "channel": ["phone", "ai_assistant", "wechat"],
                           "tier": ["gold", "silver", "diamond", "standard"]}.get(var["name"]),
}


def variable_state(board: dict, client, selection: str):
    """(values, options, allValues) of the dashboard's variables for a selection."""
    values: dict[str, Any] = {}
    options: dict[str, list[str]] = {}
    all_values: dict[str, str | None] = {}
    variables = board.get("templating", {}).get("list", [])
    for var in variables:  # constants and custom variables first: query variables may use them
        if var["type"] == "constant":
            values[var["name"]] = var["query"]
            options[var["name"]] = [var["query"]]
        elif var["type"] == "custom":
            options[var["name"]] = [v.strip() for v in var["query"].split(",") if v.strip()]
    for var in variables:
        if var["type"] == "query":
            sql = render_sql(variable_sql(var), {**values, **{v["name"]: [ALL] for v in variables
                                                             if v["name"] not in values}},
                             options, all_values)
            columns = client.query(f"DESCRIBE ({sql})").result_rows
            assert 1 <= len(columns) <= 2, f"${var['name']}: a variable query returns text (and value)"
            options[var["name"]] = [str(r[-1]) for r in client.query(sql).result_rows]
        if var["type"] in ("query", "custom"):
            all_values[var["name"]] = var.get("allValue")
            value = SELECTIONS[selection](var)
            assert value is not None, f"no {selection!r} selection for ${var['name']}: add one"
            values[var["name"]] = value
        elif var["type"] != "constant":
            raise AssertionError(f"variable type {var['type']!r} not handled by this test")
    return values, options, all_values


def run_panels(board: dict, client, selection: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Expand and execute every panel query; returns (panel title -> result, variable options)."""
    values, options, all_values = variable_state(board, client, selection)
    results = {}
    for panel in query_panels(board):
        for target in panel["targets"]:
            where = f"{board['uid']} / {panel['title']!r} / {target['refId']} ({selection})"
            sql = render_sql(target["rawSql"], values, options, all_values)
            try:
                result = client.query(sql)
            except Exception as exc:  # the panel would show this error in Grafana
                raise AssertionError(f"{where} fails on ClickHouse: {exc}\n--- expanded SQL ---\n{sql}") from None
            if target["format"] == 0:  # the plugin turns the `time` column into the time axis
                types = {row[0]: row[1] for row in client.query(f"DESCRIBE ({sql})").result_rows}
                assert re.match(r"(Nullable\()?(Date|DateTime)", types.get("time", "")), (
                    f"{where}: a time series needs a Date/DateTime column `time` (columns: {types})")
            if panel["type"] == "stat":
                assert len(result.result_rows) == 1, f"{where}: a stat panel query returns one row"
            results[panel["title"]] = result
    return results, options


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("dashboard", [p.name for p in DASHBOARD_FILES])
def test_every_panel_query_runs_on_clickhouse(seeded, dashboard, selection):
    board = dict(load_dashboards())[dashboard]
    results, options = run_panels(board, seeded, selection)
    assert len(results) == len(query_panels(board))
    city_vars = [v for v in board["templating"]["list"] if v["name"] == "city"]
    for var in city_vars:  # the city picker offers the cities of the tables the panels read
        assert set(CITIES[:2]) <= set(options["city"]), f"{dashboard}: $city does not list seeded cities"


def rows(result) -> list[dict]:
    return [dict(zip(result.column_names, r)) for r in result.result_rows]


def test_panels_compute_the_expected_values_on_seeded_rows(seeded):
    boards = dict(load_dashboards())
    sat, _ = run_panels(boards["satisfaction.json"], seeded, "seeded")
    by_score = sorted(zip(SCORES, CITIES), reverse=True)
    assert [r["city"] for r in rows(sat["Top 5 cities"])] == [c for _, c in by_score[:5]]
    assert [r["city"] for r in rows(sat["Bottom 3 cities"])] == [c for _, c in by_score[::-1][:3]]
    ranking = rows(sat["City ranking"])
    assert [r["rank"] for r in ranking] == list(range(1, 9))
    alerts = rows(sat["Satisfaction alerts (daily composite below 80)"])
    assert {r["city"] for r in alerts} == {CITIES[-1]} and len(alerts) == len(SEED_DAYS)
    assert all(r["composite"] < r["threshold"] == 80 for r in alerts)
    dims = {r["dimension"]: r for r in rows(sat["Dimensions, month over month"])}
    assert set(dims) == {"Composite", "Response speed", "Resolution efficiency", "Attitude", "Follow-up"}
    assert all(r["mom_delta"] == pytest.approx(0.1) for r in dims.values())
    assert dims["Composite"]["this_month"] == pytest.approx(sum(SCORES) / len(SCORES) + 0.5, abs=0.01)
    trend = rows(sat["6-month trend per city"])
    assert len({r["time"] for r in trend}) == 6 and len(trend) == 6 * len(CITIES)
    assert rows(sat["AI-handled share"])[0]["ai_share"] == pytest.approx(0.5)

    sla, _ = run_panels(boards["complaints-sla.json"], seeded, "seeded")
    assert rows(sla["Complaints filed"])[0]["complaints"] == 3
    assert rows(sla["SLA compliance"])[0]["compliance"] == pytest.approx(33.3)
    assert rows(sla["SLA breaches"])[0]["breaches"] == 3
    assert {r["escalation"]: r["breaches"] for r in rows(sla["Breaches by escalation level"])} == {
        "level 1": 2, "not escalated": 1}
    compliance = {r["sla"]: r["compliance"] for r in rows(sla["SLA compliance by SLA"])}
    assert compliance == {"first_response": pytest.approx(66.7), "resolution": pytest.approx(66.7),
                          "feedback": 50.0, "follow_up": 100.0}

    churn, _ = run_panels(boards["churn-tiers.json"], seeded, "seeded")
    assert [r["customer_id"] for r in rows(churn["High-risk customers"])] == [HIGH_RISK]
    assert rows(churn["Customers at high risk"])[0]["customers"] == 1
    assert rows(churn["Approvals pending"])[0]["pending"] == 1
    pending = rows(churn["Pending tier approvals"])
    assert [(r["customer_id"], r["churn_risk"]) for r in pending] == [(HIGH_RISK, "high")]
    assert rows(churn["Tier upgrades"])[0]["changes"] == 1
    assert rows(churn["Tier downgrades"])[0]["changes"] == 0


def test_a_broken_panel_query_fails_the_check(seeded):
    """The check above can fail: a misspelt column in a panel is caught."""
    board = dict(load_dashboards())["satisfaction.json"]
    broken = json.loads(json.dumps(board))
    panel = next(p for p in query_panels(broken) if p["title"] == "Top 5 cities")
    panel["targets"][0]["rawSql"] = panel["targets"][0]["rawSql"].replace("surveys", "survey_count")
    with pytest.raises(AssertionError, match="Top 5 cities"):
        run_panels(broken, seeded, "one")


# ------------------------------------------------------------------------------------------------
# Grafana provisioning and ClickHouse users
def compose() -> dict:
    return load_yaml_docs(COMPOSE_FILE)[0]


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """docker compose variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?err}, $$."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"test-{name.lower()}"  # a required secret: the test supplies one
        raise AssertionError(f"compose variable ${name} has no default and is not required")

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)", sub, value)


def resolved_compose() -> dict:
    return _interpolate(compose(), {})


def test_grafana_provisioning_matches_compose_and_clickhouse_users():
    ds = provisioned_datasource()
    services = resolved_compose()["services"]
    grafana, clickhouse = services["grafana"], services["clickhouse"]
    genv, cenv = grafana["environment"], clickhouse["environment"]
    assert any(PLUGIN_ID in str(genv.get(k, "")) for k in
               ("GF_PLUGINS_PREINSTALL_SYNC", "GF_PLUGINS_PREINSTALL", "GF_INSTALL_PLUGINS"))
    assert grafana["image"].startswith("grafana/grafana-oss")
    # the data source's ${VARS} are set in Grafana's environment and point at the compose services
    json_data = ds["jsonData"]
    for ref in re.findall(r"\$\{?(\w+)\}?", json.dumps(ds)):
        assert ref in genv, f"datasource provisioning uses ${ref}, not set for the grafana service"
    host = re.sub(r"\$\{?(\w+)\}?", lambda m: genv[m.group(1)], json_data["host"])
    assert host in services and host == "clickhouse"
    assert json_data["protocol"] in ("native", "http")
    assert json_data["port"] == (9000 if json_data["protocol"] == "native" else 8123)
    assert json_data["defaultDatabase"] == cenv["CLICKHOUSE_DB"] == "cx"
    # the read-only user the data source logs in as
    users = ET.parse(GRAFANA_USERS_FILE).getroot()
    user = users.find(f"users/{json_data['username']}")
    assert user is not None, f"no ClickHouse user {json_data['username']!r} in {GRAFANA_USERS_FILE.name}"
    password_env = user.find("password").get("from_env")
    assert password_env in cenv, "the grafana user's password variable is not set for clickhouse"
    pw_ref = re.fullmatch(r"\$\{?(\w+)\}?", ds["secureJsonData"]["password"]).group(1)
    assert compose()["services"]["grafana"]["environment"][pw_ref] == \
        compose()["services"]["clickhouse"]["environment"][password_env], "grafana and clickhouse disagree on the password"
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    if profile.findtext("readonly") == "1":  # the plugin sets max_execution_time on each query
        assert profile.find("constraints/max_execution_time/changeable_in_readonly") is not None
    grants = [q.text.strip() for q in user.findall("grants/query")]
    assert grants and all(re.fullmatch(r"GRANT SELECT ON cx\.\*", g) for g in grants), grants
    # ClickHouse config snippets are mounted, and exist
    for volume in clickhouse["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), volume
            ET.parse(DEPLOY / source)  # well-formed XML
    # dashboards: the provider's path is where compose mounts deploy/grafana/dashboards
    (provider,) = load_yaml_docs(DASHBOARD_PROVIDER_FILE)[0]["providers"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts.get("./grafana/dashboards") == provider["options"]["path"]
    assert mounts.get("./grafana/provisioning") == "/etc/grafana/provisioning"
    home = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(provider["options"]["path"] + "/")
        assert (DASHBOARD_DIR / Path(home).name).exists()


# ------------------------------------------------------------------------------------------------
# cxledger commands and settings in compose and k8s
def known_env_vars() -> set[str]:
    text = (ROOT / "cxledger" / "config.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(CXLEDGER_[A-Z_]+)"', text))
    assert {"CXLEDGER_KAFKA_BOOTSTRAP", "CXLEDGER_CLICKHOUSE_DSN"} <= names
    return names


def check_cxledger_args(args: list[str], where: str) -> str:
    """The subcommand of a cxledger invocation, after checking build_parser() accepts it."""
    assert args and all(isinstance(a, str) for a in args), f"{where}: args must be strings: {args}"
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command = next((a for a in args if not a.startswith("-")), None)
    if command in FUTURE_COMMANDS and command not in sub.choices:
        return command  # will exist; nothing to check it against yet
    assert command in sub.choices, f"{where}: `cxledger {' '.join(args)}`: no such command " \
                                   f"(have {sorted(sub.choices)})"
    try:
        parser.parse_args(args)
    except SystemExit:
        raise AssertionError(f"{where}: `cxledger {' '.join(args)}` is rejected by cxledger's parser") from None
    return command


def test_check_cxledger_args_rejects_unknown_commands_and_flags():
    assert check_cxledger_args(["topics", "create"], "t") == "topics"
    assert check_cxledger_args(["gateway", "--port", "8080"], "t") == "gateway"
    for bad in (["topic", "create"], ["topics", "creat"], ["sink", "--no-such-flag"]):
        with pytest.raises(AssertionError):
            check_cxledger_args(bad, "t")


def check_settings(env: dict[str, str], command: str, where: str) -> None:
    unknown = {k for k in env if k.startswith("CXLEDGER_")} - known_env_vars()
    assert not unknown, f"{where}: unknown settings {sorted(unknown)} (cxledger/config.py reads none of them)"
    settings = load_settings(environ=env)
    if command in ("topics", "schemas", "process", "sink", "gateway", "publish", "simulate"):
        assert settings.kafka_bootstrap, f"{where}: no Kafka bootstrap"
    assert settings.schema_registry_url, f"{where}: every process must use the same schema ids (registry)"
    if command in ("sink", "gateway"):
        dsn = settings.clickhouse_dsn or ""
        assert re.match(r"https?://[^/]+/\w+$", dsn), (
            f"{where}: {command} needs a ClickHouse server DSN http(s)://user:pass@host:port/db, "
            f"not the embedded store (got {dsn!r})")


def test_compose_services_and_commands():
    raw = compose()
    data = resolved_compose()
    services = data["services"]
    assert {"kafka", "schema-registry", "clickhouse", "grafana", "topics-init", "schemas-init",
            "processor", "sink", "gateway"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in kafka["environment"])
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    cenv = services["clickhouse"]["environment"]
    assert cenv["CLICKHOUSE_DB"] == "cx" and cenv["CLICKHOUSE_USER"] and cenv["CLICKHOUSE_PASSWORD"]
    for name in ("kafka", "schema-registry", "clickhouse", "grafana", "gateway"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"

    commands = {}
    cx_env = None
    for name, svc in services.items():
        if "cxledger" not in str(svc.get("image", "")) and "build" not in svc:
            continue
        assert svc["build"]["context"] == ".." and (COMPOSE_FILE.parent / ".." / svc["build"].get(
            "dockerfile", "Dockerfile")).resolve().exists(), name
        assert "entrypoint" not in svc, f"{name}: the image's entrypoint is cxledger"
        commands[name] = check_cxledger_args(svc["command"], f"compose service {name}")
        env = {k: str(v) for k, v in svc["environment"].items()}
        check_settings(env, commands[name], f"compose service {name}")
        cx_env = cx_env or env
        assert env == cx_env, f"{name}: every cxledger service shares one set of settings"
        # the endpoints are compose services
        settings = load_settings(environ=env)
        assert settings.kafka_bootstrap.split(":")[0] in services
        assert re.match(r"https?://([^:/]+)", settings.schema_registry_url).group(1) in services
        assert re.match(r"https?://(?:[^@/]*@)?([^:/]+)", settings.clickhouse_dsn).group(1) in services
    assert commands == {"topics-init": "topics", "schemas-init": "schemas", "processor": "process",
                        "sink": "sink", "gateway": "gateway"}
    assert services["processor"]["deploy"]["replicas"] == 2
    assert raw["services"]["gateway"]["command"] == ["gateway", "--port", "8080"]
    # dependencies: existing services, valid conditions; init services complete before the workers
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec["condition"]
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: no healthcheck"
    for worker in ("processor", "sink", "gateway"):
        deps = services[worker]["depends_on"]
        assert deps["topics-init"]["condition"] == "service_completed_successfully", worker
        assert deps["schemas-init"]["condition"] == "service_completed_successfully", worker
    assert services["sink"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["topics-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["schemas-init"]["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    # named volumes are declared
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in (data.get("volumes") or {}), f"{name}: undeclared volume {source}"


def k8s_objects() -> list[dict]:
    kustomization = load_yaml_docs(K8S_DIR / "kustomization.yaml")[0]
    objects = []
    for resource in kustomization["resources"]:
        objects += load_yaml_docs(K8S_DIR / resource)
    return objects


def test_k8s_manifests(tmp_path):
    kustomization = load_yaml_docs(K8S_DIR / "kustomization.yaml")[0]
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files, "kustomization.yaml must list every manifest"
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    (namespace,) = by_kind["Namespace"]
    assert kustomization["namespace"] == namespace
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]
    config_maps, secrets = by_kind["ConfigMap"], by_kind["Secret"]
    secret_keys = {name: set(s.get("stringData", {})) | set(s.get("data", {})) for name, s in secrets.items()}
    images = {i["name"] for i in kustomization.get("images", [])}

    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("Job", {})}
    assert {"processor", "sink", "gateway"} <= set(by_kind["Deployment"])
    assert by_kind["Deployment"]["processor"]["spec"]["replicas"] == 2
    assert by_kind.get("Job"), "a Job creates the topics and registers the schemas"
    commands: dict[str, str] = {}
    for name, obj in workloads.items():
        spec = obj["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        if obj["kind"] == "Deployment":
            assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{obj['kind']} {name} / {container['name']}"
            assert container["image"].split(":")[0] in images, f"{where}: image not managed by kustomization"
            assert "command" not in container, f"{where}: the image's entrypoint is cxledger"
            command = check_cxledger_args(container["args"], where)
            commands[f"{name}/{container['name']}"] = command
            res = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: resources.{kind}"
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in config_maps, f"{where}: unknown ConfigMap {ref}"
                env.update(config_maps[ref]["data"])
            for item in container.get("env", []):
                if "valueFrom" in item:
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secret_keys.get(ref["name"], set()), f"{where}: {ref} not in a Secret"
                    env[item["name"]] = (secrets[ref["name"]].get("stringData") or {}).get(ref["key"], "x")
                else:
                    env[item["name"]] = item["value"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: unknown volume {mount['name']}"
            if "CXLEDGER_CONFIG" in env:  # the config file is mounted and is valid TOML settings
                path = env.pop("CXLEDGER_CONFIG")
                mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
                cm = volumes[mount["name"]]["configMap"]
                key = next(i["key"] for i in cm["items"] if i["path"] == path[len(mount["mountPath"]) + 1:])
                content = config_maps[cm["name"]]["data"][key]
                toml_file = tmp_path / f"{name}-{container['name']}.toml"
                toml_file.write_text(content, encoding="utf-8")
                settings = load_settings(toml_file, environ=env)
                assert settings.topics.replication_factor >= 1
            check_settings(env, command, where)
            if command == "gateway":
                ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
                assert str(ports.get("http")) == container["args"][container["args"].index("--port") + 1]
                assert container.get("readinessProbe") and container.get("livenessProbe"), where
    assert sorted(set(commands.values())) == ["gateway", "process", "schemas", "sink", "topics"]
    service = by_kind["Service"]["gateway"]
    gateway_labels = by_kind["Deployment"]["gateway"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= gateway_labels.items()
    gateway_ports = {p["name"] for c in by_kind["Deployment"]["gateway"]["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
    assert all(p["targetPort"] in gateway_ports for p in service["spec"]["ports"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_manifests():
    out = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(k8s_objects())
    images = {c["image"] for d in built if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1 and ":" in images.pop()


# ------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
def test_dockerfile_and_dockerignore():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages and all(s.startswith("python:3.11-slim") for s in stages), stages
    assert re.search(r"pip install[^\n]* \.", text), "the image installs the project with pip"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert re.search(r'^ENTRYPOINT\s+\["cxledger"\]', text, re.M)
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in [".venv", ".git", "tests"]:
        assert needed in ignored, f".dockerignore should exclude {needed}"
    # nothing the package build needs is excluded
    import fnmatch
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed_paths = ["pyproject.toml", project["project"]["readme"]]
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed_paths += [p.name for p in ROOT.iterdir()
                         if (p / "__init__.py").exists() and fnmatch.fnmatch(p.name, pattern)]
    for path in needed_paths:
        assert (ROOT / path).exists(), path
        hit = [p for p in ignored if not p.startswith("!") and fnmatch.fnmatch(path, p.lstrip("/"))]
        assert not hit, f".dockerignore pattern {hit} excludes {path}, which the image build needs"
