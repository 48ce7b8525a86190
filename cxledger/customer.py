"""``cxledger customer ID [--as-of T]``: one customer's timeline and state, folded from the ledger.

What: the customer's timeline (every ledger event and every derived event concerning them, in
order, with a one-line summary) and their state at ``as_of``: tier and any downgrade awaiting
approval, churn risk (level, score, reasons), open complaints with their pending SLA deadlines,
and the latest satisfaction scores.

Why this way: the ledger is the truth and everything else is a fold of it (domain.md, "The
ledger"). So nothing here reads the derived tables: the customer's ledger is folded through the
very folds the processors run (:class:`processors.ledger.PartitionFold`), which also answers
"how did it stand at T" for any T, and the derived events (ids included) are the ones the
processors derived (or a ``cxledger replay`` would).

As of T
    The state as it stood at T is the fold of the ledger cut at T (the partition's events with
    ``occurred_at <= T``, in ledger order), after which the partition clock is advanced to T so
    that every SLA deadline that passed before T has fired. A late event (published after T,
    stamped before it) is part of the cut: the answer is what the ledger *now* says about T.
    Without ``as_of`` everything is folded and the clock goes no further than event time:
    ``as_of`` in the report is then the partition clock, the latest ``occurred_at`` on the
    customer's ledger partition (what a replay of the whole ledger ends with; a live worker's
    idle-partition clock may have followed wall time further).
    A T before the customer's first event is not an error: the report holds the state of a
    customer with no events (``standard``, ``low``, nothing open, an empty timeline) and a note
    giving the first event's time. A customer with no ledger row at all raises
    :class:`CustomerNotFound`.

One customer, exactly, without folding the partition
    A partition's fold is what the live processors ran. Customers share nothing in it but the
    partition clock (event time: the highest ``occurred_at`` folded so far), which decides when
    deadlines fire relative to a customer's own events. Everything else is per customer:
    complaints, tier, churn and duplicate-detection state are keyed by customer; derived ids
    come from the customer's own inputs; the deadline heap fires in (deadline, customer,
    complaint, sla) order and a firing reads and writes only its own customer, so the
    subsequence of one customer's firings is the same whatever else is on the heap; and the
    window partials, the only other partition-level state, are fed but never read back into a
    customer. Hence folding only this customer's events, and before each of them moving the
    clock (``advance_clock``) to the highest ``occurred_at`` of the partition's events that
    precede it in ledger position, gives this customer exactly the firings, states and derived
    events of the whole-partition fold: the full fold's clock just before that event is that very
    maximum, every deadline below it has fired in both, in the same order, on the same customer
    state. At the end the clock goes to the partition's clock within the cut (then to T).
    ClickHouse computes the maxima with one window query over the partition (``max(occurred_at)
    OVER (ORDER BY kafka_offset ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)``).
    Where it shows: a customer's *late* event (stamped before the clock it finds) — an
    acknowledgement stamped before its deadline that arrives after other customers' events
    moved the clock past it meets nothing, the processors had breached and escalated — and the
    end of the cut (deadlines passed by other customers' later events). For an event stamped at
    or after the clock it finds, folding it moves the clock past the maximum anyway.

    What breaks it: the fold skips an event whose id it folded before (a redelivery, a
    republished file: ``PartitionFold.folded``) *before* moving the clock, so such a row must
    not count in the maximum. ``ledger_events FINAL`` collapses exact redeliveries, but two rows
    with the same customer and event id and a different ``occurred_at`` (a producer reusing an
    id for another event) both survive, and the fold skips the second. When the partition's cut
    holds any such pair the whole partition is folded instead (``method: "partition"`` in the
    report): exact, slower.

Several partitions
    A customer's events all sit on one partition (the ledger is keyed by customer). If they do
    not (the topic was repartitioned), each partition is folded on its own, as the processors
    did; the timeline merges them, the state is that of the partition holding the customer's
    latest event in the cut, and ``notes`` say so.

The report (:func:`customer_report`; :func:`render_table` for a terminal)
    ``customer_id``, ``as_of`` (+ ``as_of_source``: requested | partition_clock), ``tier``
    (+ ``tier_basis``, ``pending_downgrade``), ``churn_risk`` (``level``, ``score``,
    ``reasons`` as the fold holds them: scored at the customer's latest event or breach, as
    domain.md defines the score and as the last ``churn.risk_changed`` said; ``at_as_of`` adds
    what the signals still active at as_of would give, which the processors apply only at the
    customer's next event), ``open_complaints`` (with breaches and pending deadlines),
    ``last_satisfaction`` (newest first), ``timeline`` and bookkeeping (``rules_version``,
    ``partition``, ``method``, ``events``, ``notes``). Times are ISO-8601 UTC strings, money
    strings. The timeline holds the domain's events: the customer's ledger events and the
    derived ``satisfaction.scored``, ``complaint.sla_breached``, ``churn.risk_changed``,
    ``tier.change_proposed``, ``tier.changed`` and ``feedback.sla_breached`` (not the
    ``complaint.state_changed`` snapshots nor window and hall partials), ordered by occurred_at, then ledger position, a derived
    event after the event whose folding derived it.

The reads are SELECTs with server-side bound parameters only, so the client may be chDB on a
stopped store or HTTP to a running stack's read-only query endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo

import structlog

from processors import churn, complaints, incidents, satisfaction, tiers
from processors.complaints import SLA_RANK
from processors.ledger import PartitionFold
from processors.rules import Rules
from schemas.jsonform import iso_millis, to_json_form
from sinks.replay import record_from_payload

log = structlog.get_logger("cxledger.customer")

#: How many of the latest ``satisfaction.scored`` the report lists.
LAST_SATISFACTION = 5
#: Ids that identify what an event is about; a timeline entry carries those present.
TIMELINE_IDS = ("complaint_id", "contact_id", "survey_id", "subject_id", "proposal_id",
                "feedback_id", "visit_id", "hall_id")
_PAGE_ROWS = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class CustomerNotFound(LookupError):
    """The ledger of the store holds no event of the customer."""

    def __init__(self, customer_id: str, store: str):
        self.customer_id = customer_id
        self.store = store
        super().__init__(f"customer {customer_id!r} has no events in the ledger of {store}")


# -- as_of -------------------------------------------------------------------------------------

def as_of_millis(as_of: datetime | int | str) -> int:
    """Epoch milliseconds of an ``as_of``: epoch ms (an int, or digits), a datetime, or ISO-8601
    text (``2025-03-04T10:00:00+08:00``, ``...Z``). A time without an offset is taken as UTC
    (the CLI's ``--as-of`` documents it so); the report's ``as_of`` echoes what was used."""
    if isinstance(as_of, bool):
        raise ValueError(f"as_of must be a time, got {as_of!r}")
    if isinstance(as_of, int):
        return as_of
    if isinstance(as_of, str):
        return parse_as_of(as_of)
    if isinstance(as_of, datetime):
        if as_of.tzinfo is None or as_of.utcoffset() is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
        return (as_of - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"as_of must be a datetime, epoch milliseconds or ISO-8601, got {as_of!r}")


def parse_as_of(text: str) -> int:
    """``--as-of T``: ISO-8601 (with an offset; UTC if none) or epoch milliseconds -> epoch ms.
    Raises ValueError with the reason."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO-8601 (e.g. 2025-03-04T10:00:00+08:00) nor "
                         "epoch milliseconds") from None
    return as_of_millis(at)


