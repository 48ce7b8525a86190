"""No secret ever appears in logs, errors or ``--help`` output (security).

Recognisable secrets are set the ways users set them: the SASL password, the registry's
user:password and the PII key in the environment; the query endpoint's password and the gateway's
key file in a config file; a ClickHouse DSN with a password for the commands that take one. Kafka
is a Tansu broker behind a TLS and SCRAM front (tests/integration/kafka_front.py), so every Kafka
client of the stack really authenticates with the SASL password. Then
the commands users run: every ``--help``; ``cxledger up`` until ready; ``publish`` (with personal
data in the file, which must not show up either); the gateway with the right key and a wrong
one; ``sql``, ``customer``, ``status``; failing commands (a bad query, a second ``up``, an
unreachable registry, an unreachable DSN); ``down``. Everything printed and every log file under
the store is searched for the secrets.

The stack record (``stack.json``, mode 0600) may hold the reader's password: it is the stack's
key ring, not a log. The children's config file (``run/children.toml``) holds every setting of
the stack: it must be 0600 while it exists, and it is removed at ``down``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.stack_driver import Up, clean_env, cli, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def token(label: str) -> str:
    return f"{label}-{secrets.token_hex(8)}"


SASL_PASSWORD = token("SASLPW")
QUERY_PASSWORD = token("QUERYPW")
REGISTRY_PASSWORD = token("REGPW")
DSN_PASSWORD = token("DSNPW")
PII_KEY = token("PIIKEY") + "-" + secrets.token_hex(16)
WRONG_KEY = token("WRONGKEY")
PHONE = "13912345678"  # personal data in a published file: never in a log either


def help_commands() -> list[list[str]]:
    """``--help`` of the command and of every subcommand, nested ones included."""
    from cxledger.cli import build_parser

    out = [["--help"]]

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append([*path, name, "--help"])
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return out


def unreachable() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    """Kafka with SASL_SSL: Tansu behind the TLS and SCRAM front; (front, CA file)."""
    from cxledger.localstack import LocalBroker
    from tests.integration.kafka_front import KafkaFront
    from tests.integration.tls_helpers import make_pki

    pki = make_pki(tmp_path_factory.mktemp("secrets-pki"))
    port = free_port()
    with LocalBroker(advertised=f"127.0.0.1:{port}") as bootstrap, \
            KafkaFront(int(bootstrap.rsplit(":", 1)[1]), port=port, tls=pki,
                       users={"cx-writer": SASL_PASSWORD}) as front:
        yield front, pki.ca


@pytest.fixture(scope="module")
def secret_env(tmp_path_factory, kafka):
    from producers.api_keys import new_api_key

    front, ca = kafka
    work = tmp_path_factory.mktemp("secrets")
    gateway_key, entry = new_api_key("callcentre")
    keys = work / "gateway-keys.toml"
    keys.write_text(entry.toml())
    config = work / "cxledger.toml"
    config.write_text(f'[query]\npassword = "{QUERY_PASSWORD}"\n')
    config.chmod(0o600)
    env = clean_env(
        CXLEDGER_CONFIG=str(config),
        CXLEDGER_KAFKA_BOOTSTRAP=front.bootstrap, CXLEDGER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CXLEDGER_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", CXLEDGER_KAFKA_SASL_USERNAME="cx-writer",
        CXLEDGER_KAFKA_SASL_PASSWORD=SASL_PASSWORD, CXLEDGER_KAFKA_SSL_CA_LOCATION=str(ca),
        CXLEDGER_SCHEMA_REGISTRY_AUTH=f"registry-user:{REGISTRY_PASSWORD}",
        CXLEDGER_PII_HMAC_KEY=PII_KEY,
        CXLEDGER_GATEWAY_KEYS_FILE=str(keys),
        CXLEDGER_QUERY_PORT=str(free_port()), CXLEDGER_GATEWAY_PORT=str(free_port()),
        CXLEDGER_LOG_LEVEL="debug")
    return work, env, gateway_key


def secrets_in(text: str, gateway_key: str) -> list[str]:
    found = [s for s in (SASL_PASSWORD, QUERY_PASSWORD, REGISTRY_PASSWORD, DSN_PASSWORD, PII_KEY,
                         WRONG_KEY, gateway_key) if s in text]
    return found + (["the phone number"] if PHONE in text else [])


def test_help_shows_no_secret(secret_env):
    work, env, gateway_key = secret_env
    procs = [(args, subprocess.Popen([sys.executable, "-m", "cxledger.cli", *args], cwd=work,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
             for args in help_commands()]
    procs.append((["query_endpoint --help"], subprocess.Popen(
        [sys.executable, "-m", "cxledger.query_endpoint", "--help"], cwd=work,
        env={**env, "CXLEDGER_QUERY_PASSWORD": QUERY_PASSWORD}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)))
    for args, proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (args, out)
        assert "usage:" in out
        assert secrets_in(out, gateway_key) == [], args
    assert len(procs) > 20


def test_the_stack_and_its_commands_show_no_secret(secret_env, kafka):
    work, env, gateway_key = secret_env
    front = kafka[0]
    file = work / "events.jsonl"
    from producers.simulator import simulate

    events = list(simulate(200, seed=3))
    customer_event = next(e for e in events[7:] if "customer_id" in e)
    customer_event["customer_id"] = PHONE  # pseudonymised with the key, never shown
    file.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    printed: list[str] = []

    def run(*args: str, expect: int | None = 0, **extra: str) -> subprocess.CompletedProcess:
        done = cli(*args, cwd=work, env={**env, **extra}, timeout=180)
        printed.append(f"$ cxledger {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        if expect is not None:
            assert done.returncode == expect, (args, done.stdout, done.stderr)
        return done

    up = Up(work, env)
    store = up.store
    try:
        record = up.wait_ready()
        assert record["query"]["password"] == QUERY_PASSWORD  # the key ring may hold it
        assert oct((store / "stack.json").stat().st_mode & 0o777) == "0o600"
        children = store / "run" / "children.toml"
        assert oct(children.stat().st_mode & 0o777) == "0o600"
        run("publish", str(file))
        gateway = f"http://127.0.0.1:{record['gateway']['port']}/v1/events"
        for key, status in ((gateway_key, 202), (WRONG_KEY, 401)):
            request = urllib.request.Request(
                gateway, data=json.dumps(events[:3]).encode(), method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    code, body = response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                code, body = exc.code, exc.read().decode()
            printed.append(body)
            assert code == status, body
        run("sql", "SELECT count() FROM ledger")
        # on a Kafka of its own the stack acknowledges at the broker, not at the store: the
        # ledger sink writes the published file a moment after `publish` returns
        deadline = time.monotonic() + 60
        while True:
            pseudonym = run("sql", "SELECT uniqExact(customer_id) FROM ledger WHERE customer_id "
                                   "LIKE 'pii-phone-%'", "--format", "csv")
            if pseudonym.stdout.splitlines()[1:] != ["0"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert pseudonym.stdout.splitlines()[1:] == ["1"]
        someone = next(e["customer_id"] for e in events
                       if "customer_id" in e and e is not customer_event)
        run("customer", someone, "--format", "json")
        run("status")
        run("status", "--format", "json")
        run("sql", "SELECT * FROM no_such_table", expect=1)
        run("customer", "nobody", expect=1)
        run("up", expect=1)  # a second one on the same store refuses
        run("schemas", "register", expect=None,
            CXLEDGER_SCHEMA_REGISTRY_URL=f"http://{unreachable()}")
        run("simulate", "--events", "10", expect=None,
            CXLEDGER_SCHEMA_REGISTRY_URL=f"http://{unreachable()}")
    finally:
        down = run("down", expect=None)
        up.proc.wait(timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not children.exists()
    # the secret was used, not only carried: every client authenticated with it
    clients = {client for user, _, client in front.seen.authenticated if user == "cx-writer"}
    assert "rdkafka" in clients, clients  # every client is librdkafka (the worker's included)
    assert len(front.seen.authenticated) > 1
    assert not front.seen.refused
    printed.append(up.output())
    for text in printed:
        assert secrets_in(text, gateway_key) == [], text[-3000:]
    logs = sorted(p for p in (store / "logs").rglob("*") if p.is_file())
    assert {"up.log", "worker-0.log", "gateway.log"} <= {p.name for p in logs}
    for path in logs + [store / "status.json"]:
        if path.exists():
            assert secrets_in(path.read_text(errors="replace"), gateway_key) == [], path


def test_an_unreachable_dsn_is_reported_without_its_password(secret_env):
    work, env, gateway_key = secret_env
    dsn = f"http://reader:{DSN_PASSWORD}@{unreachable()}/cx"
    outputs = []
    for args in (["sql", "--dsn", dsn, "SELECT 1"], ["customer", "c-1", "--dsn", dsn],
                 ["sql", "SELECT 1"], ["up", "--store", str(work / "dsn-store")]):
        done = cli(*args, cwd=work, env={**env, "CXLEDGER_CLICKHOUSE_DSN": dsn}, timeout=120)
        assert done.returncode != 0
        outputs.append(done.stdout + done.stderr)
    outputs += [p.read_text() for p in (work / "dsn-store").rglob("*.log")]
    assert all(secrets_in(out, gateway_key) == [] for out in outputs), outputs
