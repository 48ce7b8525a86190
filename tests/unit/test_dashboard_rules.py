"""Dashboards rendered with the thresholds of a rules file (cxledger.dashboard_rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxledger.dashboard_rules import render_dashboard, render_dir
from processors.rules import DEFAULT_RULES_PATH, load_rules

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def custom_rules(tmp_path: Path, red: int = 70, national: int = 92):
    text = DEFAULT_RULES_PATH.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^red_below = \d+", f"red_below = {red}", text)
    text = re.sub(r"(?m)^national_target = \d+", f"national_target = {national}", text)
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return load_rules(path)


def satisfaction_steps(board) -> list[list]:
    found = []

    def walk(node, key=None):
        if isinstance(node, dict):
            if key == "thresholds" and isinstance(node.get("steps"), list):
                found.append([s.get("value") for s in node["steps"]])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(board)
    return found


def test_the_shipped_rules_render_the_dashboards_unchanged():
    rules = load_rules()
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text(encoding="utf-8"))
        assert render_dashboard(board, rules, rules) == board, path.name


def test_a_rules_file_of_its_own_moves_every_satisfaction_threshold(tmp_path):
    rules = custom_rules(tmp_path)
    shipped = load_rules().satisfaction
    old = [None, shipped.red_below, shipped.recovery_target, shipped.national_target]
    new = [None, 70, shipped.recovery_target, 92]
    written = render_dir(DASHBOARDS, tmp_path / "out", rules)
    assert {p.name for p in written} == {p.name for p in DASHBOARDS.glob("*.json")}
    moved = 0
    for path in written:
        before = json.loads((DASHBOARDS / path.name).read_text(encoding="utf-8"))
        after = json.loads(path.read_text(encoding="utf-8"))
        assert old not in satisfaction_steps(after), path.name
        moved += satisfaction_steps(after).count(new)
        assert satisfaction_steps(before).count(old) == satisfaction_steps(after).count(new)
        text = json.dumps(after)
        assert not re.search(r"(score|composite)\s*<\s*80\b", text), path.name
        assert not re.search(r"(score|composite)\s*>=\s*90\b", text), path.name
        assert not re.search(r"\bbelow 80\b|\babove 90\b", text), path.name
    assert moved >= 10