# -- the fold (pure) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LedgerRow:
    """One ledger event of the customer as the fold takes it.

    ``clock_before``: the highest ``occurred_at`` of the partition's events before this one in
    ledger position (0 when it is the partition's first)."""

    position: int
    record: dict
    clock_before: int = 0


@dataclass(frozen=True)
class Step:
    """One timeline item in fold order: a ledger event or a derived event.

    ``position``: a ledger event's own position; a derived event's is that of the customer's
    ledger event whose folding derived it, None when the partition clock passing a deadline
    derived it (an SLA breach fired by other customers' events or by the advance to as_of, and
    the churn change it caused)."""

    seq: int
    partition: int
    position: int | None
    event: dict
    derived: bool


@dataclass
class CustomerFold:
    """What folding one customer's ledger on one partition gave."""

    customer_id: str
    partition: int
    fold: PartitionFold
    steps: list[Step] = field(default_factory=list)
    events: int = 0                 # ledger events of the customer folded
    last_event_at: int | None = None  # the customer's latest occurred_at folded
    scored_at: int | None = None    # time of the customer's last event or breach, fold order
    method: str = "customer"        # "customer" (clock trick) or "partition" (everything)
    partition_clock: int = 0        # the partition's clock within the cut (before as_of)

    def add(self, event: dict, derived: bool, position: int | None) -> None:
        self.steps.append(Step(len(self.steps), self.partition, position, event, derived))
        if not derived or event["event_type"] == complaints.SLA_BREACHED:
            self.scored_at = event["occurred_at"]
        if not derived:
            self.events += 1
            at = event["occurred_at"]
            if self.last_event_at is None or at > self.last_event_at:
                self.last_event_at = at


