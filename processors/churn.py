"""Churn risk (domain.md, "Churn risk"; seeds: churn statistics, telecom port-out and
downgrade signals).

Score = sum of the weights of the active signals, times the tier multiplier (diamond 1.3,
gold 1.15, others 1.0), capped at 100, rounded to 2 decimals. Levels: low < 30, medium 30-59,
high >= 60. ``churn.risk_changed`` is emitted only when the level changes.

| signal                | active when (looking back from the evaluation time)             | weight |
|-----------------------|------------------------------------------------------------------|--------|
| port_out              | port_out_requested, or a contact with intent port_out, 30 days  | 45     |
| cancel                | cancellation_requested, or intent cancel, 30 days               | 45     |
| downgrade             | plan.changed downgrade, or intent downgrade, 60 days            | 20     |
| repeat_complaints     | >= 2 complaint.filed within 30 days (30 if >= 3)                | 20     |
| sla_breach            | any complaint SLA breach within 30 days                         | 15     |
| reopened              | complaint.reopened within 30 days                               | 15     |
| unsatisfied_follow_up | complaint.followed_up unsatisfied within 30 days                | 15     |
| low_satisfaction      | a survey composite < 60 within 60 days                          | 20     |
| detractor             | nps <= 6 within 60 days                                         | 10     |
| bounced               | a contact with transfers >= 3 within 30 days                    | 10     |
| spend_drop            | latest period spend < 70% of the mean of the 3 periods before it | 20     |

A signal seen at ``t`` is active while ``at < t + window`` and expires at ``t + window``.
State is compact plain data (tuples, not lists, so a customer's state holds no object the
cycle collector must track): the latest time per signal, the 3 latest complaint.filed times
(enough to tell >= 2 and >= 3), the spend_drop flag, the current score/level/reasons, and
``next_check`` (the earliest expiry of an active signal): until then, and unless a signal
was added or the tier changed (``stale``), the level cannot change and evaluation is skipped.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Mapping

from processors.derived import derived_id, round2
from processors.rules import CHURN_SIGNALS, ChurnRules, Rules

RISK_CHANGED = "churn.risk_changed"
NEVER = 1 << 62  # "no expiry pending" as a plain int
_SPEND_DROP_RANK = CHURN_SIGNALS.index("spend_drop")


def new_state() -> dict:
    return {
        "last": {},          # signal -> latest time seen (ms)
        "filed": (),         # latest complaint.filed times, ascending, at most heavy_count
        "spend_drop": False,
        "level": "low",
        "score": 0.0,
        "reasons": (),
        "next_check": NEVER,
        "stale": False,
    }


def _seen(state: dict, signal: str, at: int) -> bool:
    """Record a signal at ``at`` (the latest time is what counts). The state goes stale only
    when the signal was not already among the active reasons: a renewal of an active signal
    cannot raise the score, and the expiry it postpones is re-checked at ``next_check``."""
    last = state["last"]
    if last.get(signal, -1) >= at:
        return False
    last[signal] = at
    if signal not in state["reasons"]:
        state["stale"] = True
    return True


def observe(state: dict, event: Mapping, rules: ChurnRules) -> bool:
    """Record the churn signals carried by one event (interaction or derived).

    Returns True when the state changed. ``billing.period_closed`` is handled by
    :func:`set_spend_drop` (it needs the customer's periods) and tier changes by the fold.
    """
    etype = event["event_type"]
    at = event["occurred_at"]
    if etype == "contact.completed":
        changed = False
        intent = event.get("intent")
        if intent == "port_out" or intent == "cancel" or intent == "downgrade":
            changed = _seen(state, intent, at)
        if event["transfers"] >= rules.bounced_min_transfers:
            changed = _seen(state, "bounced", at) or changed
        return changed
    if etype == "satisfaction.scored":
        changed = False
        comp = event["composite"]
        if comp is not None and comp < rules.low_satisfaction_below:
            changed = _seen(state, "low_satisfaction", at)
        nps = event["nps"]
        if nps is not None and nps <= rules.detractor_at_most:
            changed = _seen(state, "detractor", at) or changed
        return changed
    if etype == "complaint.filed":
        state["filed"] = tuple(sorted(state["filed"] + (at,))[-rules.repeat_heavy_count:])
        state["stale"] = True
        return True
    if etype == "complaint.sla_breached":
        return _seen(state, "sla_breach", at)
    if etype == "complaint.reopened":
        return _seen(state, "reopened", at)
    if etype == "complaint.followed_up":
        return event.get("outcome") == "unsatisfied" and _seen(state, "unsatisfied_follow_up", at)
    if etype == "account.port_out_requested":
        return _seen(state, "port_out", at)
    if etype == "account.cancellation_requested":
        return _seen(state, "cancel", at)
    if etype == "plan.changed":
        return event.get("direction") == "downgrade" and _seen(state, "downgrade", at)
    return False


def spend_drop_active(periods: Mapping[str, Decimal], rules: ChurnRules) -> bool:
    """Latest period's spend < ratio x mean spend of the (up to 3) periods before it."""
    if not periods:
        return False
    keys = sorted(periods)
    prior = keys[:-1][-rules.spend_drop_prior_periods:]
    if len(prior) < rules.spend_drop_min_prior_periods:
        return False
    mean = sum(periods[k] for k in prior) / len(prior)
    return periods[keys[-1]] < rules.spend_drop_ratio * mean


def set_spend_drop(state: dict, active: bool) -> bool:
    if state["spend_drop"] == active:
        return False
    state["spend_drop"] = active
    state["stale"] = True
    return True


def assess(state: Mapping, at: int, tier: str, rules: ChurnRules) -> tuple[float, str, tuple, int]:
    """(score, level, reasons, next_check) at time ``at``; pure."""
    table = rules.signal_table
    total = 0.0
    ranks = []
    next_check = NEVER
    for name, t in state["last"].items():
        rank, window, weight = table[name]
        expiry = t + window
        if expiry > at:
            total += weight
            ranks.append(rank)
            if expiry < next_check:
                next_check = expiry
    if state["filed"]:
        rank, window, weight = table["repeat_complaints"]
        active = [t + window for t in state["filed"] if t + window > at]
        if len(active) >= rules.repeat_min_count:
            total += (rules.repeat_heavy_weight if len(active) >= rules.repeat_heavy_count
                      else weight)
            ranks.append(rank)
        if active and active[0] < next_check:
            next_check = active[0]
    if state["spend_drop"]:
        total += rules.signals["spend_drop"].weight
        ranks.append(_SPEND_DROP_RANK)
    ranks.sort()
    score = round2(min(rules.cap, total * rules.tier_multipliers[tier]))
    return score, rules.level(score), tuple([CHURN_SIGNALS[r] for r in ranks]), next_check


def peek_level(state: Mapping, at: int, tier: str, rules: ChurnRules) -> str:
    """The level the customer would have at ``at`` (no state change, no event)."""
    return assess(state, at, tier, rules)[1]


def evaluate(state: dict, at: int, tier: str, *, customer_id: str, channel: str, city: str,
             source_id: str, rules: Rules) -> dict | None:
    """Re-score the customer at ``at``; ``churn.risk_changed`` if the level changed.

    ``source_id`` is the event id of what triggered the evaluation; it makes the derived id.
    """
    score, level, reasons, next_check = assess(state, at, tier, rules.churn)
    previous = state["level"]
    state["score"] = score
    state["reasons"] = reasons
    state["next_check"] = next_check
    state["stale"] = False
    prune(state, at, rules.churn)
    if level == previous:
        return None
    state["level"] = level
    version = rules.version
    return {
        "event_id": derived_id(RISK_CHANGED, version, customer_id, source_id),
        "event_type": RISK_CHANGED,
        "occurred_at": at,
        "customer_id": customer_id,
        "channel": channel,
        "city": city,
        "agent_id": None,
        "correlation_id": None,
        "rules_version": version,
        "score": score,
        "level": level,
        "previous_level": previous,
        "reasons": list(reasons),
        "tier": tier,
    }


def prune(state: dict, at: int, rules: ChurnRules) -> None:
    """Forget signal times that have expired at ``at`` (they can no longer be active)."""
    signals = rules.signals
    last = state["last"]
    for name in [n for n, t in last.items() if t + signals[n].window_ms <= at]:
        del last[name]
    window = signals["repeat_complaints"].window_ms
    if state["filed"] and state["filed"][0] + window <= at:
        state["filed"] = tuple([t for t in state["filed"] if t + window > at])


def to_plain(state: Mapping) -> dict:
    """JSON-ready copy (tuples become lists)."""
    return {"last": dict(state["last"]), "filed": list(state["filed"]),
            "spend_drop": state["spend_drop"], "level": state["level"], "score": state["score"],
            "reasons": list(state["reasons"]), "next_check": state["next_check"],
            "stale": state["stale"]}


def from_plain(plain: Mapping) -> dict:
    state = new_state()
    state.update(plain)
    state["last"] = dict(plain.get("last", {}))
    state["filed"] = tuple(plain.get("filed", ()))
    state["reasons"] = tuple(plain.get("reasons", ()))
    return state
