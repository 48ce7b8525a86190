"""The derived sink: the processors' topics -> their ClickHouse tables.

``DERIVED_TABLES`` is the one mapping from a derived event type to a table and its columns;
the live sink and ``cxledger replay`` both write through it, so their tables can be compared
row for row.

On a stack with a seal key (``cxledger up`` makes one), the workers seal what they send and
the sink hands the ``satisfaction.windows_updated`` messages, the window partials a worker
drained (most of the derived rows), to ClickHouse undecoded: ClickHouse reads their Avro into
``WINDOWS_INLET`` (a Null table, migration 7), whose materialized view writes each partial as
the row this module's mapping would, without the GIL (the README's "Measured" has the
figures).
"""

from __future__ import annotations

from typing import Any, Iterable

from clickhouse_connect.driver.client import Client

from cxledger.config import Settings
from processors.window_batches import WINDOWS_UPDATED, unpack_window_partials
from schemas.codec import WireCodec
from schemas.seal import sealer_of
from sinks.kafka_sink import AvroInlet, ClickHouseSink

# event type -> (table, ((column, record field), ...))
_ENVELOPE = (("customer_id", "customer_id"), ("city", "city"))
DERIVED_TABLES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "satisfaction.scored": ("satisfaction_scores", (
        ("event_id", "event_id"), ("survey_id", "survey_id"), ("subject_id", "subject_id"),
        *_ENVELOPE, ("channel", "channel"), ("tier", "tier"), ("occurred_at", "occurred_at"),
        ("composite", "composite"), ("response_speed", "response_speed"),
        ("resolution_efficiency", "resolution_efficiency"), ("attitude", "attitude"),
        ("follow_up", "follow_up"), ("nps", "nps"), ("weights_profile", "weights_profile"),
        ("rules_version", "rules_version"))),
    "satisfaction.window_updated": ("satisfaction_window_partials", tuple((c, c) for c in (
        "window", "window_start", "city", "channel", "tier", "source_partition", "version",
        "surveys", "composite_sum", "composite_count", "response_speed_sum",
        "response_speed_count", "resolution_efficiency_sum", "resolution_efficiency_count",
        "attitude_sum", "attitude_count", "follow_up_sum", "follow_up_count", "nps_responses",
        "promoters", "detractors", "contacts", "fcr_contacts", "ai_contacts", "transfers_sum",
        "first_response_count", "first_response_sum", "first_response_buckets", "complaints",
        "rules_version", "service_requests", "service_requests_met"))),
    "complaint.sla_breached": ("complaint_sla_breaches", (
        ("event_id", "event_id"), ("complaint_id", "complaint_id"), *_ENVELOPE,
        ("channel", "channel"), ("sla", "sla"), ("deadline", "deadline"),
        ("escalated_to_level", "escalated_to_level"), ("severity", "severity"),
        ("category", "category"), ("occurred_at", "occurred_at"),
        ("rules_version", "rules_version"))),
    "complaint.state_changed": ("complaint_state", (
        ("complaint_id", "complaint_id"), *_ENVELOPE, ("channel", "channel"),
        ("category", "category"), ("severity", "severity"), ("status", "status"),
        ("level", "level"), ("filed_at", "filed_at"), ("acknowledged_at", "acknowledged_at"),
        ("resolved_at", "resolved_at"), ("feedback_at", "feedback_at"),
        ("followed_up_at", "followed_up_at"), ("closed_at", "closed_at"),
        ("reopened_count", "reopened_count"), ("next_deadline", "next_deadline"),
        ("next_sla", "next_sla"), ("breaches", "breaches"), ("anomalies", "anomalies"),
        ("updated_at", "occurred_at"), ("version", "version"),
        ("rules_version", "rules_version"))),
    "churn.risk_changed": ("churn_risk_changes", (
        ("event_id", "event_id"), *_ENVELOPE, ("tier", "tier"), ("score", "score"),
        ("level", "level"), ("previous_level", "previous_level"), ("reasons", "reasons"),
        ("occurred_at", "occurred_at"), ("rules_version", "rules_version"))),
    "tier.change_proposed": ("tier_proposals", (
        ("event_id", "event_id"), ("proposal_id", "proposal_id"), *_ENVELOPE,
        ("from_tier", "from_tier"), ("to_tier", "to_tier"), ("basis", "basis"),
        ("requires_approval", "requires_approval"), ("occurred_at", "occurred_at"),
        ("rules_version", "rules_version"))),
    "tier.changed": ("tier_changes", (
        ("event_id", "event_id"), ("proposal_id", "proposal_id"), *_ENVELOPE,
        ("from_tier", "from_tier"), ("to_tier", "to_tier"), ("occurred_at", "occurred_at"),
        ("rules_version", "rules_version"))),
    # migration 2: service halls and feedback
    "feedback.sla_breached": ("feedback_sla_breaches", (
        ("event_id", "event_id"), ("feedback_id", "feedback_id"), *_ENVELOPE,
        ("channel", "channel"), ("sla", "sla"), ("deadline", "deadline"),
        ("received_at", "received_at"), ("occurred_at", "occurred_at"),
        ("rules_version", "rules_version"))),
    "hall.survey_month_updated": ("hall_survey_month_partials", tuple((c, c) for c in (
        "hall_id", "city", "month", "month_start", "source_partition", "version", "closed",
        "replies", "valid_replies", "score_sum", "overall_sum", "overall_count",
        "environment_sum", "environment_count", "waiting_sum", "waiting_count", "handling_sum",
        "handling_count", "staff_attitude_sum", "staff_attitude_count", "rules_version"))),
    "hall.survey_month_closed": ("hall_survey_month_closes", tuple((c, c) for c in (
        "event_id", "source_partition", "month", "month_end", "hall_ids", "hall_cities",
        "replies", "valid_replies", "score_sums", "rules_version"))),
    "hall.key_improvement_flagged": ("hall_key_improvement_flags", tuple((c, c) for c in (
        "event_id", "hall_id", "city", "months", "values", "valid_replies", "target",
        "occurred_at", "rules_version"))),
    "hall.key_improvement_cleared": ("hall_key_improvement_clears", tuple((c, c) for c in (
        "event_id", "hall_id", "city", "month", "value", "valid_replies", "target",
        "flagged_months", "occurred_at", "rules_version"))),
}
_PLANS = {t: (table, tuple(c for c, _ in cols), tuple(f for _, f in cols))
          for t, (table, cols) in DERIVED_TABLES.items()}