def fold_customer_ledger(customer_id: str, rows: Iterable[LedgerRow], rules: Rules, *,
                         partition: int, partition_clock: int,
                         as_of_ms: int | None = None) -> CustomerFold:
    """Fold only the customer's events (ledger order), each preceded by the partition clock
    it found (``clock_before``); then the clock goes to ``partition_clock`` (the partition's
    within the cut) and to ``as_of_ms``. Exact when no fold-duplicate is on the partition
    (see the module docstring)."""
    fold = PartitionFold(rules, partition)
    out = CustomerFold(customer_id, partition, fold)
    for row in rows:
        _advance(out, row.clock_before)
        out.add(row.record, False, row.position)
        for d in fold.apply(row.record):
            out.add(d, True, row.position)
    _advance_to_end(out, partition_clock, as_of_ms)
    return out


def fold_partition_ledger(customer_id: str, rows: Iterable[tuple[int, dict]], rules: Rules, *,
                          partition: int, as_of_ms: int | None = None) -> CustomerFold:
    """Fold every event of the partition (``(position, record)`` in ledger order) within the
    cut, keep what concerns the customer; then the clock goes to ``as_of_ms``. Exact, whatever
    the ledger."""
    fold = PartitionFold(rules, partition)
    out = CustomerFold(customer_id, partition, fold, method="partition")
    for position, record in rows:
        if as_of_ms is not None and record["occurred_at"] > as_of_ms:
            continue
        mine = record.get("customer_id") == customer_id
        if mine:
            out.add(record, False, position)
        for d in fold.apply(record):
            if d["customer_id"] == customer_id:
                out.add(d, True, position if mine else None)
    _advance_to_end(out, fold.clock, as_of_ms)
    return out


def _advance_to_end(out: CustomerFold, partition_clock: int, as_of_ms: int | None) -> None:
    """The clock goes to the partition's (within the cut), then to ``as_of_ms``."""
    _advance(out, partition_clock)
    out.partition_clock = out.fold.clock
    if as_of_ms is not None:
        _advance(out, as_of_ms)


def _advance(out: CustomerFold, clock: int) -> None:
    """Move the partition clock without an event: what fires is the customer's (no position)."""
    for d in out.fold.advance_clock(clock):
        if d["customer_id"] == out.customer_id:
            out.add(d, True, None)


# -- the report (pure) -------------------------------------------------------------------------

