"""``cxledger demo``: the whole pipeline on one machine, then what it derived."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import structlog
from tqdm import tqdm

from cxledger.config import Settings
from cxledger.pipeline import Pipeline
from producers.ingest import publish_file
from producers.sdk import LedgerProducer

log = structlog.get_logger("cxledger.demo")

STORE_MARKER = ".cxledger-store"

SUMMARY_QUERIES = [
    ("Events per type", """
        SELECT event_type, count() AS events FROM ledger GROUP BY event_type ORDER BY events DESC"""),
    ("Events per city (top 10 of {cities})", """
        SELECT city, count() AS events, uniqExact(customer_id) AS customers
        FROM ledger GROUP BY city ORDER BY events DESC LIMIT 10"""),
    ("Timeline of the busiest customer ({customer})", """
        SELECT occurred_at, event_type, channel,
               coalesce(JSONExtractString(payload, 'complaint_id'),
                        JSONExtractString(payload, 'contact_id')) AS case_or_contact
        FROM ledger WHERE customer_id = {customer_q} ORDER BY occurred_at LIMIT 15"""),
]


def prepare_store(store: Path, keep: bool) -> None:
    """Start from an empty embedded store unless ``keep``; never delete a foreign directory."""
    if keep or not store.exists():
        store.mkdir(parents=True, exist_ok=True)
        (store / STORE_MARKER).touch()
        return
    if not (store / STORE_MARKER).exists() and any(store.iterdir()):
        raise SystemExit(f"{store} exists and is not a cxledger demo store; choose another "
                         "--store, or pass --keep to add to it")
    shutil.rmtree(store)
    store.mkdir(parents=True)
    (store / STORE_MARKER).touch()


def pretty(client, sql: str) -> str:
    return client.raw_query(sql, fmt="PrettyCompactMonoBlock",
                            settings={"output_format_pretty_row_numbers": 0}).decode()


def run_demo(settings: Settings, *, events: int, input_file: Path | None, seed: int,
             keep: bool = False, out=sys.stdout) -> int:
    if settings.embedded_store:
        prepare_store(settings.store, keep)
    rejected = 0
    with Pipeline(settings) as pipe:
        pipe.start_sinks()
        with LedgerProducer(pipe.settings, codec=pipe.codec) as producer:
            if input_file is not None:
                summary = publish_file(input_file, producer,
                                       on_reject=lambda r: print(r, file=sys.stderr))
                published, rejected = summary.published, len(summary.rejected)
                print(f"{input_file}: {published} published, {rejected} rejected"
                      + (f" (see {summary.rejects_file})" if rejected else ""), file=out)
            else:
                from producers.simulator import simulate

                for event in tqdm(simulate(events, seed=seed), total=events, desc="publishing",
                                  unit="ev", leave=False):
                    producer.publish(event)
                published = events
        pipe.wait_for_sinks(producer.positions)
        print_summary(pipe.client, published, out)
    where = settings.store if settings.embedded_store else settings.clickhouse_dsn
    print(f"\nThe ledger is in {where}. Query it with:\n"
          f"  cxledger sql --store {settings.store} \"SELECT count() FROM ledger_events\"",
          file=out)
    return 0


def print_summary(client, published: int, out) -> None:
    total = client.query("SELECT count() FROM ledger").result_rows[0][0]
    cities = client.query("SELECT uniqExact(city) FROM ledger").result_rows[0][0]
    busiest = client.query("SELECT customer_id FROM ledger GROUP BY customer_id "
                           "ORDER BY count() DESC, customer_id LIMIT 1").result_rows
    customer = busiest[0][0] if busiest else ""
    print(f"\n{published} events published, {total} in ClickHouse.\n", file=out)
    for title, sql in SUMMARY_QUERIES:
        print(title.format(cities=cities, customer=customer), file=out)
        print(pretty(client, sql.format(customer_q=_quote(customer))), file=out)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
