"""Grafana dashboards, alert rules and provisioning, checked by what runs here.

The build machines have no Grafana, Prometheus, Apache Kafka or Docker engine
(shared/local-stack.md), so the dashboards are checked through what can run:

* every dashboard JSON is well formed; every ClickHouse panel and variable uses the provisioned
  ClickHouse data source (uid ``cxledger-clickhouse``), every Prometheus panel the provisioned
  Prometheus (uid ``cxledger-prometheus``); every dashboard shows the business time zone
  (Asia/Shanghai, the rules' ``windows.business_timezone``) rather than the browser's, and filters
  by ``$tier`` wherever the data it reads has a tier;
* every ClickHouse panel query and every template-variable query is expanded the way Grafana and
  the grafana-clickhouse-datasource plugin (4.20.0, the version compose installs) expand it, for a
  fixed time range and several variable selections, and executed on the real ClickHouse engine
  with the real schema (the session's ``clickhouse`` fixture: chDB). Expansion happens in the
  plugin's order:

  1. frontend, ``CHDatasource.applyTemplateVariables``: ``$__conditionalAll(condition, $var)``
     becomes ``1=1`` when the variable is "All" (or empty), else the condition (same argument
     scanner as the plugin: the last macro first, commas split at bracket depth 1);
  2. frontend, Grafana's template service: ``$var``, ``${var}``, ``${var:format}``; without a
     format the plugin formats a multi-value as ``'a','b'`` and a single value as it is;
     "All" without an allValue becomes every option (query variables: the variable's own query);
  3. backend, ``macros.Interpolate`` (pkg/macros/macros.go) on grafana/macropro: comments
     (``--``, ``/* */``) are blanked first, string literals ('...' with '' and backslash
     escapes, "...", backticks) respected; macro names are matched longest first and only as
     whole names; an argument list is the balanced ``(...)`` after the name, split at top-level
     commas and trimmed; a wrong argument count is an error. ``$__timeFilter(c)`` ->
     ``c >= toDateTime(from) AND c <= toDateTime(to)``, ``$__fromTime``/``$__toTime`` ->
     ``toDateTime(epoch)``, ``$__timeInterval(c)`` -> ``toStartOfInterval(toDateTime(c),
     INTERVAL n second)``, the ``_ms`` variants with ``fromUnixTimestamp64Milli``,
     ``$__dateFilter``, ``$__dateTimeFilter``/``$__dt``, ``$__timeFrom``/``$__timeTo``,
     ``$__timeGroup``, ``$__interval_s``.

  Anything left with a ``$`` afterwards is an unknown macro or variable and fails the test. Key
  panels are also checked on rows seeded for this module (removed again afterwards);
* Prometheus panel and alert expressions parse with Prometheus' own PromQL grammar
  (@prometheus-io/lezer-promql under node, tests/js_promql; skipped where npm cannot install it)
  and use only the metric families and labels the services export: the gateway's from its own
  registry (producers.gateway_metrics), the processors' and sinks'
  ``cxledger_consumer_lag{group,topic,partition}`` and ``cxledger_dead_letters_total{reason,consumer}``;
* the provisioned alert rules (provisioning/alerting) are well formed, refer to provisioned data
  sources, and their ClickHouse queries run (backend expansion only: alert rules have no
  template variables) and fire on seeded rows that should make them fire;
* the data sources' provisioning agrees with compose and the ClickHouse users.

Compose, the Kubernetes manifests and the Dockerfile are checked in test_deploy.py.
"""

from __future__ import annotations

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

from tests.integration.deploy_helpers import (DEPLOY, ROOT, USERS_FILE, compose, load_yaml_docs,
                                              resolved_compose)

pytestmark = pytest.mark.integration

DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE_DIR = DEPLOY / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDER_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "cxledger.yaml"
ALERT_RULES_FILE = DEPLOY / "grafana" / "provisioning" / "alerting" / "cxledger.yaml"
PLUGIN_ID = "grafana-clickhouse-datasource"
PLUGIN_VERSION = "4.20.0"
EXPECTED_DASHBOARDS = {"churn-tiers.json", "complaints-sla.json", "satisfaction.json",
                       "overview.json", "operations.json", "service-halls.json"}
# tables and views whose rows carry a customer tier: a panel that filters them by city filters
# them by $tier too
TIERED = ("satisfaction_window_partials", "satisfaction_scores", "churn_risk_changes",
          "churn_risk_current")

# The fixed dashboard time range: six business-time-zone months (Asia/Shanghai), Oct 2024 - Mar 2025.
SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FROM = datetime(2024, 10, 1, tzinfo=SHANGHAI).astimezone(timezone.utc)
TIME_TO = datetime(2025, 3, 31, 23, 59, 59, tzinfo=SHANGHAI).astimezone(timezone.utc)
INTERVAL_SECONDS = 3600
ALL = "$__all"


# ------------------------------------------------------------------------------------------------
# Loading
def load_dashboards() -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARD_FILES]


def provisioned_datasources() -> dict[str, dict]:
    """type -> the provisioned data source of that type."""
    out = {}
    for path in sorted(DATASOURCE_DIR.glob("*.yaml")):
        for ds in load_yaml_docs(path)[0]["datasources"]:
            assert ds["type"] not in out, f"two provisioned data sources of type {ds['type']}"
            out[ds["type"]] = ds
    return out


