"""``cxledger demo``: the whole pipeline on one machine, then what it derived."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import structlog
from tqdm import tqdm

from cxledger.config import Settings, redact_dsn
from cxledger.pipeline import Pipeline
from producers.ingest import publish_file
from producers.sdk import LedgerProducer

log = structlog.get_logger("cxledger.demo")

STORE_MARKER = ".cxledger-store"

SUMMARY_QUERIES = [
    ("Events per type", """
        SELECT event_type, count() AS events FROM ledger GROUP BY event_type ORDER BY events DESC"""),
    ("Events per city (top 10 of {cities})", """
        SELECT city, count() AS events, uniqExactIf(customer_id, customer_id != '') AS customers
        FROM ledger GROUP BY city ORDER BY events DESC LIMIT 10"""),
    ("Timeline of the busiest customer ({customer})", """
        SELECT occurred_at, event_type, channel,
               coalesce(nullIf(JSONExtractString(payload, 'complaint_id'), ''),
                        nullIf(JSONExtractString(payload, 'contact_id'), ''),
                        nullIf(JSONExtractString(payload, 'survey_id'), '')) AS case_or_contact
        FROM ledger WHERE customer_id = {customer:String} ORDER BY occurred_at LIMIT 15"""),
]
# Values reach these queries as bound parameters ({name:Type}, sent apart from the SQL text),
# never formatted into it: a customer id is whatever a channel sent.


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


def pretty(client, sql: str, parameters: dict | None = None) -> str:
    return client.raw_query(sql, parameters=parameters or None, fmt="PrettyCompactMonoBlock",
                            settings={"output_format_pretty_row_numbers": 0}).decode()


DERIVED_QUERIES = [
    ("Top 5 cities by satisfaction (composite of all scored surveys)", """
        SELECT city, round(avg(s.composite), 2) AS avg_composite, count() AS surveys
        FROM satisfaction_scores AS s FINAL WHERE s.composite IS NOT NULL
        GROUP BY city ORDER BY avg_composite DESC LIMIT 5"""),
    ("Bottom 3 cities", """
        SELECT city, round(avg(s.composite), 2) AS avg_composite, count() AS surveys
        FROM satisfaction_scores AS s FINAL WHERE s.composite IS NOT NULL
        GROUP BY city ORDER BY avg_composite ASC LIMIT 3"""),
    ("Satisfaction alerts (a city's daily composite below 80 on enough responses)", """
        SELECT count() AS alerts, uniqExact(city) AS cities,
               arrayStringConcat(groupUniqArray(5)(city), ', ') AS e_g FROM satisfaction_alerts"""),
    ("Complaint SLA breaches by type", """
        SELECT sla, count() AS breaches, countIf(escalated_to_level IS NOT NULL) AS escalations,
               max(escalated_to_level) AS max_level
        FROM complaint_sla_breaches FINAL GROUP BY sla ORDER BY breaches DESC"""),
    ("High churn risk: {high_risk} customers; the top 8", """
        SELECT customer_id, city, tier, score, arrayStringConcat(reasons, ', ') AS reasons
        FROM churn_risk_current WHERE level = 'high' ORDER BY score DESC, customer_id LIMIT 8"""),
    ("Tier changes ({pending} downgrades waiting for approval)", """
        SELECT from_tier, to_tier, count() AS customers FROM tier_changes FINAL
        GROUP BY from_tier, to_tier ORDER BY customers DESC"""),
]


# The hall league table of the latest month with ranked halls (at least 30 valid SMS replies),
# and the halls flagged for key improvement (three months below 96.0).
_LEAGUE = """
        SELECT rank, hall_id, district, satisfaction, valid_replies, on_target
        FROM hall_league_monthly WHERE month = {{month:String}} AND {which} <= {{n:UInt32}}
        ORDER BY {which}"""
HALL_QUERIES = [
    ("Service halls {month}: top 5 of {ranked} ranked halls by SMS satisfaction",
     _LEAGUE.format(which="rank"), 5),
    ("Bottom 3", _LEAGUE.format(which="rank_from_bottom"), 3),
    ("Halls flagged for key improvement ({flagged}: 3 months below the 96.0 target)", """
        SELECT hall_id, city, arrayStringConcat(months, ', ') AS months,
               arrayStringConcat(arrayMap(v -> toString(v), values), ', ') AS values
        FROM hall_key_improvement_current ORDER BY hall_id""", None),
]


def print_halls(client, out) -> None:
    """The hall league table's top 5 and bottom 3, and the halls flagged for key improvement."""
    latest = client.query("SELECT month, max(ranked_halls) FROM hall_league_monthly "
                          "GROUP BY month ORDER BY month DESC LIMIT 1").result_rows
    flagged = client.query("SELECT count() FROM hall_key_improvement_current").result_rows[0][0]
    if not latest and not flagged:
        return
    month, ranked = latest[0] if latest else ("-", 0)
    for title, sql, n in HALL_QUERIES:
        if n is not None and not latest:
            continue
        print(title.format(month=month, ranked=ranked, flagged=flagged), file=out)
        print(pretty(client, sql, {"month": month, "n": n} if n is not None else None), file=out)