def build_report(customer_id: str, folds: list[CustomerFold], rules: Rules, *,
                 as_of_ms: int | None, first_event_at: int | None = None,
                 notes: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON document of the customer from the folds of their partition(s)."""
    notes = list(notes)
    current = _state_fold(folds)
    as_of = as_of_ms if as_of_ms is not None else current.partition_clock
    cust = current.fold.customers.get(customer_id)
    tier_state = cust["tier"] if cust is not None else tiers.new_state()
    churn_state = cust["churn"] if cust is not None else churn.new_state()
    steps = sorted((s for f in folds for s in f.steps),
                   key=lambda s: (s.event["occurred_at"], s.partition, s.seq))
    events = sum(f.events for f in folds)
    if events == 0 and first_event_at is not None:
        notes.append(f"no events of {customer_id} at or before {iso_millis(as_of)}; "
                     f"the first is at {iso_millis(first_event_at)}")
    scored = [s.event for s in steps if s.derived and s.event["event_type"] == satisfaction.SCORED]
    return {
        "customer_id": customer_id,
        "as_of": iso_millis(as_of),
        "as_of_source": "requested" if as_of_ms is not None else "partition_clock",
        "rules_version": rules.version,
        "business_timezone": rules.windows.business_timezone,
        "partition": current.partition,
        "partitions": sorted({f.partition for f in folds}),
        "partition_clock": _iso(current.partition_clock or None),
        "method": current.method,
        "first_event_at": _iso(first_event_at),
        "events": events,
        "derived_events": sum(1 for s in steps if s.derived),
        "tier": tier_state["tier"],
        "tier_basis": _money(tiers.basis(tier_state["periods"], rules.tiers.basis_periods)),
        "pending_downgrade": pending_downgrade(tier_state),
        "churn_risk": churn_risk(churn_state, tier_state["tier"], as_of, current.scored_at,
                                 rules),
        "open_complaints": open_complaints(cust["complaints"] if cust is not None else {}),
        "last_satisfaction": [satisfaction_entry(e) for e in reversed(scored[-LAST_SATISFACTION:])],
        "timeline": [timeline_entry(s) for s in steps],
        "notes": notes,
    }


def _state_fold(folds: list[CustomerFold]) -> CustomerFold:
    """The fold whose state is the customer's: the one holding their latest event (several
    partitions only after a repartitioning); without events, the first."""
    with_events = [f for f in folds if f.last_event_at is not None]
    if not with_events:
        return folds[0]
    return max(with_events, key=lambda f: (f.last_event_at, f.partition))


def pending_downgrade(tier_state: Mapping) -> dict | None:
    """The downgrade proposal awaiting a ``tier.change_decided``, if any."""
    p = tier_state["pending"]
    if p is None:
        return None
    return {"proposal_id": p["proposal_id"], "from_tier": p["from_tier"],
            "to_tier": p["to_tier"], "basis": _money(p["basis"]),
            "proposed_at": iso_millis(p["proposed_at"]), "period": p.get("period")}


def churn_risk(state: Mapping, tier: str, as_of: int, scored_at: int | None,
               rules: Rules) -> dict:
    """The customer's churn risk as the fold holds it (scored at their latest event or
    breach, as domain.md defines it, and as ``churn.risk_changed`` reported it), plus what the
    signals still active at ``as_of`` would give (expired signals lower it only at the
    customer's next event)."""
    score, level, reasons, next_check = churn.assess(state, as_of, tier, rules.churn)
    return {
        "level": state["level"],
        "score": state["score"],
        "reasons": list(state["reasons"]),
        "scored_at": _iso(scored_at),
        "at_as_of": {"level": level, "score": score, "reasons": list(reasons),
                     "next_expiry": None if next_check >= churn.NEVER else iso_millis(next_check)},
    }


def open_complaints(customer_complaints: Mapping[str, Mapping]) -> list[dict]:
    """Complaints not closed, with their escalation level, breaches and pending deadlines
    (soonest first), by filing time."""
    out = []
    for c in customer_complaints.values():
        if c["closed_at"] is not None or c["status"] == "closed":
            continue
        pending = sorted(((d, SLA_RANK[sla], sla, cycle) for sla, (d, cycle) in
                          c["pending"].items()))
        out.append({
            "complaint_id": c["complaint_id"],
            "status": c["status"],
            "level": c["level"],
            "category": c["category"],
            "severity": c["severity"],
            "channel": c["channel"],
            "city": c["city"],
            "filed_at": _iso(c["filed_at"]),
            "acknowledged_at": _iso(c["acknowledged_at"]),
            "resolved_at": _iso(c["resolved_at"]),
            "reopened_count": c["cycle"],
            "breaches": [{"sla": sla, "deadline": iso_millis(deadline),
                          "escalated_to_level": level}
                         for sla, _, deadline, level in c["breaches"]],
            "pending_deadlines": [{"sla": sla, "deadline": iso_millis(d), "cycle": cycle}
                                  for d, _, sla, cycle in pending],
            "anomalies": list(c["anomalies"]),
        })
    out.sort(key=lambda c: (c["filed_at"] or "", c["complaint_id"]))
    return out


def satisfaction_entry(scored: Mapping) -> dict:
    return {"survey_id": scored["survey_id"], "occurred_at": iso_millis(scored["occurred_at"]),
            "composite": scored["composite"], "weights_profile": scored["weights_profile"],
            "dimensions": {d: scored[d] for d in ("response_speed", "resolution_efficiency",
                                                  "attitude", "follow_up")},
            "nps": scored["nps"], "subject_id": scored.get("subject_id"),
            "tier": scored.get("tier")}


def timeline_entry(step: Step) -> dict:
    e = step.event
    entry = {
        "occurred_at": iso_millis(e["occurred_at"]),
        "event_type": e["event_type"],
        "source": "derived" if step.derived else "ledger",
        "event_id": e["event_id"],
        "partition": step.partition,
        "position": step.position,
        "channel": e.get("channel"),
        "city": e.get("city"),
    }
    for name in TIMELINE_IDS:
        if e.get(name) is not None:
            entry[name] = e[name]
    entry["summary"] = summarize(e)
    entry["event"] = _plain(to_json_form(e))
    return entry


# -- summaries ---------------------------------------------------------------------------------

def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:g}" if x == round(x, 2) else f"{x:.2f}"
    return str(x)