def provisioned_datasource() -> dict:
    return provisioned_datasources()[PLUGIN_ID]


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside (collapsed) rows."""
    out = []
    for p in panels:
        out.append(p)
        out += all_panels(p.get("panels", []))
    return out


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard["panels"]) if p.get("type") != "row"]


def is_clickhouse(panel_or_target: dict) -> bool:
    return (panel_or_target.get("datasource") or {}).get("type") == PLUGIN_ID


def clickhouse_targets(panel: dict) -> list[dict]:
    return [t for t in panel["targets"] if is_clickhouse(t)]


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


# Expansion, step 3 (backend): macros.Interpolate of plugin 4.20.0 on grafana/macropro.
def _scan_quoted(s: str, i: int) -> int:
    """Index after the literal that starts at s[i] ('...', "..." or `...`): doubled quotes and
    backslash escapes inside it (ClickHouse's C-style escapes) do not end it."""
    quote = s[i]
    j = i + 1
    while j < len(s):
        if s[j] == "\\" and quote != "`":
            j += 2
            continue
        if s[j] == quote:
            if j + 1 < len(s) and s[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return j


def strip_comments(sql: str) -> str:
    """macropro.StripComments(LineComment | BlockComment | quoting): comments become spaces."""
    out, i = [], 0
    while i < len(sql):
        ch = sql[i]
        if ch in "'\"`":
            j = _scan_quoted(sql, i)
            out.append(sql[i:j])
            i = j
        elif sql.startswith("--", i):
            j = i
            while j < len(sql) and sql[j] not in "\r\n":
                j += 1
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            j = len(sql) if end == -1 else end + 2
            out.append(" " * (j - i))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _closing_paren(s: str) -> int:
    depth, i = 0, 0
    while i < len(s):
        if s[i] in "'\"":
            i = _scan_quoted(s, i)
            continue
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_args(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    args, depth, start, i = [], 0, 0, 0
    while i < len(raw):
        if raw[i] in "'\"":
            i = _scan_quoted(raw, i)
            continue
        if raw[i] == "(":
            depth += 1
        elif raw[i] == ")":
            assert depth > 0, f"unexpected ')' in macro arguments {raw!r}"
            depth -= 1
        elif raw[i] == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
        i += 1
    assert depth == 0, f"unbalanced parentheses in macro arguments {raw!r}"
    return args + [raw[start:].strip()]


def _go_duration_seconds(text: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"not a Go duration: {text!r}"
    return round(sum(float(a) * units[u] for a, u in parts))


def expand_macros(sql: str, t_from: datetime, t_to: datetime, interval_s: int) -> str:
    def dt(t: datetime) -> str:
        return f"toDateTime({int(t.timestamp())})"

    def dt64(t: datetime) -> str:
        return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"

    def date(t: datetime) -> str:
        return f"toDate('{t.astimezone(timezone.utc):%Y-%m-%d}')"

    seconds = max(int(interval_s), 1)
    date_time = lambda a: (f"({a[0]} >= {date(t_from)} AND {a[0]} <= {date(t_to)}) AND "  # noqa: E731
                           f"({a[1]} >= {dt(t_from)} AND {a[1]} <= {dt(t_to)})")
    macros: dict[str, tuple[int | None, Callable[[list[str]], str]]] = {
        "fromTime": (None, lambda a: dt(t_from)),
        "toTime": (None, lambda a: dt(t_to)),
        "fromTime_ms": (None, lambda a: dt64(t_from)),
        "toTime_ms": (None, lambda a: dt64(t_to)),
        "timeFilter": (1, lambda a: f"{a[0]} >= {dt(t_from)} AND {a[0]} <= {dt(t_to)}"),
        "timeFilter_ms": (1, lambda a: f"{a[0]} >= {dt64(t_from)} AND {a[0]} <= {dt64(t_to)}"),
        "timeFrom": (1, lambda a: f"{a[0]} >= {dt(t_from)}"),
        "timeTo": (1, lambda a: f"{a[0]} <= {dt(t_to)}"),
        "dateFilter": (1, lambda a: f"{a[0]} >= {date(t_from)} AND {a[0]} <= {date(t_to)}"),
        "dateTimeFilter": (2, date_time),
        "dt": (2, date_time),
        "timeInterval": (1, lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {seconds} second)"),
        "timeInterval_ms": (1, lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), "
                                         f"INTERVAL {seconds * 1000} millisecond)"),
        "timeGroup": (2, lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL "
                                   f"{_go_duration_seconds(a[1].strip(chr(39) + chr(34)))} second)"),
        "interval_s": (None, lambda a: str(seconds)),
    }
    sql = strip_comments(sql)
    for name in sorted(macros, key=lambda n: (-len(n), n)):  # longest first
        arity, render = macros[name]
        token = "$__" + name
        out, rest = [], sql
        while (idx := rest.find(token)) != -1:
            after = idx + len(token)
            if after < len(rest) and (rest[after].isalnum() or rest[after] == "_"):
                out.append(rest[:after])  # the prefix of a longer name
                rest = rest[after:]
                continue
            out.append(rest[:idx])
            rest = rest[after:]
            raw = ""
            if rest.startswith("("):
                end = _closing_paren(rest)
                if end != -1:
                    raw, rest = rest[1:end], rest[end + 1:]
            args = _split_args(raw)
            assert arity is None or len(args) == arity, (
                f"$__{name} expected {arity} argument(s), received {len(args)}: {args}")
            out.append(render(args))
        sql = "".join(out) + rest
    return sql


def render_sql(sql: str, values: dict[str, Any], options: dict[str, list[str]],
               all_values: dict[str, str | None], t_from: datetime = TIME_FROM,
               t_to: datetime = TIME_TO) -> str:
    out = apply_conditional_all(sql, values)
    out = replace_variables(out, values, options, all_values)
    out = expand_macros(out, t_from, t_to, INTERVAL_SECONDS)
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
    # macropro: balanced parentheses and quoted commas inside an argument, comments blanked
    assert render_sql("SELECT 1 WHERE $__timeFilter(toDateTime(x, 'UTC'))", {}, {}, {}) == (
        f"SELECT 1 WHERE toDateTime(x, 'UTC') >= toDateTime({t0}) AND toDateTime(x, 'UTC') <= toDateTime({t1})")
    assert render_sql("SELECT 1 -- $__timeFilter(a)\n/* $__nope */", {}, {}, {}).split() == ["SELECT", "1"]
    assert render_sql("SELECT $__timeGroup(ts, '5m')", {}, {}, {}) == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 300 second)")
    for bad in ("SELECT $__timeFiltr(ts)", "SELECT $cty", "SELECT ${city:nosuchformat}",
                "SELECT $__timeFilter()", "SELECT $__timeFilter(a, b)",
                "SELECT $__conditionalAll(a = 1, $nope)", "SELECT $__interval"):
        with pytest.raises(AssertionError):
            render_sql(bad, values, options, {})


# ------------------------------------------------------------------------------------------------
# Dashboard structure
def test_every_dashboard_is_well_formed_and_uses_the_provisioned_datasources():
    from processors.rules import load_rules

    business_tz = load_rules().windows.business_timezone
    assert EXPECTED_DASHBOARDS <= {p.name for p in DASHBOARD_FILES}
    sources = provisioned_datasources()
    ds, prom = sources[PLUGIN_ID], sources["prometheus"]
    assert ds["uid"] and prom["uid"]
    expected = {PLUGIN_ID: {"type": PLUGIN_ID, "uid": ds["uid"]},
                "prometheus": {"type": "prometheus", "uid": prom["uid"]}}
    uids = set()
    for name, board in load_dashboards():
        assert board.get("uid") and board.get("title"), name
        assert len(board["uid"]) <= 40, f"{name}: Grafana uids are at most 40 characters"
        assert board["uid"] not in uids, f"{name}: duplicate uid {board['uid']}"
        uids.add(board["uid"])
        assert "id" not in board or board["id"] is None, f"{name}: provisioned dashboards carry no id"
        assert board.get("timezone") == business_tz, (
            f"{name}: shows {board.get('timezone')!r}, not the business time zone {business_tz}")
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
            assert panel.get("datasource") in expected.values(), where
            assert panel.get("targets"), where
            for target in panel["targets"]:
                assert target.get("datasource") == panel["datasource"], where
                assert target.get("refId"), where
                if not is_clickhouse(target):
                    assert target.get("expr"), f"{where}: a Prometheus target without expr"
                    continue
                assert target.get("editorType") == "sql", where
                assert target.get("format") in (0, 1), where  # 0 time series, 1 table
                sql = target.get("rawSql", "")
                assert re.match(r"\s*(SELECT|WITH)\b", sql, re.I), f"{where}: not a SELECT"
                assert ";" not in sql, f"{where}: one statement per query"
                if "$city" in sql and any(re.search(rf"\b{t}\b", sql) for t in TIERED):
                    assert "$tier" in sql, f"{where}: reads data with a tier but ignores $tier"
        for var in board.get("templating", {}).get("list", []):
            assert var.get("name"), name
            if var["type"] == "query":
                assert var.get("datasource") == expected[PLUGIN_ID], f"{name} / ${var['name']}"
                assert variable_sql(var).strip(), f"{name} / ${var['name']}: empty query"
        # every variable is used by some panel, every panel variable is defined (render fails)
        text = json.dumps([t.get("rawSql") or t.get("expr") for p in panels for t in p["targets"]])
        for var in board.get("templating", {}).get("list", []):
            assert re.search(r"\$\{?" + var["name"] + r"\b", text), f"{name}: ${var['name']} is unused"
        names = {v["name"] for v in board.get("templating", {}).get("list", [])}
        if any(re.search(rf"\b{t}\b", text) for t in TIERED[:2]):
            assert {"city", "channel", "tier"} <= names, f"{name}: city, channel and tier pickers"
        if "$tz" in text or "${tz}" in text:
            (tz,) = [v for v in board["templating"]["list"] if v["name"] == "tz"]
            assert tz["type"] == "constant" and tz["query"] == business_tz, name


def _steps(panel: dict) -> list:
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


@pytest.mark.parametrize("dashboard, titles", [
    ("satisfaction.json", ("Composite satisfaction", "City heat map: daily composite", "Top 5 cities",
                           "Bottom 3 cities", "6-month trend per city",
                           "Satisfaction alerts (daily composite below 80)")),
    ("overview.json", ("Composite satisfaction", "Satisfaction by city", "Top 5 cities",
                       "Bottom 3 cities", "Composite by city, daily")),
])
def test_satisfaction_thresholds_follow_the_rules(dashboard, titles):
    from processors.rules import load_rules

    sat = load_rules().satisfaction
    expected = [None, sat.red_below, sat.recovery_target, sat.national_target]
    board = dict(load_dashboards())[dashboard]
    panels = {p["title"]: p for p in query_panels(board)}
    for title in titles:
        assert title in panels, f"{dashboard} lost the panel {title!r}"
        assert _steps(panels[title]) == expected, title
        assert panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"] == "red", title
    # the 80 / 88 / 90 lines are drawn on the per-city charts
    for title in ("Satisfaction by city", "Composite by city, daily"):
        if title in panels:
            style = panels[title]["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
            assert style in ("line", "dashed", "line+area", "dashed+area"), title


# ------------------------------------------------------------------------------------------------
# Seeded rows (unique city codes; deleted again at the end of the module)
PREFIX = f"dash{uuid.uuid4().hex[:6]}"
CITIES = [f"{PREFIX}c{i}" for i in range(8)]
SCORES = [92.1, 91.5, 90.8, 90.2, 89.7, 83.2, 82.9, 78.5]  # the last is below 80 every day
SEED_DAYS = [datetime(y, m, d, tzinfo=SHANGHAI) for y, m in
             [(2024, 10), (2024, 11), (2024, 12), (2025, 1), (2025, 2), (2025, 3)] for d in (5, 20)]
HIGH_RISK = f"{PREFIX}-cust-high"
SEEDED_TABLES = ("satisfaction_window_partials", "complaint_state", "complaint_sla_breaches",
                 "churn_risk_changes", "tier_proposals", "tier_changes",
                 "hall_survey_month_partials", "hall_key_improvement_flags", "feedback_sla_breaches",
                 "ledger_events")


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


# Service halls (seed_halls): the halls of the first three seeded cities, Jan-Mar 2025.
HALLS = {"top": f"{PREFIX}c0-h01", "key": f"{PREFIX}c1-h01", "few": f"{PREFIX}c2-h01"}


def _ledger_row(event_type: str, at: datetime, city: str, payload: dict, customer: str = "",
                agent: str | None = None, offset: list = [0]) -> list:
    offset[0] += 1
    event_id = _uuid()
    body = {"event_id": event_id, "event_type": event_type, "city": city, **payload}
    if customer:
        body["customer_id"] = customer
    return [event_id, event_type, _ms(at), customer, "service_hall", city, agent, None,
            json.dumps(body), 0, 0, 10_000_000 + offset[0]]


def seed_halls(client) -> None:
    """Hand-made hall rows: 'top' scores 97.5 on 40 valid replies a month, 'key' 92.0 on 30 (and
    is flagged), 'few' 99.0 on only 29 (never ranked). Visits, shifts, exams, spot checks,
    feedback, service requests and an incident for the hall panels' expected values."""
    part_cols = ["hall_id", "city", "month", "month_start", "source_partition", "version", "closed",
                 "replies", "valid_replies", "score_sum", "overall_sum", "overall_count",
                 "environment_sum", "environment_count", "waiting_sum", "waiting_count",
                 "handling_sum", "handling_count", "staff_attitude_sum", "staff_attitude_count",
                 "rules_version"]
    rows = []
    for (hall, city, valid, score) in ((HALLS["top"], CITIES[0], 40, 97.5),
                                       (HALLS["key"], CITIES[1], 30, 92.0),
                                       (HALLS["few"], CITIES[2], 29, 99.0)):
        for month in (1, 2, 3):
            start = datetime(2025, month, 1, tzinfo=SHANGHAI)
            for part in (0, 1):  # two partitions' halves, summed by the view
                n = valid // 2 + (valid % 2 if part == 0 else 0)
                rows.append([hall, city, f"2025-{month:02d}", _ms(start), part, n + 1, True, n + 1, n,
                             n * score] + [n * score / 10, n] * 5 + ["test"])
    client.insert("hall_survey_month_partials", rows, column_names=part_cols)
    client.insert("hall_key_improvement_flags", [
        [_uuid(), HALLS["key"], CITIES[1], ["2025-01", "2025-02", "2025-03"], [92.0, 92.0, 92.0],
         [30, 30, 30], 96.0, _ms(datetime(2025, 4, 1, tzinfo=SHANGHAI)), "test"]],
        column_names=["event_id", "hall_id", "city", "months", "values", "valid_replies", "target",
                      "occurred_at", "rules_version"])
    march = datetime(2025, 3, 10, 10, 0, tzinfo=SHANGHAI)
    ledger = []
    for k in range(10):  # 10 visits to 'top' in March: 3 by handheld
        ledger.append(_ledger_row("hall.visit_completed", march + timedelta(minutes=k), CITIES[0], {
            "visit_id": f"v{k}", "hall_id": HALLS["top"], "district": f"{PREFIX}c0-d1",
            "wait_seconds": 60 * (k + 1), "served_at": "handheld" if k < 3 else "counter",
            "business_type": "inquiry", "handling_seconds": 300, "resolved_on_site": True,
            "greeted": True, "need_asked": k < 8}, customer=f"{PREFIX}-v{k}"))
    for received, unresolved in ((40, 1), (40, 0)):  # on-site resolution 79 / 80 = 98.75%
        ledger.append(_ledger_row("supervision.onsite_shift", march, CITIES[0], {
            "shift_id": _uuid(), "hall_id": HALLS["top"], "manager_id": "m-1",
            "customers_received": received, "unresolved": unresolved, "on_duty": True,
            "handheld_used": True}))
    for agent, score in ((f"{PREFIX}-AL1", 95.0), (f"{PREFIX}-AL2", 96.0), (f"{PREFIX}-AL3", 85.0)):
        ledger.append(_ledger_row("staff.exam_scored", march, CITIES[0], {
            "exam_id": _uuid(), "hall_id": HALLS["top"], "score": score}, agent=agent))
    ledger.append(_ledger_row("quality.spot_check_recorded", march, CITIES[0], {  # AL2 fails one
        "check_id": _uuid(), "unit_type": "agent", "unit_id": f"{PREFIX}-AL2", "sampled": 10,
        "passed": 7, "score": 70.0}))
    for k, (handled_h, reported_h) in enumerate(((2, 30), (3, 80), (None, 10), (30, 40))):
        at = march + timedelta(days=k)
        fid = f"{PREFIX}-fb{k}"
        ledger.append(_ledger_row("feedback.received", at, CITIES[0], {"feedback_id": fid},
                                  customer=f"{PREFIX}-f{k}"))
        if handled_h is not None:
            ledger.append(_ledger_row("feedback.handled", at + timedelta(hours=handled_h),
                                      CITIES[0], {"feedback_id": fid}, customer=f"{PREFIX}-f{k}"))
        ledger.append(_ledger_row("feedback.result_reported", at + timedelta(hours=reported_h),
                                  CITIES[0], {"feedback_id": fid}, customer=f"{PREFIX}-f{k}"))
    incident_at = datetime(2025, 3, 12, 10, 30, tzinfo=SHANGHAI)
    for event_type, at in (("incident.detected", incident_at),
                           ("incident.resolved", incident_at + timedelta(hours=2))):
        ledger.append(_ledger_row(event_type, at, CITIES[0], {
            "incident_id": f"{PREFIX}-inc", "level": 1, "service": "network",
            "cities": [CITIES[0]]}))
    ledger.append(_ledger_row("contact.completed", incident_at + timedelta(minutes=20), CITIES[0], {
        "contact_id": f"{PREFIX}-k1", "category": "technical"}, customer=f"{PREFIX}-k1"))
    client.insert("ledger_events", ledger, column_names=[
        "event_id", "event_type", "occurred_at", "customer_id", "channel", "city", "agent_id",
        "correlation_id", "payload", "schema_id", "kafka_partition", "kafka_offset"])
    # feedback 1 (result at 80 h) and 3 (handled at 30 h) breached
    client.insert("feedback_sla_breaches", [
        [_uuid(), f"{PREFIX}-fb1", f"{PREFIX}-f1", CITIES[0], "app", "result",
         _ms(march + timedelta(days=1, hours=72)), _ms(march + timedelta(days=1)),
         _ms(march + timedelta(days=1, hours=72)), "test"],
        [_uuid(), f"{PREFIX}-fb3", f"{PREFIX}-f3", CITIES[0], "app", "handled",
         _ms(march + timedelta(days=3, hours=24)), _ms(march + timedelta(days=3)),
         _ms(march + timedelta(days=3, hours=24)), "test"]],
        column_names=["event_id", "feedback_id", "customer_id", "city", "channel", "sla", "deadline",
                      "received_at", "occurred_at", "rules_version"])
    # service requests: 10, of which 9 within 10 minutes; contacts per minute around the incident
    client.insert("satisfaction_window_partials", [
        ["1d", _ms(datetime(2025, 3, 12, tzinfo=SHANGHAI)), CITIES[0], "app", "standard", 0, 1, 10, 9,
         0, [0] * 11, "test"],
        ["1m", _ms(incident_at), CITIES[0], "phone", "standard", 0, 1, 0, 0, 7, [0] * 11, "test"],
        ["1m", _ms(incident_at - timedelta(hours=2)), CITIES[0], "phone", "standard", 0, 1, 0, 0, 2,
         [0] * 11, "test"],
    ], column_names=["window", "window_start", "city", "channel", "tier", "source_partition", "version",
                     "service_requests", "service_requests_met", "contacts", "first_response_buckets",
                     "rules_version"])


@pytest.fixture(scope="module")
def seeded(clickhouse):
    """The shared store with this module's rows; they are deleted again afterwards. The
    snapshot tables some panels read (migration 8) are refreshed before the panels run."""
    from sinks.migrations import refresh_snapshots

    try:
        seed(clickhouse)
        seed_halls(clickhouse)
        assert len(refresh_snapshots(clickhouse)) == 6
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
        for target in clickhouse_targets(panel):  # Prometheus targets: test_prometheus_*
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
    assert len(results) == len([p for p in query_panels(board) if clickhouse_targets(p)])
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


def test_service_halls_compute_the_expected_values_on_seeded_rows(seeded):
    """The "Service halls" dashboard on the hand-made hall rows (seed_halls)."""
    board = dict(load_dashboards())["service-halls.json"]
    halls, _ = run_panels(board, seeded, "seeded")
    top = rows(halls["Top 10 halls"])
    assert [(r["hall_id"], r["satisfaction"], r["valid_replies"]) for r in top][:1] == [
        (HALLS["top"], 97.5, 40)]
    assert HALLS["few"] not in {r["hall_id"] for r in top}  # 29 valid replies: not ranked
    bottom = rows(halls["Bottom 10 halls"])
    assert (bottom[0]["hall_id"], bottom[0]["satisfaction"], bottom[0]["on_target"]) == (
        HALLS["key"], 92.0, False)
    flagged = rows(halls["Halls flagged for key improvement"])
    assert [(r["hall_id"], r["months"]) for r in flagged] == [
        (HALLS["key"], "2025-01, 2025-02, 2025-03")]
    assert rows(halls["Halls flagged for key improvement"]) and rows(
        halls["Halls flagged for key improvement"])[0]["values"] == "92, 92, 92"
    # (40 x 3 x 97.5 + 30 x 3 x 92 + 29 x 3 x 99) / (120 + 90 + 87)
    assert rows(halls["Hall SMS satisfaction"])[0]["satisfaction"] == pytest.approx(
        round((120 * 97.5 + 90 * 92.0 + 87 * 99.0) / 297, 2))
    assert rows(halls["Handheld share"])[0]["handheld"] == 30.0  # 3 of the 10 March visits
    assert rows(halls["On-site resolution"])[0]["resolution"] == 98.8  # 79 / 80
    # feedback: result within 72 h for 0, 2, 3 (1 breached): 3 / 4; handled: 0, 1, 2 (via the
    # result) met, 3 breached
    assert rows(halls["Feedback answered within 72 h"])[0]["compliance"] == 75.0
    days = rows(halls["Feedback SLA compliance per day"])
    assert sorted((r["handled_24h"], r["result_72h"]) for r in days) == [
        (0.0, 100.0), (100.0, 0.0), (100.0, 100.0), (100.0, 100.0)]
    assert rows(halls["Service requests answered within 10 min"])[0]["compliance"] == 90.0
    stars = {r["agent_id"] for r in rows(halls["Star staff candidates"])}
    assert stars == {f"{PREFIX}-AL1"}  # AL2 failed a spot check, AL3's exam is below 90
    volume = [(r["contacts"], r["incident_level"]) for r in rows(
        halls["Contacts per city and hour, incidents overlaid"]) if r["city"] == CITIES[0]]
    assert sorted(volume, key=str) == sorted([(2, None), (7, 1)], key=str)
    [incident] = rows(halls["Incidents"])
    assert (incident["incident_id"], incident["contacts"], incident["complaints"]) == (
        f"{PREFIX}-inc", 1, 0)
    months = {r["month"]: r for r in rows(halls["Halls per month"]) if r["hall_id"] == HALLS["top"]}
    march = months["2025-03"]
    assert (march["visits"], march["wait_mean_seconds"], march["wait_p90_seconds"],
            march["greeted_pct"], march["need_asked_pct"]) == (10, 330.0, 600.0, 100.0, 80.0)
    # waits 60, 120, ..., 600 s: mean 330; p90 is quantileExact's element at 0.9 x 10 (0-based),
    # the 10th smallest, 600


def test_overview_and_operations_compute_the_expected_values_on_seeded_rows(seeded):
    boards = dict(load_dashboards())
    ov, _ = run_panels(boards["overview.json"], seeded, "seeded")
    by_score = sorted(zip(SCORES, CITIES), reverse=True)
    assert [r["city"] for r in rows(ov["Satisfaction by city"])] == [c for _, c in by_score]
    assert [r["city"] for r in rows(ov["Top 5 cities"])] == [c for _, c in by_score[:5]]
    assert [r["city"] for r in rows(ov["Bottom 3 cities"])] == [c for _, c in by_score[::-1][:3]]
    # every city gains 0.25 on average over the six months: 89.7 stays below 90, 78.5 below 80
    assert rows(ov["Cities below 80"])[0]["cities"] == 1
    assert rows(ov["Cities at or above 90"])[0]["cities"] == 4
    dims = {r["dimension"]: r for r in rows(ov["The four dimensions, month over month"])}
    assert set(dims) == {"Response speed", "Resolution efficiency", "Attitude", "Follow-up"}
    assert all(r["mom_delta"] == pytest.approx(0.1) for r in dims.values())
    assert rows(ov["NPS"])[0]["nps"] == pytest.approx(40.0)  # (6 - 2) promoters-detractors of 10
    assert {r["nps"] for r in rows(ov["NPS by city"])} == {40.0}

    ops, _ = run_panels(boards["operations.json"], seeded, "seeded")
    assert rows(ops["Complaints filed"])[0]["complaints"] == 3
    volume = {(r["channel"], r["category"]): (r["complaints"], r["channel_contacts"])
              for r in rows(ops["Volume by channel and category"])}
    phone_contacts = 50 * len(SEED_DAYS) * len(CITIES)
    assert volume == {("phone", "logistics"): (1, phone_contacts), ("phone", "billing"): (1, phone_contacts),
                      ("wechat", "logistics"): (1, 0)}
    assert {r["table"] for r in rows(ops["Freshness by table"])} >= {"ledger_events", "deadletter_events"}


def test_a_tier_selection_changes_what_the_satisfaction_panels_show(seeded):
    """$tier reaches the panels: the seeded rows are all gold, so silver shows nothing."""
    board = dict(load_dashboards())["overview.json"]
    original = SELECTIONS["seeded"]
    try:
        SELECTIONS["silver"] = lambda var: "silver" if var["name"] == "tier" else original(var)
        results, _ = run_panels(board, seeded, "silver")
    finally:
        SELECTIONS.pop("silver")
    assert rows(results["Top 5 cities"]) == []
    assert rows(results["Survey responses"])[0]["responses"] == 0


def test_a_broken_panel_query_fails_the_check(seeded):
    """The check above can fail: a misspelt column in a panel is caught."""
    board = dict(load_dashboards())["satisfaction.json"]
    broken = json.loads(json.dumps(board))
    panel = next(p for p in query_panels(broken) if p["title"] == "Top 5 cities")
    panel["targets"][0]["rawSql"] = panel["targets"][0]["rawSql"].replace("surveys", "survey_count")
    with pytest.raises(AssertionError, match="Top 5 cities"):
        run_panels(broken, seeded, "one")


# ------------------------------------------------------------------------------------------------
# Prometheus expressions: only metrics and labels the services export
def exported_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, of what the services export."""
    from producers.gateway_metrics import GatewayMetrics

    from cxledger.metrics import Metrics

    samples: dict[str, set[str]] = {}
    # processors, sinks and the query endpoint (CXLEDGER_METRICS_PORT), from their registry
    ours = Metrics()
    ours.add_source(ours, lag=lambda: [("g", "t", 0, 1)], assigned=lambda: [("g", 1)],
                    folds=lambda: [(0, 1, 1, 1, 1)], sink=lambda: [("s", 1.0, False)])
    ours.dead_letter("unknown schema id 1", "c")
    for counter, labels in ((ours.events_in, ("c", "t")), (ours.events_out, ("p", "t")),
                            (ours.rows_written, ("s", "t")), (ours.store_retries, ("s",))):
        counter.labels(*labels).inc()
    for histogram, labels in ((ours.batch_messages, ("s",)), (ours.write_seconds, ("s",)),
                              (ours.query_seconds, ("ok", "JSON"))):
        histogram.labels(*labels).observe(1)
    for family in ours.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    assert samples["cxledger_consumer_lag"] == {"group", "topic", "partition"}
    assert samples["cxledger_dead_letters_total"] == {"reason", "consumer"}
    metrics = GatewayMetrics(lambda: 0.0)
    metrics.event("contact.completed", "k", "accepted")
    metrics.request("/v1/events", 200, 0.01)
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by",
                    "without", "histogram_quantile", "topk", "bottomk", "clamp_min", "abs",
                    "delta", "deriv", "time", "le", "on", "ignoring", "offset", "and", "or",
                    "unless", "bool", "max_over_time", "avg_over_time", "absent"}


def check_promql(expr: str, where: str, samples: dict[str, set[str]]) -> None:
    """A light PromQL check (no parser is installable here): balanced brackets, known metrics,
    and grouping/matching labels those metrics carry. Grafana's $__rate_interval and $__range
    are allowed inside range selectors."""
    depth = {"(": 0, "[": 0, "{": 0}
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in expr:
        if ch in depth:
            depth[ch] += 1
        elif ch in pairs:
            depth[pairs[ch]] -= 1
            assert depth[pairs[ch]] >= 0, f"{where}: unbalanced {ch!r} in {expr!r}"
    assert not any(depth.values()), f"{where}: unbalanced brackets in {expr!r}"
    for rng in re.findall(r"\[([^\]]+)\]", expr):
        assert re.fullmatch(r"\d+[smhdwy]|\$__rate_interval|\$__range|\$__interval", rng), (
            f"{where}: range {rng!r}")
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", without_ranges))
    metrics = {n for n in names if n.startswith(("cxledger_", "process_"))}
    assert metrics, f"{where}: uses no cxledger metric: {expr!r}"
    unknown = metrics - set(samples)
    assert not unknown, f"{where}: {sorted(unknown)} not exported (have {sorted(samples)})"
    labels = set().union(*(samples[m] for m in metrics)) | {"le", "__name__", "job", "instance", "pod"}
    used = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_ranges):
        used |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", without_ranges):
        used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    assert used <= labels, f"{where}: labels {sorted(used - labels)} not on {sorted(metrics)}"
    leftover = names - metrics - PROMQL_FUNCTIONS - used - {"__rate_interval", "__range", "__interval"}
    assert not {n for n in leftover if not re.fullmatch(r"\d.*|[a-z]", n)}, (
        f"{where}: unknown identifiers {sorted(leftover)} in {expr!r}")


def prometheus_expressions() -> list[tuple[str, str]]:
    out = []
    for name, board in load_dashboards():
        for panel in query_panels(board):
            for target in panel["targets"]:
                if not is_clickhouse(target):
                    out.append((f"{name} / {panel['title']!r}", target["expr"]))
    for rule in alert_rules():
        for query in rule["data"]:
            if query["datasourceUid"] == provisioned_datasources()["prometheus"]["uid"]:
                out.append((f"alert {rule['uid']}", query["model"]["expr"]))
    return out


def test_prometheus_expressions_use_exported_metrics():
    samples = exported_metrics()
    exprs = prometheus_expressions()
    used = " ".join(e for _, e in exprs)
    # the operations dashboard and the alerts watch lag, dead letters and the gateway
    for metric in ("cxledger_consumer_lag", "cxledger_dead_letters_total", "cxledger_gateway_events_total"):
        assert metric in used, f"nothing watches {metric}"
    for where, expr in exprs:
        check_promql(expr, where, samples)
    for bad in ("sum(cxledger_consumer_lagg)", "sum by (city) (cxledger_consumer_lag)",
                "sum(rate(cxledger_dead_letters_total[5m])", "rate(cxledger_dead_letters_total[$__foo])"):
        with pytest.raises(AssertionError):
            check_promql(bad, "t", samples)


GRAFANA_PROMQL_VARIABLES = {"$__rate_interval": "1m", "$__range": "86400s", "$__interval": "15s"}


def test_prometheus_expressions_parse_with_the_promql_grammar(tmp_path):
    """Prometheus' own PromQL grammar (@prometheus-io/lezer-promql, tests/js_promql) parses every
    expression once Grafana has put in its range variables, and finds only exported metrics."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        pytest.skip("node and npm are needed for Prometheus' PromQL grammar")
    work = tmp_path / "promql"
    shutil.copytree(ROOT / "tests" / "js_promql", work, ignore=shutil.ignore_patterns("node_modules"))
    try:
        installed = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                                    "--prefer-offline"], cwd=work, capture_output=True, text=True,
                                   timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of @prometheus-io/lezer-promql took over 120 s")
    if installed.returncode != 0:
        pytest.skip(f"npm could not install @prometheus-io/lezer-promql: {installed.stderr.strip()[-300:]}")
    exprs = prometheus_expressions()
    texts = []
    for _, expr in exprs:
        for name, value in GRAFANA_PROMQL_VARIABLES.items():
            expr = expr.replace(name, value)
        texts.append(expr)
    broken = "sum by (group) (rate(cxledger_consumer_lag[5m])"
    parsed = subprocess.run([node, "parse.mjs"], cwd=work, input=json.dumps(texts + [broken]),
                            capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    results = json.loads(parsed.stdout)
    samples = exported_metrics()
    for (where, _), result in zip(exprs, results):
        assert not result["errors"], f"{where}: PromQL syntax error at {result['errors']} in {result['expr']!r}"
        assert result["metrics"] and set(result["metrics"]) <= set(samples), (where, result["metrics"])
    assert results[-1]["errors"], "the grammar check can fail"


def test_operations_dashboard_has_the_pipeline_health_panels():
    board = dict(load_dashboards())["operations.json"]
    panels = {p["title"]: p for p in query_panels(board)}
    text = {t: json.dumps(p["targets"]) for t, p in panels.items()}
    assert any("cxledger_consumer_lag" in s and "partition" in s for s in text.values()), "lag per partition"
    assert any("cxledger_dead_letters_total" in s and "reason" in s for s in text.values()), "dead letters by reason"
    assert any("ingested_at" in s for s in text.values()) and "Freshness by table" in panels, "freshness"
    for needed in ("Events by channel", "Complaints by category", "AI-handled share over time"):
        assert needed in panels, needed


# ------------------------------------------------------------------------------------------------
# Alert rules
def alert_rules() -> list[dict]:
    doc = load_yaml_docs(ALERT_RULES_FILE)[0]
    assert doc["apiVersion"] == 1
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed():
    doc = load_yaml_docs(ALERT_RULES_FILE)[0]
    (provider,) = load_yaml_docs(DASHBOARD_PROVIDER_FILE)[0]["providers"]
    sources = {ds["uid"] for ds in provisioned_datasources().values()} | {"__expr__"}
    for group in doc["groups"]:
        assert group["folder"] == provider["folder"] and re.fullmatch(r"\d+[smh]", group["interval"])
    rules = alert_rules()
    uids = [r["uid"] for r in rules]
    assert len(uids) == len(set(uids)) and all(len(u) <= 40 for u in uids)
    assert {"cxledger-sla-breaches", "cxledger-satisfaction-red-line", "cxledger-dead-letter-growth",
            "cxledger-consumer-lag"} <= set(uids)
    for rule in rules:
        refs = {q["refId"]: q for q in rule["data"]}
        assert rule["condition"] in refs, rule["uid"]
        assert rule["noDataState"] in ("OK", "NoData", "Alerting", "KeepLast")
        assert rule["execErrState"] in ("OK", "Error", "Alerting", "KeepLast")
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["uid"]
        assert rule["annotations"].get("summary") and rule["labels"].get("severity")
        for query in rule["data"]:
            assert query["datasourceUid"] in sources, f"{rule['uid']}: {query['datasourceUid']}"
            assert query["model"]["refId"] == query["refId"]
            if query["datasourceUid"] == "__expr__":
                assert query["model"]["expression"] in refs, f"{rule['uid']}: {query['model']['expression']}"
                assert query["model"]["type"] in ("reduce", "threshold", "math", "classic_conditions")
            else:
                assert query["relativeTimeRange"]["from"] > query["relativeTimeRange"]["to"] >= 0
                assert query["model"]["datasource"]["uid"] == query["datasourceUid"]


def _alert_sql(rule: dict) -> tuple[str, datetime, datetime]:
    (query,) = [q for q in rule["data"] if q["datasourceUid"] == provisioned_datasource()["uid"]]
    sql = query["model"]["rawSql"]
    assert "$__conditionalAll" not in sql, f"{rule['uid']}: a frontend macro; alert rules run in the backend"
    now = datetime.now(timezone.utc)
    t_from = now - timedelta(seconds=query["relativeTimeRange"]["from"])
    t_to = now - timedelta(seconds=query["relativeTimeRange"]["to"])
    return render_sql(sql, {}, {}, {}, t_from, t_to), t_from, t_to


def _threshold(rule: dict) -> tuple[str, float]:
    refs = {q["refId"]: q["model"] for q in rule["data"]}
    cond = refs[rule["condition"]]
    assert cond["type"] == "threshold"
    evaluator = cond["conditions"][0]["evaluator"]
    return evaluator["type"], float(evaluator["params"][0])


def _fires(rule: dict, value: float) -> bool:
    kind, limit = _threshold(rule)
    return {"gt": value > limit, "lt": value < limit}[kind]


def test_clickhouse_alert_rules_run_and_fire_on_rows_that_should_fire_them(seeded):
    from processors.rules import load_rules

    rules = {r["uid"]: r for r in alert_rules()}
    city = f"{PREFIX}alert"
    now = datetime.now(timezone.utc)
    today = datetime.now(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    red = float(load_rules().satisfaction.red_below)
    minimum = int(load_rules().satisfaction.alert_min_responses)
    breach_cols = ["event_id", "complaint_id", "customer_id", "city", "channel", "sla", "deadline",
                   "escalated_to_level", "severity", "category", "occurred_at", "rules_version"]
    seeded.insert("complaint_sla_breaches", [
        [_uuid(), f"{PREFIX}-al{i}", f"{PREFIX}-cu-al", city, "phone", "resolution", _ms(now),
         1, "normal", "billing", _ms(now - timedelta(minutes=i + 1)), "test"] for i in range(11)],
        column_names=breach_cols)
    seeded.insert("satisfaction_window_partials", [
        ["1d", _ms(today), city, "phone", "gold", 0, 1, minimum, (red - 5) * minimum, minimum,
         [0] * 11, "test"]],
        column_names=["window", "window_start", "city", "channel", "tier", "source_partition",
                      "version", "surveys", "composite_sum", "composite_count",
                      "first_response_buckets", "rules_version"])
    for uid in ("cxledger-sla-breaches", "cxledger-satisfaction-red-line"):
        sql, _, _ = _alert_sql(rules[uid])
        try:
            result = seeded.query(sql)
        except Exception as exc:
            raise AssertionError(f"alert {uid} fails on ClickHouse: {exc}\n{sql}") from None
        values = {r[0]: r[-1] for r in result.result_rows}  # the label column, then the value
        assert city in values, f"alert {uid} does not see the seeded city: {values}"
        assert _fires(rules[uid], float(values[city])), (uid, values[city], _threshold(rules[uid]))
        # and a city with nothing wrong does not fire
        assert not any(_fires(rules[uid], float(v)) for c, v in values.items()
                       if c.startswith(PREFIX) and c != city), values


# ------------------------------------------------------------------------------------------------
# Grafana provisioning and the ClickHouse users
def test_grafana_provisioning_matches_compose_and_clickhouse_users():
    ds = provisioned_datasource()
    prom = provisioned_datasources()["prometheus"]
    services = resolved_compose()["services"]
    grafana, clickhouse = services["grafana"], services["clickhouse"]
    genv, cenv = grafana["environment"], clickhouse["environment"]
    plugins = " ".join(str(genv.get(k, "")) for k in
                       ("GF_PLUGINS_PREINSTALL_SYNC", "GF_PLUGINS_PREINSTALL", "GF_INSTALL_PLUGINS"))
    assert f"{PLUGIN_ID}@{PLUGIN_VERSION}" in plugins, f"the plugin is not pinned to {PLUGIN_VERSION}: {plugins!r}"
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", grafana["image"]), grafana["image"]
    # the data sources' ${VARS} are set in Grafana's environment and point at the compose services
    json_data = ds["jsonData"]
    for source in (ds, prom):
        for ref in re.findall(r"\$\{?(\w+)\}?", json.dumps(source)):
            assert ref in genv, f"datasource provisioning uses ${ref}, not set for the grafana service"
    host = re.sub(r"\$\{?(\w+)\}?", lambda m: genv[m.group(1)], json_data["host"])
    assert host in services and host == "clickhouse"
    prom_url = re.sub(r"\$\{?(\w+)\}?", lambda m: genv[m.group(1)], prom["url"])
    assert re.match(r"http://([^:/]+)", prom_url).group(1) in services
    assert json_data["protocol"] in ("native", "http")
    assert json_data["port"] == (9000 if json_data["protocol"] == "native" else 8123)
    assert json_data["defaultDatabase"] == cenv["CLICKHOUSE_DB"] == "cx"
    # the read-only user the data source logs in as
    users = ET.parse(USERS_FILE).getroot()
    user = users.find(f"users/{json_data['username']}")
    assert user is not None, f"no ClickHouse user {json_data['username']!r} in {USERS_FILE.name}"
    password_env = user.find("password").get("from_env")
    assert password_env in cenv, "the grafana user's password variable is not set for clickhouse"
    pw_ref = re.fullmatch(r"\$\{?(\w+)\}?", ds["secureJsonData"]["password"]).group(1)
    assert compose()["services"]["grafana"]["environment"][pw_ref] == \
        compose()["services"]["clickhouse"]["environment"][password_env], "grafana and clickhouse disagree on the password"
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    if profile.findtext("readonly") == "1":  # the plugin sets max_execution_time on each query
        assert profile.find("constraints/max_execution_time/changeable_in_readonly") is not None
        assert float(profile.findtext("constraints/max_execution_time/max")) >= json_data["queryTimeout"]
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
    assert ALERT_RULES_FILE.is_relative_to(DEPLOY / "grafana" / "provisioning")
    home = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(provider["options"]["path"] + "/")
        assert (DASHBOARD_DIR / Path(home).name).exists()
