"""Record-form events for the processor tests (epoch-ms times, Decimal spend, None optionals).

Builders take explicit times so expectations can be computed by hand; ``event_stream``
makes a realistic, reproducible mix (mostly contacts and surveys, complaint lifecycles,
billing, plan changes) from a seed, for the property tests and the throughput measurement.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# 2025-03-03 00:00 Asia/Shanghai (= 2025-03-02T16:00Z), a Monday.
T0 = 1_740_931_200_000

CITIES = ("beijing", "shanghai", "shenzhen", "hangzhou", "guangzhou", "urumqi", "lanzhou",
          "hohhot")
CHANNELS = ("phone", "ivr", "online_chat", "email", "app", "wechat", "service_hall",
            "ai_assistant")

_ids = iter(range(1, 1 << 62))
# About 55% promoters (9-10), 30% passives, 15% detractors (0-6).
_NPS_WEIGHTS = (1, 1, 1, 1, 1, 2, 8, 12, 18, 25, 30)


def _uuid(rng: random.Random | None = None) -> str:
    if rng is None:
        return str(uuid.UUID(int=next(_ids), version=4))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def record(event_type: str, at: int, customer_id: str = "c-000042", *, channel: str = "phone",
           city: str = "lanzhou", agent_id: str | None = "a-17",
           correlation_id: str | None = None, event_id: str | None = None, **fields) -> dict:
    event = {
        "event_id": event_id or _uuid(),
        "event_type": event_type,
        "occurred_at": at,
        "customer_id": customer_id,
        "channel": channel,
        "city": city,
        "agent_id": agent_id,
        "correlation_id": correlation_id,
    }
    event.update(fields)
    return event


def contact(at: int, customer_id: str = "c-000042", **kw) -> dict:
    fields = dict(contact_id=f"k-{next(_ids)}", direction="inbound", category="billing",
                  handler="agent", wait_seconds=95, first_response_seconds=120,
                  handle_seconds=410, transfers=0, resolved_first_contact=False, intent="none")
    fields.update(kw)
    return record("contact.completed", at, customer_id, **fields)


def survey(at: int, customer_id: str = "c-000042", **kw) -> dict:
    fields = dict(survey_id=f"s-{next(_ids)}", subject_id=None, response_speed=89.2,
                  resolution_efficiency=85.7, attitude=90.5, follow_up=82.4, nps=9)
    fields.update(kw)
    return record("survey.responded", at, customer_id, **fields)


def filed(at: int, complaint_id: str, customer_id: str = "c-000042", *, category: str = "billing",
          severity: str = "normal", **kw) -> dict:
    return record("complaint.filed", at, customer_id, complaint_id=complaint_id,
                  category=category, severity=severity, correlation_id=complaint_id, **kw)


def complaint_event(event_type: str, at: int, complaint_id: str,
                    customer_id: str = "c-000042", **kw) -> dict:
    """complaint.acknowledged / resolved / feedback_delivered / followed_up / closed /
    reopened / escalated, with the type's required fields defaulted."""
    defaults = {
        "complaint.resolved": {"resolution": "fixed"},
        "complaint.followed_up": {"outcome": "satisfied"},
        "complaint.escalated": {"level": 1, "reason": "manual"},
    }.get(event_type, {})
    return record(event_type, at, customer_id, complaint_id=complaint_id,
                  correlation_id=complaint_id, **{**defaults, **kw})


def billing(at: int, period: str, spend: str | Decimal, customer_id: str = "c-000042",
            **kw) -> dict:
    kw.setdefault("channel", "app")
    return record("billing.period_closed", at, customer_id, period=period,
                  spend=Decimal(spend).quantize(Decimal("0.01")), plan_code="5g-199", **kw)


def decision(at: int, decision_: str, proposal_id: str | None = None,
             customer_id: str = "c-000042") -> dict:
    return record("tier.change_decided", at, customer_id, decision=decision_,
                  proposal_id=proposal_id, channel="web")