def _contact_summary(e: Mapping) -> str:
    parts = [f"{e.get('direction', 'inbound')} {e.get('category', '')}".strip(),
             f"handled by {e.get('handler')}"]
    if e.get("transfers"):
        parts.append(f"{e['transfers']} transfer{'s' if e['transfers'] != 1 else ''}")
    if e.get("resolved_first_contact"):
        parts.append("resolved at first contact")
    text = f"contact {e.get('contact_id')} ({', '.join(parts)})"
    if e.get("intent") and e["intent"] != "none":
        text += f", intent {e['intent']}"
    return text


def _breach_summary(e: Mapping) -> str:
    text = f"complaint {e['complaint_id']} breached {e['sla']}"  # at its deadline: occurred_at
    if e.get("escalated_to_level") is not None:
        text += f", escalated to level {e['escalated_to_level']}"
    return text


def _proposal_summary(e: Mapping) -> str:
    up = tiers.TIER_RANK[e["to_tier"]] > tiers.TIER_RANK[e["from_tier"]]
    text = (f"tier {'upgrade' if up else 'downgrade'} {e['from_tier']} -> {e['to_tier']} "
            f"proposed (basis {_money(e['basis'])})")
    return text + (", awaiting approval" if e.get("requires_approval") else "")


_SUMMARIES = {
    "contact.completed": _contact_summary,
    "complaint.filed": lambda e: (f"complaint {e['complaint_id']} filed ({e.get('category')}, "
                                  f"{e.get('severity')})"),
    "complaint.acknowledged": lambda e: f"complaint {e['complaint_id']} acknowledged",
    "complaint.escalated": lambda e: (f"complaint {e['complaint_id']} escalated to level "
                                      f"{e.get('level')} ({e.get('reason') or 'manual'})"),
    "complaint.resolved": lambda e: (f"complaint {e['complaint_id']} resolved "
                                     f"({e.get('resolution')})"),
    "complaint.feedback_delivered": lambda e: (f"complaint {e['complaint_id']}: result told to "
                                               "the customer"),
    "complaint.followed_up": lambda e: (f"complaint {e['complaint_id']} followed up: "
                                        f"{e.get('outcome')}"),
    "complaint.closed": lambda e: f"complaint {e['complaint_id']} closed",
    "complaint.reopened": lambda e: f"complaint {e['complaint_id']} reopened",
    "survey.responded": lambda e: f"survey {e['survey_id']} answered (nps {_num(e.get('nps'))})",
    "billing.period_closed": lambda e: (f"billing period {e['period']} closed: spend "
                                        f"{_money(e['spend'])} ({e.get('plan_code')})"),
    "plan.changed": lambda e: (f"plan {e.get('from_plan')} -> {e.get('to_plan')} "
                               f"({e.get('direction')})"),
    "account.port_out_requested": lambda e: ("port-out requested"
                                             + (f" ({e['reason']})" if e.get("reason") else "")),
    "account.cancellation_requested": lambda e: ("cancellation requested"
                                                 + (f" ({e['reason']})" if e.get("reason")
                                                    else "")),
    "tier.change_decided": lambda e: (f"tier change {e['decision']}"
                                      + (f" (proposal {e['proposal_id']})"
                                         if e.get("proposal_id") else "")),
    "satisfaction.scored": lambda e: (f"survey {e['survey_id']} scored {_num(e['composite'])} "
                                      f"({e['weights_profile']} weights), nps "
                                      f"{_num(e.get('nps'))}"),
    "complaint.sla_breached": _breach_summary,
    "hall.visit_completed": lambda e: (f"hall visit {e.get('visit_id')} at {e.get('hall_id')} "
                                       f"({e.get('business_type')}, served at "
                                       f"{e.get('served_at')}, waited {e.get('wait_seconds')} s"
                                       + ("" if e.get("resolved_on_site") else
                                          ", not settled on site") + ")"),
    "hall.survey_responded": lambda e: (f"SMS survey {e['survey_id']} on {e.get('hall_id')}: "
                                        + (" / ".join(_num(e.get(i)) for i in (
                                            "overall", "environment", "waiting", "handling",
                                            "staff_attitude")) if e.get("valid")
                                           else "blank or garbled (not valid)")),
    "feedback.received": lambda e: f"feedback {e['feedback_id']} received",
    "feedback.handled": lambda e: f"feedback {e['feedback_id']} handled",
    "feedback.result_reported": lambda e: f"feedback {e['feedback_id']}: result reported",
    "feedback.sla_breached": lambda e: (f"feedback {e['feedback_id']} breached "
                                        f"{'handling (24 h)' if e['sla'] == 'handled' else 'result (72 h)'}"),
    "churn.risk_changed": lambda e: (f"churn risk {e['previous_level']} -> {e['level']} "
                                     f"({', '.join(e['reasons']) or 'no signal'}), score "
                                     f"{_num(e['score'])}"),
    "tier.change_proposed": _proposal_summary,
    "tier.changed": lambda e: f"tier {e['from_tier']} -> {e['to_tier']}",
}


