"""The Grafana dashboards with the satisfaction thresholds of a rules file.

Provisioned dashboards are JSON files that Grafana reads as they are: they cannot read the rules
file. The ones in ``deploy/grafana/dashboards`` carry the shipped rules' red line, recovery target
and national target (80 / 88 / 90; tests/integration/test_dashboards.py keeps them equal to
``processors/rules/default.toml``). The alert rule "satisfaction below the red line" needs
nothing: it reads ``threshold`` from the ``satisfaction_alerts`` view, which the store builds from
the configured rules (sinks.clickhouse.refresh_views). For a rules file of your own, render the
dashboards you provision with its values:

    python -m cxledger.dashboard_rules --rules /etc/cxledger/rules.toml \\
        deploy/grafana/dashboards /srv/grafana/dashboards

This rewrites, in a copy of each dashboard: every threshold step list that is the shipped
[red, recovery, national] (the colour bands and the lines on the per-city charts); the
comparisons with the red line and the national target in panel queries (``score < 80``,
``composite >= 90``); and the numbers in titles and descriptions ("below 80", "at or above 90",
"80 / 88 / 90"). Run it again whenever the rules change, as part of the same release.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from processors.rules import Rules, load_rules


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


def render_dashboard(board: dict[str, Any], rules: Rules, shipped: Rules | None = None
                     ) -> dict[str, Any]:
    """A copy of ``board`` with ``shipped``'s satisfaction thresholds replaced by ``rules``'."""
    shipped = shipped or load_rules()
    old, new = shipped.satisfaction, rules.satisfaction
    bands_old = [old.red_below, old.recovery_target, old.national_target]
    bands_new = [new.red_below, new.recovery_target, new.national_target]
    red_o, nat_o = _number(old.red_below), _number(old.national_target)
    red_n, nat_n = _number(new.red_below), _number(new.national_target)
    text_rules = [
        (re.compile(rf"\b(below|under) {re.escape(red_o)}\b"), rf"\g<1> {red_n}"),
        (re.compile(rf"\b(at or above|above) {re.escape(nat_o)}\b"), rf"\g<1> {nat_n}"),
        (re.compile(rf"\b{re.escape(red_o)} / {re.escape(_number(old.recovery_target))} / "
                    rf"{re.escape(nat_o)}\b"),
         f"{red_n} / {_number(new.recovery_target)} / {nat_n}"),
    ]
    sql_rules = [
        (re.compile(rf"\b(score|composite)(\s*)<(\s*){re.escape(red_o)}(\.0*)?\b"),
         rf"\g<1>\g<2><\g<3>{red_n}"),
        (re.compile(rf"\b(score|composite)(\s*)>=(\s*){re.escape(nat_o)}(\.0*)?\b"),
         rf"\g<1>\g<2>>=\g<3>{nat_n}"),
    ]

    def text(value: str, rules_: list) -> str:
        for pattern, replacement in rules_:
            value = pattern.sub(replacement, value)
        return value

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v, k) for k, v in node.items()}
            steps = out.get("steps")
            if key == "thresholds" and isinstance(steps, list) and len(steps) == 4 and \
                    steps[0].get("value") is None and \
                    [s.get("value") for s in steps[1:]] == bands_old:
                out["steps"] = [steps[0], *({**s, "value": v}
                                            for s, v in zip(steps[1:], bands_new))]
            return out
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str) and key in ("rawSql", "expr", "query"):
            return text(node, sql_rules)
        if isinstance(node, str) and key in ("title", "description"):
            return text(node, text_rules)
        return node

    return walk(board)


def render_dir(source: Path, target: Path, rules: Rules) -> list[Path]:
    """Every ``*.json`` dashboard of ``source``, rendered into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    shipped = load_rules()
    written = []
    for path in sorted(source.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        out = target / path.name
        out.write_text(json.dumps(render_dashboard(board, rules, shipped), indent=2,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxledger.dashboard_rules",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", required=True, help="the rules file (CXLEDGER_RULES)")
    parser.add_argument("source", type=Path, help="the dashboards, e.g. deploy/grafana/dashboards")
    parser.add_argument("target", type=Path, help="where the rendered copies go")
    args = parser.parse_args(argv)
    rules = load_rules(args.rules)
    for path in render_dir(args.source, args.target, rules):
        print(path)
    s = rules.satisfaction
    print(f"thresholds {_number(s.red_below)} / {_number(s.recovery_target)} / "
          f"{_number(s.national_target)} (rules version {rules.version})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
