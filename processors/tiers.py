"""Tiers (domain.md, "Tiers"; seed: the diamond / gold / silver big-client scheme, approvals
by the service centre).

- Basis: mean spend of the last 3 closed billing periods (fewer if the customer has fewer),
  rounded half-up to 2 places. A period closed again (same ``period``) replaces, not adds.
- Thresholds (CNY per month): diamond >= 3000, gold >= 1000, silver >= 300; customers start
  at ``standard``.
- Upgrade as soon as the basis reaches a higher threshold: ``tier.change_proposed``
  (requires_approval false) and ``tier.changed`` together.
- Downgrade only when the basis falls below 90% of the current tier's threshold, to the tier
  the basis qualifies for. It needs a ``tier.change_decided`` approval unless
  ``downgrades_require_approval`` is false, and a customer at high churn risk is never
  downgraded without approval.
- At most one proposal is pending per customer. A newer billing period while one is pending:
  an upgrade supersedes it (the pending proposal is dropped; the upgrade's events show
  why); a downgrade to a *different* tier replaces it with a new proposal (new id); the same
  target, or no longer qualifying for a downgrade, leaves it pending until decided (there is
  no withdrawal event in the contract, so what ops see pending stays decidable).
- ``tier.change_decided``: approved -> ``tier.changed``; rejected -> the tier stays. A given
  proposal_id must match the pending one; a mismatch, or a decision with nothing pending,
  is recorded as an anomaly and changes nothing.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Mapping

from processors.derived import derived_id
from processors.rules import TIERS, Rules, TierRules

PROPOSED = "tier.change_proposed"
CHANGED = "tier.changed"
TIER_RANK = {tier: i for i, tier in enumerate(TIERS)}
CENT = Decimal("0.01")
MAX_ANOMALIES = 20


def new_state() -> dict:
    return {"tier": "standard", "periods": {}, "pending": None, "anomalies": ()}


def basis(periods: Mapping[str, Decimal], n: int) -> Decimal | None:
    """Mean spend of the last ``n`` periods (by period order), 2 places; None without any."""
    if not periods:
        return None
    last = sorted(periods)[-n:]
    mean = sum((periods[p] for p in last), Decimal(0)) / len(last)
    return mean.quantize(CENT, rounding=ROUND_HALF_UP)


def qualifying_tier(amount: Decimal, rules: TierRules) -> str:
    """The highest tier whose threshold the amount reaches."""
    for tier in ("diamond", "gold", "silver"):
        if amount >= rules.thresholds[tier]:
            return tier
    return "standard"


def downgrade_due(current: str, amount: Decimal, rules: TierRules) -> bool:
    """Basis below hysteresis x the current tier's threshold (never for standard)."""
    if current == "standard":
        return False
    return amount < rules.downgrade_hysteresis * rules.thresholds[current]


def record_period(state: dict, event: Mapping, rules: Rules) -> None:
    """Store a closed period's spend (a repeated period replaces); keep only what rules read."""
    spend = event["spend"]
    if spend.__class__ is not Decimal:
        spend = Decimal(str(spend))
    periods = state["periods"]
    periods[event["period"]] = spend
    if len(periods) > rules.periods_kept:
        for old in sorted(periods)[:-rules.periods_kept]:
            del periods[old]


def reassess(state: dict, event: Mapping, rules: Rules, *,
             high_churn_risk: bool | Callable[[], bool]) -> list[dict]:
    """Upgrade, propose a downgrade, or nothing, from the recorded periods (see module doc).

    ``high_churn_risk`` may be a callable, asked only when a downgrade is due."""
    tr = rules.tiers
    amount = basis(state["periods"], tr.basis_periods)
    if amount is None:
        return []
    current = state["tier"]
    target = qualifying_tier(amount, tr)
    if TIER_RANK[target] > TIER_RANK[current]:
        state["pending"] = None  # superseded by the upgrade
        return _apply_change(state, event, rules, current, target, amount, approval=False)
    if not downgrade_due(current, amount, tr):
        return []
    if callable(high_churn_risk):
        high_churn_risk = high_churn_risk()
    if tr.downgrades_require_approval or high_churn_risk:
        pending = state["pending"]
        if pending is not None and pending["to_tier"] == target:
            return []
        proposal_id = _proposal_id(rules, event)
        state["pending"] = {
            "proposal_id": proposal_id, "from_tier": current, "to_tier": target,
            "basis": amount, "proposed_at": event["occurred_at"], "period": event["period"],
        }
        return [_proposed(event, rules, proposal_id, current, target, amount, True)]
    state["pending"] = None
    return _apply_change(state, event, rules, current, target, amount, approval=False)