def plan_changed(at: int, direction: str, customer_id: str = "c-000042") -> dict:
    return record("plan.changed", at, customer_id, from_plan="5g-199", to_plan="5g-99",
                  direction=direction, channel="app")


def port_out(at: int, customer_id: str = "c-000042") -> dict:
    return record("account.port_out_requested", at, customer_id, reason=None)


def cancellation(at: int, customer_id: str = "c-000042") -> dict:
    return record("account.cancellation_requested", at, customer_id, reason="price")


# -- a realistic reproducible stream ------------------------------------------------------------

def event_stream(seed: int, n: int, *, customers: int = 200, start: int = T0,
                 mean_gap_ms: int = 20_000, skew_ms: int = 0) -> list[dict]:
    """``n`` events of ``customers`` customers in partition order.

    Mix: ~60% contacts, ~26% surveys, ~7% complaint lifecycle events (a fifth of them new
    filings, so about 2 complaints per 100 contacts), ~4% billing periods, the rest plan
    changes, port-out/cancellation requests and tier decisions. Time advances by a random
    gap; with ``skew_ms`` an event may be stamped up to that much earlier than the
    partition's latest (late producers), while each customer's own events stay in order.
    """
    rng = random.Random(seed)
    now = start
    last_at: dict[str, int] = {}
    open_complaints: list[list] = []  # [customer_id, complaint_id, stage_index]
    periods: dict[str, int] = {}
    stages = ("complaint.acknowledged", "complaint.resolved", "complaint.feedback_delivered",
              "complaint.followed_up", "complaint.closed")
    out = []
    for _ in range(n):
        now += rng.randint(0, 2 * mean_gap_ms)
        r = rng.random()
        item = None
        if 0.86 <= r < 0.93 and open_complaints and rng.random() < 0.8:
            item = rng.choice(open_complaints)
            cid = item[0]
        else:
            cid = f"c-{rng.randrange(customers):06d}"
        at = now - (rng.randint(0, skew_ms) if skew_ms else 0)
        at = max(at, last_at.get(cid, 0))
        last_at[cid] = at
        common = dict(customer_id=cid, channel=rng.choice(CHANNELS), city=rng.choice(CITIES),
                      agent_id=f"a-{rng.randrange(50)}", event_id=_uuid(rng))
        if r < 0.60:
            intent = rng.choices(("none", "port_out", "cancel", "downgrade", "upgrade"),
                                 (0.97, 0.006, 0.006, 0.01, 0.008))[0]
            out.append(record(
                "contact.completed", at, contact_id=f"k-{rng.getrandbits(40):x}",
                direction=rng.choice(("inbound", "inbound", "outbound")),
                category=rng.choice(("inquiry", "complaint", "service_request", "billing",
                                     "technical", "sales", "retention", "other")),
                handler=rng.choices(("ai", "agent", "part_time_agent"), (0.35, 0.55, 0.1))[0],
                wait_seconds=rng.randint(0, 600), first_response_seconds=rng.randint(1, 9000),
                handle_seconds=rng.randint(10, 3000),
                transfers=rng.choices((0, 1, 2, 3, 4), (0.7, 0.15, 0.08, 0.05, 0.02))[0],
                resolved_first_contact=rng.random() < 0.7, intent=intent, **common))
        elif r < 0.86:
            def dim():  # March 2025: national means 82-91, a long tail of unhappy answers
                if rng.random() < 0.05:
                    return None
                return round(min(100.0, max(0.0, rng.gauss(87.0, 9.0))), 1)
            out.append(record(
                "survey.responded", at, survey_id=f"s-{rng.getrandbits(40):x}",
                subject_id=None if rng.random() < 0.3 else f"k-{rng.getrandbits(40):x}",
                response_speed=dim(), resolution_efficiency=dim(), attitude=dim(),
                follow_up=dim(),
                nps=None if rng.random() < 0.1 else rng.choices(range(11), _NPS_WEIGHTS)[0],
                **common))
        elif r < 0.93:
            if item is None:
                comp_id = f"q-{rng.getrandbits(40):x}"
                open_complaints.append([cid, comp_id, 0])
                out.append(record(
                    "complaint.filed", at, complaint_id=comp_id,
                    category=rng.choice(("billing", "network", "logistics", "service_attitude",
                                         "product", "dialect_misunderstanding", "other")),
                    severity=rng.choices(("normal", "urgent", "complex"), (0.7, 0.2, 0.1))[0],
                    **common))
            else:
                _, comp_id, stage = item
                if stage >= 2 and rng.random() < 0.08:
                    etype, item[2] = "complaint.reopened", 1
                elif rng.random() < 0.05:
                    etype = "complaint.escalated"
                else:
                    etype = stages[stage]
                    item[2] += 1
                    if item[2] >= len(stages):
                        open_complaints.remove(item)
                extra = {}
                if etype == "complaint.resolved":
                    extra["resolution"] = rng.choice(("fixed", "compensated", "explained",
                                                      "rejected"))
                elif etype == "complaint.followed_up":
                    extra["outcome"] = rng.choice(("satisfied", "satisfied", "unsatisfied",
                                                   "unreachable"))
                elif etype == "complaint.escalated":
                    extra = {"level": rng.randint(1, 3), "reason": "manual"}
                out.append(record(etype, at, complaint_id=comp_id, **extra, **common))
        elif r < 0.97:
            k = periods.get(cid, 0)
            periods[cid] = k + 1
            if k > 0 and rng.random() < 0.1:
                k -= 1  # the same period closed again (a correction)
            period = f"{2024 + k // 12}-{k % 12 + 1:02d}"
            spend = Decimal(rng.choice((80, 250, 450, 900, 1200, 2800, 3500, 5000))
                            + rng.randint(0, 99)) + Decimal(rng.randint(0, 99)) / 100
            out.append(record("billing.period_closed", at, period=period, spend=spend,
                              plan_code="5g-199", **common))
        elif r < 0.985:
            out.append(record("plan.changed", at, from_plan="a", to_plan="b",
                              direction=rng.choice(("upgrade", "downgrade", "lateral")),
                              **common))
        elif r < 0.99:
            out.append(record(rng.choice(("account.port_out_requested",
                                          "account.cancellation_requested")),
                              at, reason=None, **common))
        else:
            out.append(record("tier.change_decided", at,
                              decision=rng.choice(("approved", "rejected")), proposal_id=None,
                              **common))
    return out


