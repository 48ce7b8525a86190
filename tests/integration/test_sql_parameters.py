"""Values reach SQL as bound parameters, never formatted into it (security): a
customer id made of quotes, backslashes, braces and SQL goes through the demo's summary and
``cxledger customer`` on a real store and comes back byte for byte, with the store unchanged.

chDB hosts one store per process and this test process may own the session store, so the store
is prepared (and the demo summary printed) in a subprocess, and ``cxledger customer`` runs as
a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Valid as a customer id (printable, no surrounding space): every character SQL cares about.
HOSTILE = "c-o'brien\\'); DROP TABLE ledger_events; -- {customer:String} \" ` ?"
OTHER = "c-000001"

PREPARE = r'''
import io, json, sys
from cxledger.demo import print_summary
from schemas.validation import normalize_event
from sinks.clickhouse import connect, create_tables
from sinks.ledger_sink import LEDGER_COLUMNS, LEDGER_TABLE, ledger_row
from tests.unit.events import contact, survey

store, hostile, other = sys.argv[1:4]
client = connect(f"chdb://{store}")
create_tables(client)
events = [contact(customer_id=hostile, occurred_at=f"2025-03-04T09:0{i}:00+08:00")
          for i in range(3)] + [survey(customer_id=hostile), contact(customer_id=other)]
records = [normalize_event(e) for e in events]
client.insert(LEDGER_TABLE, [ledger_row(r, 1, 0, n) for n, r in enumerate(records)],
              column_names=list(LEDGER_COLUMNS))
out = io.StringIO()
print_summary(client, len(records), out)
tables = [name for (name,) in client.query("SHOW TABLES").result_rows]
stored = client.query("SELECT customer_id, count() FROM ledger_events GROUP BY customer_id "
                      "ORDER BY 1").result_rows
print(json.dumps({"summary": out.getvalue(), "tables": tables, "stored": stored,
                  "ids": [r["contact_id"] for r in records if "contact_id" in r]}))
'''


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    return {**env, "PYTHONPATH": str(ROOT), "CXLEDGER_LOG_LEVEL": "warning"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    store = tmp_path_factory.mktemp("sqlparams") / "store"
    done = subprocess.run([sys.executable, "-c", PREPARE, str(store), HOSTILE, OTHER],
                          capture_output=True, text=True, timeout=180, env=clean_env(),
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return store, json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_summary_binds_the_customer_id(prepared):
    _, result = prepared
    assert "ledger_events" in result["tables"]
    assert sorted(result["stored"]) == sorted([[HOSTILE, 4], [OTHER, 1]])
    summary = result["summary"]
    assert f"Timeline of the busiest customer ({HOSTILE})" in summary
    timeline = summary.split(f"({HOSTILE})", 1)[1]
    # the busiest customer's four events, found by its exact id
    assert timeline.count("contact.completed") == 3 and timeline.count("survey.responded") == 1
    for contact_id in result["ids"][:3]:
        assert contact_id in timeline


def test_customer_command_binds_the_customer_id(prepared):
    store, result = prepared
    done = subprocess.run([sys.executable, "-m", "cxledger.cli", "customer", HOSTILE,
                           "--store", str(store), "--format", "json"], capture_output=True,
                          text=True, timeout=180, env=clean_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["customer_id"] == HOSTILE
    ledger = [e for e in report["timeline"] if e["source"] != "derived"]
    assert [e["event_type"] for e in ledger] == ["contact.completed"] * 3 + ["survey.responded"]
    missing = subprocess.run([sys.executable, "-m", "cxledger.cli", "customer", HOSTILE + "'",
                              "--store", str(store)], capture_output=True, text=True,
                             timeout=180, env=clean_env(), cwd=ROOT)
    assert missing.returncode == 1 and "has no events in the ledger" in missing.stderr