def summarize(event: Mapping) -> str:
    """One line a person reads: what happened, with the ids and numbers that matter."""
    describe = _SUMMARIES.get(event["event_type"])
    return describe(event) if describe is not None else event["event_type"]


# -- reading the store (SELECTs only) ----------------------------------------------------------

def _cut(as_of_ms: int | None) -> str:
    """The cut as a WHERE fragment (its value is bound by :func:`_params`, never formatted in)."""
    return ("" if as_of_ms is None else
            " AND occurred_at <= fromUnixTimestamp64Milli({cut:Int64}, 'UTC')")


def _params(as_of_ms: int | None, **params: Any) -> dict[str, Any]:
    return params if as_of_ms is None else {**params, "cut": as_of_ms}


def customer_partitions(client, customer_id: str) -> list[tuple[int, int, int]]:
    """(partition, events, first occurred_at ms) of the customer's ledger rows, whole ledger."""
    return [tuple(r) for r in client.query(
        "SELECT kafka_partition, count(), min(toUnixTimestamp64Milli(occurred_at)) "
        "FROM ledger_events FINAL WHERE customer_id = {customer:String} "
        "GROUP BY kafka_partition ORDER BY kafka_partition",
        parameters={"customer": customer_id}).result_rows]


def partition_cut(client, partition: int, as_of_ms: int | None) -> tuple[int, int, int]:
    """(events, distinct (customer, event id), clock) of a partition's ledger within the cut."""
    rows = client.query(
        "SELECT count(), uniqExact(customer_id, event_id), "
        "max(toUnixTimestamp64Milli(occurred_at)) FROM ledger_events FINAL "
        "WHERE kafka_partition = {partition:UInt16}" + _cut(as_of_ms),
        parameters=_params(as_of_ms, partition=partition)).result_rows
    events, distinct, clock = rows[0]
    return int(events), int(distinct), (int(clock or 0) if events else 0)


def customer_ledger(client, customer_id: str, partition: int,
                    as_of_ms: int | None) -> list[LedgerRow]:
    """The customer's events on a partition within the cut, in ledger order, each with the
    highest occurred_at of the partition's events before it (one window query)."""
    cut = _cut(as_of_ms)
    sql = (
        "SELECT c.kafka_offset, toUnixTimestamp64Milli(c.occurred_at), c.payload, w.clock_before "
        "FROM (SELECT kafka_offset, occurred_at, payload FROM ledger_events FINAL "
        "      WHERE customer_id = {customer:String} AND kafka_partition = {partition:UInt16}"
        + cut + ") AS c "
        "INNER JOIN (SELECT kafka_offset, clock_before FROM ("
        "      SELECT customer_id, kafka_offset, max(toUnixTimestamp64Milli(occurred_at)) OVER "
        "        (ORDER BY kafka_offset ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) "
        "        AS clock_before "
        "      FROM ledger_events FINAL WHERE kafka_partition = {partition:UInt16}" + cut + ") "
        "    WHERE customer_id = {customer:String}) AS w ON c.kafka_offset = w.kafka_offset "
        "ORDER BY c.kafka_offset")
    rows = client.query(sql, parameters=_params(as_of_ms, customer=customer_id,
                                                partition=partition)).result_rows
    return [LedgerRow(int(offset), record_from_payload(payload, ms), int(clock_before or 0))
            for offset, ms, payload, clock_before in rows]


