"""Restore from the store: the fold of the stored ledger decides what the derived tables hold.

``repair`` is what ``cxledger up`` runs on start after a crash: whatever the derived tables lack
or hold beyond the fold of the ledger (rows of events lost with the broker, a newer version of
a window that the ledger does not support, a row nothing in the ledger derives) is put right.
"""

from __future__ import annotations

import uuid

import clickhouse_connect
import pytest

from processors.rules import load_rules
from schemas.validation import normalize_event
from sinks.clickhouse import create_tables
from sinks.ledger_sink import LEDGER_COLUMNS, ledger_row
from sinks.replay import repair, replay
from tests.integration.test_pipeline import SCRIPT

pytestmark = pytest.mark.integration


@pytest.fixture
def store(store_dir, clickhouse):
    """A database of its own in the session's store, with every table and view."""
    name = f"t_restore_{uuid.uuid4().hex[:8]}"
    clickhouse.command(f"CREATE DATABASE {name}")
    client = clickhouse_connect.get_client(dsn=f"chdb://{store_dir}", database=name)
    create_tables(client)
    yield client
    client.close()
    clickhouse.command(f"DROP DATABASE {name}")


def ledger(client) -> None:
    records = [normalize_event(e) for e in SCRIPT
               if isinstance(e, dict) and e.get("channel") != "fax"]
    by_partition: dict[int, int] = {}
    rows = []
    for record in records:
        partition = sum(record["customer_id"].encode()) % 3
        position = by_partition.get(partition, 0)
        by_partition[partition] = position + 1
        rows.append(ledger_row(record, 1, partition, position))
    client.insert("ledger_events", rows, column_names=list(LEDGER_COLUMNS))


def test_repair_makes_every_derived_table_equal_to_the_fold_of_the_ledger(store):
    rules = load_rules()
    ledger(store)
    first = replay(store, rules, show_progress=False)
    assert not first.equal  # nothing derived yet: everything is missing
    repaired = repair(store, first)
    assert set(repaired) == {t.table for t in first.tables if t.replay_rows}
    assert replay(store, rules, show_progress=False).equal

    # what a crash can leave: a derived row that no ledger event supports, a window partial
    # at a version the ledger does not reach, a row lost with the broker
    store.command("INSERT INTO churn_risk_changes SELECT generateUUIDv4(), 'c-ghost', 'hohhot',"
                  " 'standard', 90, 'high', 'low', ['port_out', 'cancel'], now64(3), 'x'")
    store.command("INSERT INTO satisfaction_window_partials SELECT * REPLACE (version + 7 AS "
                  "version, contacts + 1 AS contacts) FROM satisfaction_window_partials FINAL "
                  "LIMIT 1")
    store.command("DELETE FROM tier_changes WHERE customer_id = 'c-c'")
    broken = replay(store, rules, show_progress=False)
    differs = {t.table: (t.only_live, t.only_replay) for t in broken.tables if not t.equal}
    assert differs == {"churn_risk_changes": (1, 0), "satisfaction_window_partials": (1, 1),
                       "tier_changes": (0, 1)}
    repair(store, broken)
    assert replay(store, rules, show_progress=False).equal
    assert store.query("SELECT count() FROM churn_risk_changes FINAL WHERE customer_id = "
                       "'c-ghost'").result_rows == [(0,)]