def run_demo(settings: Settings, *, events: int, input_file: Path | None, seed: int,
             keep: bool = False, workers: int = 1, out=sys.stdout) -> int:
    if settings.embedded_store:
        prepare_store(settings.store, keep)
    settings = settings.with_(live_clock=False)  # a backfill: event time alone (domain.md)
    rejected = 0
    with Pipeline(settings) as pipe:
        pipe.start_sinks()
        pipe.start_processors(workers, log_dir=settings.store.parent)
        pipe.wait_for_processor_group()
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
        pipe.wait_for_processors(producer.positions)
        pipe.wait_for_hall_months()
        pipe.wait_for_sinks(pipe.fence(list(dict.fromkeys(pipe.settings.topics.derived.values()))))
        print_summary(pipe.client, published, out)
        print_derived(pipe.client, out)
        print_halls(pipe.client, out)
    where = settings.store if settings.embedded_store else redact_dsn(settings.clickhouse_dsn)
    command = sys.argv[0] if sys.argv[0].endswith("cxledger") else "cxledger"
    print(f"\nThe ledger is in {where}. Query it with:\n"
          f"  {command} sql --store {settings.store} \"SELECT count() FROM ledger_events\"\n"
          f"or run it as a service (publish, query with any ClickHouse client, Grafana):\n"
          f"  {command} up --store {settings.store}", file=out)
    return 1 if rejected else 0


def print_summary(client, published: int, out) -> None:
    total = client.query("SELECT count() FROM ledger").result_rows[0][0]
    cities = client.query("SELECT uniqExact(city) FROM ledger").result_rows[0][0]
    busiest = client.query("SELECT customer_id FROM ledger WHERE customer_id != '' "
                           "GROUP BY customer_id ORDER BY count() DESC, customer_id LIMIT 1"
                           ).result_rows
    customer = busiest[0][0] if busiest else ""
    print(f"\n{published} events published, {total} in ClickHouse.\n", file=out)
    for title, sql in SUMMARY_QUERIES:
        print(title.format(cities=cities, customer=customer), file=out)
        print(pretty(client, sql, {"customer": customer} if "{customer:" in sql else None),
              file=out)


def print_derived(client, out) -> None:
    high = client.query("SELECT count() FROM churn_risk_current WHERE level = 'high'").result_rows[0][0]
    pending = client.query("SELECT count() FROM tier_pending_approvals").result_rows[0][0]
    print("What the processors derived\n", file=out)
    for title, sql in DERIVED_QUERIES:
        print(title.format(high_risk=high, pending=pending), file=out)
        print(pretty(client, sql), file=out)