def on_billing(state: dict, event: Mapping, rules: Rules, *,
               high_churn_risk: bool | Callable[[], bool]) -> list[dict]:
    """Apply ``billing.period_closed``: :func:`record_period` then :func:`reassess`."""
    record_period(state, event, rules)
    return reassess(state, event, rules, high_churn_risk=high_churn_risk)


def on_decision(state: dict, event: Mapping, rules: Rules) -> list[dict]:
    """Apply ``tier.change_decided`` to the pending proposal."""
    pending = state["pending"]
    given = event.get("proposal_id")
    if pending is None:
        _anomaly(state, f"tier.change_decided ({event['decision']}) with no pending proposal")
        return []
    if given is not None and given != pending["proposal_id"]:
        _anomaly(state, f"tier.change_decided for proposal {given}, pending is "
                        f"{pending['proposal_id']}")
        return []
    state["pending"] = None
    if event["decision"] != "approved":
        return []
    current = state["tier"]
    state["tier"] = pending["to_tier"]
    return [_changed(event, rules, pending["proposal_id"], current, pending["to_tier"])]


def _anomaly(state: dict, text: str) -> None:
    if len(state["anomalies"]) < MAX_ANOMALIES:
        state["anomalies"] += (text,)


def _proposal_id(rules: Rules, event: Mapping) -> str:
    return derived_id("tier.proposal", rules.version, event["customer_id"], event["event_id"])


def _apply_change(state: dict, event: Mapping, rules: Rules, current: str, target: str,
                  amount: Decimal, approval: bool) -> list[dict]:
    proposal_id = _proposal_id(rules, event)
    state["tier"] = target
    return [_proposed(event, rules, proposal_id, current, target, amount, approval),
            _changed(event, rules, proposal_id, current, target)]


def _common(event_type: str, event_id: str, event: Mapping, rules: Rules, proposal_id: str) -> dict:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": event["occurred_at"],
        "customer_id": event["customer_id"],
        "channel": event["channel"],
        "city": event["city"],
        "agent_id": None,
        "correlation_id": proposal_id,
        "rules_version": rules.version,
    }


def _proposed(event: Mapping, rules: Rules, proposal_id: str, from_tier: str, to_tier: str,
              amount: Decimal, requires_approval: bool) -> dict:
    ev = _common(PROPOSED, derived_id(PROPOSED, rules.version, proposal_id), event, rules,
                 proposal_id)
    ev.update(proposal_id=proposal_id, from_tier=from_tier, to_tier=to_tier, basis=amount,
              requires_approval=requires_approval)
    return ev


def _changed(event: Mapping, rules: Rules, proposal_id: str, from_tier: str, to_tier: str) -> dict:
    ev = _common(CHANGED, derived_id(CHANGED, rules.version, proposal_id), event, rules,
                 proposal_id)
    ev.update(from_tier=from_tier, to_tier=to_tier, proposal_id=proposal_id)
    return ev


def to_plain(state: Mapping) -> dict:
    pending = state["pending"]
    if pending is not None:
        pending = {**pending, "basis": str(pending["basis"])}
    return {"tier": state["tier"],
            "periods": {p: str(v) for p, v in state["periods"].items()},
            "pending": pending,
            "anomalies": list(state["anomalies"])}


def from_plain(plain: Mapping) -> dict:
    pending = plain.get("pending")
    if pending is not None:
        pending = {**pending, "basis": Decimal(pending["basis"])}
    return {"tier": plain["tier"],
            "periods": {p: Decimal(v) for p, v in plain.get("periods", {}).items()},
            "pending": pending,
            "anomalies": tuple(plain.get("anomalies", ()))}