def partition_ledger(client, partition: int, as_of_ms: int | None
                     ) -> Iterable[tuple[int, dict]]:
    """Every event of a partition within the cut, (position, record) in ledger order, paged."""
    after = -1
    while True:
        rows = client.query(
            "SELECT kafka_offset, toUnixTimestamp64Milli(occurred_at), payload "
            "FROM ledger_events FINAL WHERE kafka_partition = {partition:UInt16} "
            "AND kafka_offset > {after:Int64}" + _cut(as_of_ms)
            + " ORDER BY kafka_offset LIMIT {n:UInt32}",
            parameters=_params(as_of_ms, partition=partition, after=after,
                               n=_PAGE_ROWS)).result_rows
        if not rows:
            return
        after = rows[-1][0]
        for offset, ms, payload in rows:
            yield int(offset), record_from_payload(payload, ms)


def store_name(client) -> str:
    """How to name the store in a message: the chDB directory or the server's URL."""
    path = getattr(client, "path", None)
    if path:
        return f"chdb://{path}"
    return str(getattr(client, "url", None) or "the store")


# -- the entry point ---------------------------------------------------------------------------

def fold_customer(client, rules: Rules, customer_id: str, partition: int,
                  as_of_ms: int | None) -> CustomerFold:
    """The customer's fold on one partition: the clock trick, or the whole partition when a
    fold-duplicate (same customer and event id, another time) is in the cut."""
    events, distinct, clock = partition_cut(client, partition, as_of_ms)
    if events != distinct:
        log.info("repeated event ids on the partition: folding all of it", partition=partition,
                 events=events, repeated=events - distinct)
        return fold_partition_ledger(customer_id, partition_ledger(client, partition, as_of_ms),
                                     rules, partition=partition, as_of_ms=as_of_ms)
    rows = customer_ledger(client, customer_id, partition, as_of_ms)
    return fold_customer_ledger(customer_id, rows, rules, partition=partition,
                                partition_clock=clock, as_of_ms=as_of_ms)


def customer_report(client, rules: Rules, customer_id: str,
                    as_of: datetime | int | str | None = None, *,
                    store: str | None = None) -> dict[str, Any]:
    """The customer's timeline and state at ``as_of`` (None: at the partition clock), folded
    from the ledger. JSON-serialisable. Raises :class:`CustomerNotFound` for a customer with no
    ledger event (``store`` names the store in the message)."""
    started = time.perf_counter()
    as_of_ms = as_of_millis(as_of) if as_of is not None else None
    if not customer_id:  # operational events (no customer) have customer_id '' in the ledger
        raise CustomerNotFound(customer_id, store or store_name(client))
    partitions = customer_partitions(client, customer_id)
    if not partitions:
        raise CustomerNotFound(customer_id, store or store_name(client))
    folds = [fold_customer(client, rules, customer_id, p, as_of_ms) for p, _, _ in partitions]
    notes = []
    if len(partitions) > 1:
        state = _state_fold(folds)
        notes.append(f"{customer_id} has ledger events on partitions "
                     f"{', '.join(str(p) for p, _, _ in partitions)} (the topic was "
                     f"repartitioned?); each partition is folded on its own, as the processors "
                     f"did, and the state is partition {state.partition}'s, which holds the "
                     f"latest event")
    report = build_report(customer_id, folds, rules, as_of_ms=as_of_ms,
                          first_event_at=min(first for _, _, first in partitions), notes=notes)
    tag_incidents(report, folds, incidents_in(client, as_of_ms))
    log.debug("customer report", customer_id=customer_id, partitions=report["partitions"],
              method=report["method"], events=report["events"],
              seconds=round(time.perf_counter() - started, 4))
    return report


def incidents_in(client, as_of_ms: int | None) -> list[incidents.Incident]:
    """The incidents of the ledger within the cut (a resolution after as_of is not known yet)."""
    rows = client.query(
        "SELECT toUnixTimestamp64Milli(occurred_at), payload FROM ledger_events FINAL "
        "WHERE event_type IN ('incident.detected', 'incident.resolved')" + _cut(as_of_ms),
        parameters=_params(as_of_ms)).result_rows
    return list(incidents.incidents_from(record_from_payload(p, ms) for ms, p in rows).values())


def tag_incidents(report: dict[str, Any], folds: list[CustomerFold],
                  known: list[incidents.Incident]) -> None:
    """``incident_ids`` on the timeline's contacts and complaints filed during an open incident
    of their city (processors.incidents)."""
    if not known:
        return
    for entry, step in zip(report["timeline"], sorted(
            (s for f in folds for s in f.steps),
            key=lambda s: (s.event["occurred_at"], s.partition, s.seq))):
        ids = incidents.tags(step.event, known)
        if ids:
            entry["incident_ids"] = ids
            entry["summary"] += f" [incident {', '.join(ids)}]"