DERIVED_GROUP = "cxledger-derived-sink"
#: The Null table ClickHouse decodes the worker's sealed window-partial messages into.
WINDOWS_INLET = AvroInlet("satisfaction_windows_updated_in", "satisfaction_window_partials",
                          rows_in="partials")


def derived_row(record: dict[str, Any]) -> tuple[str, tuple[str, ...], list[Any]] | None:
    """(table, columns, row) for a derived record; None for a type without a table."""
    plan = _PLANS.get(record["event_type"])
    if plan is None:
        return None
    table, columns, fields = plan
    return table, columns, [record[f] for f in fields]


_WINDOW_PLAN = _PLANS["satisfaction.window_updated"]


def map_derived(record: dict[str, Any], schema_id: int, partition: int,
                position: int) -> Iterable[tuple[str, tuple[str, ...], list[Any]]]:
    if record["event_type"] == WINDOWS_UPDATED:  # the worker's batch of window partials
        table, columns, fields = _WINDOW_PLAN
        for partial in unpack_window_partials(record):
            yield table, columns, [partial[f] for f in fields]
        return
    row = derived_row(record)
    if row is not None:
        yield row


def derived_sink(settings: Settings, client: Client, codec: WireCodec | None = None,
                 **kwargs: Any) -> ClickHouseSink:
    """The derived sink; it gathers a batch for ``settings.sink_derived_batch_seconds`` (its
    rows are few and are what dashboards show live), not the ledger sink's ``batch_seconds``."""
    topics = list(dict.fromkeys(settings.topics.derived.values()))
    kwargs.setdefault("batch_seconds", settings.sink_derived_batch_seconds)
    kwargs.setdefault("sealer", sealer_of(settings.seal_key))
    kwargs.setdefault("inlets", {WINDOWS_UPDATED: WINDOWS_INLET})
    return ClickHouseSink(settings, client, topics, DERIVED_GROUP, map_derived, codec=codec,
                          **kwargs)
