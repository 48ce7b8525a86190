"""What test_deploy.py and test_dashboards.py share: the deployment files, loaded and resolved
the way docker compose and kustomize would, and checks of cxledger invocations and settings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from cxledger.cli import build_parser
from cxledger.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
USERS_FILE = DEPLOY / "clickhouse" / "users.d" / "cxledger.xml"
ACCESS_SQL = DEPLOY / "clickhouse" / "access.sql"

# referenced by the deployment, may not be in the parser yet
FUTURE_COMMANDS: set[str] = set()
# settings referenced by the deployment before cxledger/config.py reads them (none left:
# CXLEDGER_METRICS_PORT is read since the metrics endpoints exist)
FUTURE_SETTINGS: set[str] = set()
METRICS_PORT = 9108


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def compose() -> dict:
    return load_yaml_docs(COMPOSE_FILE)[0]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """docker compose variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?err}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
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
            # a required secret: the test supplies one, long enough for a key (32+ characters)
            return f"test-{name.lower()}".ljust(40, "x")
        raise AssertionError(f"compose variable ${name} has no default and is not required")

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)", sub, value)


def resolved_compose() -> dict:
    """compose.yaml with variables resolved (YAML merge keys are resolved by the loader)."""
    return interpolate(compose(), {})


def k8s_objects() -> list[dict]:
    kustomization = load_yaml_docs(K8S_DIR / "kustomization.yaml")[0]
    objects = []
    for resource in kustomization["resources"]:
        objects += load_yaml_docs(K8S_DIR / resource)
    return objects


def known_env_vars() -> set[str]:
    text = (ROOT / "cxledger" / "config.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(CXLEDGER_[A-Z_]+)"', text))
    assert {"CXLEDGER_KAFKA_BOOTSTRAP", "CXLEDGER_CLICKHOUSE_DSN"} <= names
    return names | FUTURE_SETTINGS


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


# which cxledger commands talk to what
NEEDS_KAFKA = {"topics", "schemas", "process", "sink", "gateway", "publish", "simulate"}
NEEDS_CLICKHOUSE = {"sink", "db"}  # only these get a ClickHouse DSN


def check_settings(env: dict[str, str], command: str, where: str,
                   files: dict[str, Path] | None = None) -> None:
    """``files``: what the container sees at a path (a mounted file) -> the file here."""
    unknown = {k for k in env if k.startswith("CXLEDGER_")} - known_env_vars()
    assert not unknown, f"{where}: unknown settings {sorted(unknown)} (cxledger/config.py reads none of them)"
    env = {k: v for k, v in env.items() if k not in FUTURE_SETTINGS}
    for name in ("CXLEDGER_GATEWAY_KEYS_FILE",):
        if name in env:
            assert files and env[name] in files, f"{where}: {name}={env[name]} is not mounted"
            env[name] = str(files[env[name]])
    settings = load_settings(environ=env)
    if command in NEEDS_KAFKA:
        assert settings.kafka_bootstrap, f"{where}: no Kafka bootstrap"
    assert settings.schema_registry_url, f"{where}: every process must use the same schema ids (registry)"
    dsn = settings.clickhouse_dsn or ""
    if command in NEEDS_CLICKHOUSE:
        assert re.match(r"https?://[^/]+/\w+$", dsn), (
            f"{where}: {command} needs a ClickHouse server DSN http(s)://user:pass@host:port/db, "
            f"not the embedded store (got {dsn!r})")
    else:
        assert not dsn, f"{where}: `cxledger {command}` never talks to ClickHouse: it gets no DSN"


def dsn_user(dsn: str) -> str:
    return re.match(r"https?://([^:@/]+)", dsn).group(1)