# -- the table ---------------------------------------------------------------------------------

def render_table(report: Mapping[str, Any]) -> str:
    """The report for a terminal: state first, then the timeline (times in the business time
    zone)."""
    tz = ZoneInfo(report.get("business_timezone") or "UTC")
    t = lambda iso: _local(iso, tz)  # noqa: E731
    source = ("requested" if report["as_of_source"] == "requested"
              else "the partition clock: latest event time on the partition")
    lines = [f"customer {report['customer_id']} as of {t(report['as_of'])} ({source})",
             f"rules {report['rules_version']}, partition {report['partition']}, "
             f"{report['events']} ledger events, {report['derived_events']} derived, "
             f"times in {tz.key}"]
    lines += [f"note: {n}" for n in report.get("notes", ())]
    basis = f" (basis {report['tier_basis']})" if report.get("tier_basis") else ""
    lines.append(f"tier:        {report['tier']}{basis}")
    p = report.get("pending_downgrade")
    if p:
        lines.append(f"             downgrade {p['from_tier']} -> {p['to_tier']} awaiting approval "
                     f"(basis {p['basis']}, proposed {t(p['proposed_at'])}, proposal "
                     f"{p['proposal_id']})")
    risk = report["churn_risk"]
    reasons = ", ".join(risk["reasons"]) or "no signal"
    lines.append(f"churn risk:  {risk['level']}, score {_num(risk['score'])} ({reasons})"
                 + (f", scored {t(risk['scored_at'])}" if risk.get("scored_at") else ""))
    now = risk.get("at_as_of")
    if now and (now["level"], now["score"]) != (risk["level"], risk["score"]):
        lines.append(f"             signals active at as-of: {now['level']}, score "
                     f"{_num(now['score'])} ({', '.join(now['reasons']) or 'none'}); "
                     "applies at the next event")
    lines.append("")
    opened = report["open_complaints"]
    lines.append(f"open complaints: {len(opened)}")
    if opened:
        rows = [[c["complaint_id"], c["status"], str(c["level"]), c["category"] or "-",
                 c["severity"] or "-", t(c["filed_at"]),
                 ", ".join(b["sla"] for b in c["breaches"]) or "-",
                 "; ".join(f"{d['sla']} {t(d['deadline'])}" for d in c["pending_deadlines"])
                 or "-"] for c in opened]
        lines += _columns(["complaint", "status", "level", "category", "severity", "filed",
                           "breached", "pending deadlines"], rows)
    lines.append("")
    scores = report.get("last_satisfaction") or []
    lines.append(f"last satisfaction scores: {len(scores)}")
    if scores:
        rows = [[s["survey_id"], t(s["occurred_at"]), _num(s["composite"]),
                 " / ".join(_num(v) for v in s["dimensions"].values()), _num(s["nps"])]
                for s in scores]
        lines += _columns(["survey", "at", "composite", "speed / resolution / attitude / "
                           "follow-up", "nps"], rows)
    lines.append("")
    timeline = report["timeline"]
    lines.append(f"timeline: {len(timeline)} entries")
    if timeline:
        rows = [[t(e["occurred_at"]), ("  " if e["source"] == "derived" else "") + e["event_type"],
                 e.get("channel") or "-", e.get("city") or "-", e["summary"]] for e in timeline]
        lines += _columns(["time", "event (derived indented)", "channel", "city", "summary"],
                          rows)
    return "\n".join(lines)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    fmt = lambda r: "  " + "  ".join(  # noqa: E731
        [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip()
    return [fmt(header)] + [fmt(r) for r in rows]


def _local(iso: str | None, tz: ZoneInfo) -> str:
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso).astimezone(tz)
    text = at.strftime("%Y-%m-%d %H:%M:%S")
    return text + (f".{at.microsecond // 1000:03d}" if at.microsecond else "")


# -- plain data --------------------------------------------------------------------------------

def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_millis(ms)


def _money(amount: Decimal | str | None) -> str | None:
    if amount is None:
        return None
    return f"{Decimal(str(amount)):.2f}"


def _plain(value: Any) -> Any:
    """JSON-ready copy: Decimals as str, tuples as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    return value