def rules_with(overrides: dict | None = None, version: str | None = None):
    """The shipped rules with some keys replaced: ``{"tiers.downgrades_require_approval": False}``."""
    import copy
    import tomllib

    from processors.rules import DEFAULT_RULES_PATH, rules_from_dict

    with open(DEFAULT_RULES_PATH, "rb") as fh:
        data = tomllib.load(fh)
    data = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    if version is not None:
        data["version"] = version
    return rules_from_dict(data)


_DELETE = object()
DELETE = _DELETE


def fold_events(*events, rules=None):
    """Fold ``events`` in order on one fresh partition: (the fold, the derived events)."""
    from processors.ledger import PartitionFold

    fold = PartitionFold(rules, partition=0)
    out = []
    for e in events:
        out += fold.apply(e)
    return fold, out


def fold_simulated(n: int, seed: int, partitions: int) -> list[dict]:
    """The derived events of ``n`` simulated events (the simulator's JSON form, validated)
    folded in one batch over ``partitions`` ledger partitions, keyed as the SDK keys them."""
    import zlib
    from collections import defaultdict

    from processors.batch import PartitionFolds
    from processors.rules import load_rules
    from producers.simulator import simulate
    from schemas.validation import normalize_event, partition_key

    batch = defaultdict(list)
    for event in simulate(n, seed=seed):
        record_ = normalize_event(event)
        batch[zlib.crc32(partition_key(record_).encode()) % partitions].append(record_)
    return PartitionFolds(load_rules()).fold_batch(batch)
