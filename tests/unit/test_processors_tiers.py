"""Tiers: basis, thresholds, immediate upgrades, hysteresis, approvals, the high-risk guard."""

import uuid
from decimal import Decimal

from processors import tiers
from processors.derived import NAMESPACE
from processors.rules import load_rules
from tests.unit.processors_factories import (fold_events, T0, billing, cancellation, decision, port_out,
                                             rules_with, survey)

RULES = load_rules()
DAY = 86_400_000
CID = "c-000042"


def run(*events, rules=RULES):
    return fold_events(*events, rules=rules)


def tier_events(out):
    return [e for e in out if e["event_type"].startswith("tier.")]


def tier_of(fold, cid=CID):
    return fold.customer_state(cid)["tier"]["tier"]


def months(*spends, start=0):
    return [billing(T0 + (start + i) * DAY, f"2024-{start + i + 1:02d}", s)
            for i, s in enumerate(spends)]


def test_basis_is_the_mean_of_the_last_three_periods_fewer_if_fewer():
    p = {"2024-01": Decimal("100.00")}
    assert tiers.basis(p, 3) == Decimal("100.00")
    p["2024-02"] = Decimal("200.00")
    assert tiers.basis(p, 3) == Decimal("150.00")
    p["2024-03"] = Decimal("600.00")
    p["2024-04"] = Decimal("900.01")
    assert tiers.basis(p, 3) == Decimal("566.67")   # (200 + 600 + 900.01) / 3 = 566.67
    assert tiers.basis({}, 3) is None


def test_thresholds():
    t = RULES.tiers
    assert [tiers.qualifying_tier(Decimal(x), t) for x in
            ("0", "299.99", "300", "999.99", "1000", "2999.99", "3000")] == [
        "standard", "standard", "silver", "silver", "gold", "gold", "diamond"]


def test_an_upgrade_applies_at_once():
    b = billing(T0, "2025-01", "1500.00", channel="app", city="hangzhou")
    fold, out = run(b)
    proposed, changed = tier_events(out)
    pid = str(uuid.uuid5(NAMESPACE, f"tier.proposal|2025.10-1|{CID}|{b['event_id']}"))
    assert proposed == {
        "event_id": str(uuid.uuid5(NAMESPACE, f"tier.change_proposed|2025.10-1|{pid}")),
        "event_type": "tier.change_proposed", "occurred_at": T0, "customer_id": CID,
        "channel": "app", "city": "hangzhou", "agent_id": None, "correlation_id": pid,
        "rules_version": "2025.10-1", "proposal_id": pid, "from_tier": "standard",
        "to_tier": "gold", "basis": Decimal("1500.00"), "requires_approval": False,
    }
    assert changed == {
        "event_id": str(uuid.uuid5(NAMESPACE, f"tier.changed|2025.10-1|{pid}")),
        "event_type": "tier.changed", "occurred_at": T0, "customer_id": CID,
        "channel": "app", "city": "hangzhou", "agent_id": None, "correlation_id": pid,
        "rules_version": "2025.10-1", "from_tier": "standard", "to_tier": "gold",
        "proposal_id": pid,
    }
    assert tier_of(fold) == "gold"


def test_upgrades_step_with_the_basis():
    fold, out = run(*months("350.00", "1700.00", "7000.00"))
    # bases 350 silver, 1025 gold, 3016.67 diamond
    assert [(e["from_tier"], e["to_tier"], e["basis"]) for e in tier_events(out)
            if e["event_type"] == "tier.change_proposed"] == [
        ("standard", "silver", Decimal("350.00")), ("silver", "gold", Decimal("1025.00")),
        ("gold", "diamond", Decimal("3016.67"))]


def test_downgrade_only_below_90_percent_of_the_current_threshold():
    fold, out = run(*months("1000.00", "1000.00", "1000.00"))
    assert tier_of(fold) == "gold"
    out = fold.apply(billing(T0 + 3 * DAY, "2024-04", "700.00"))   # basis 900.00: stays
    assert tier_events(out) == [] and tier_of(fold) == "gold"
    out = fold.apply(billing(T0 + 4 * DAY, "2024-05", "699.96"))   # basis 799.99 < 900
    [proposal] = tier_events(out)
    assert (proposal["event_type"], proposal["from_tier"], proposal["to_tier"],
            proposal["basis"], proposal["requires_approval"]) == (
        "tier.change_proposed", "gold", "silver", Decimal("799.99"), True)
    assert tier_of(fold) == "gold"   # pending approval


def gold_with_pending_downgrade(rules=RULES):
    fold, _ = run(*months("1000.00", "1000.00", "1000.00", "500.00", "500.00"), rules=rules)
    pending = fold.customer_state(CID)["tier"]["pending"]
    return fold, pending


def test_an_approved_downgrade_changes_the_tier():
    fold, pending = gold_with_pending_downgrade()
    # proposed at 2024-04: (1000 + 1000 + 500) / 3 = 833.33 < 900; 2024-05 (666.67) keeps it
    assert (pending["from_tier"], pending["to_tier"], pending["basis"]) == ("gold", "silver",
                                                                           "833.33")
    [changed] = fold.apply(decision(T0 + 10 * DAY, "approved", pending["proposal_id"]))
    assert (changed["event_type"], changed["from_tier"], changed["to_tier"],
            changed["proposal_id"]) == ("tier.changed", "gold", "silver", pending["proposal_id"])
    assert tier_of(fold) == "silver"
    assert fold.customer_state(CID)["tier"]["pending"] is None


def test_a_decision_without_proposal_id_answers_the_pending_one():
    fold, pending = gold_with_pending_downgrade()
    [changed] = fold.apply(decision(T0 + 10 * DAY, "approved"))
    assert changed["proposal_id"] == pending["proposal_id"]


def test_a_rejected_downgrade_keeps_the_tier_and_a_later_period_proposes_again():
    fold, pending = gold_with_pending_downgrade()
    assert fold.apply(decision(T0 + 10 * DAY, "rejected", pending["proposal_id"])) == []
    assert tier_of(fold) == "gold"
    assert fold.customer_state(CID)["tier"]["pending"] is None
    [again] = tier_events(fold.apply(billing(T0 + 11 * DAY, "2024-06", "500.00")))
    assert again["event_type"] == "tier.change_proposed"
    assert again["proposal_id"] != pending["proposal_id"]


def test_a_mismatched_or_unexpected_decision_is_an_anomaly():
    fold, pending = gold_with_pending_downgrade()
    assert fold.apply(decision(T0 + 10 * DAY, "approved", "not-the-one")) == []
    state = fold.customer_state(CID)["tier"]
    assert state["pending"]["proposal_id"] == pending["proposal_id"] and state["tier"] == "gold"
    assert state["anomalies"] == [f"tier.change_decided for proposal not-the-one, pending is "
                                  f"{pending['proposal_id']}"]
    fold2, _ = run(decision(T0, "approved"))
    assert fold2.customer_state(CID)["tier"]["anomalies"] == [
        "tier.change_decided (approved) with no pending proposal"]


def test_a_newer_period_and_a_pending_proposal():
    fold, pending = gold_with_pending_downgrade()
    # same target (silver): the pending proposal stays, nothing new
    assert tier_events(fold.apply(billing(T0 + 6 * DAY, "2024-06", "600.00"))) == []
    assert fold.customer_state(CID)["tier"]["pending"]["proposal_id"] == pending["proposal_id"]
    # back inside the hysteresis band: still pending (no withdrawal event exists)
    assert tier_events(fold.apply(billing(T0 + 7 * DAY, "2024-07", "2000.00"))) == []
    assert fold.customer_state(CID)["tier"]["pending"]["proposal_id"] == pending["proposal_id"]
    # a different target (standard): replaced by a new proposal
    for i, m in enumerate(("2024-08", "2024-09", "2024-10")):
        out = fold.apply(billing(T0 + (8 + i) * DAY, m, "100.00"))
    new = fold.customer_state(CID)["tier"]["pending"]
    assert new["to_tier"] == "standard" and new["proposal_id"] != pending["proposal_id"]
    # an upgrade supersedes it
    out = fold.apply(billing(T0 + 20 * DAY, "2024-11", "9000.00"))  # basis 3066.67
    assert [(e["event_type"], e["to_tier"]) for e in tier_events(out)] == [
        ("tier.change_proposed", "diamond"), ("tier.changed", "diamond")]
    assert fold.customer_state(CID)["tier"]["pending"] is None
    assert fold.apply(decision(T0 + 21 * DAY, "approved", new["proposal_id"])) == []
    assert tier_of(fold) == "diamond"


def test_downgrades_without_approval_when_configured():
    rules = rules_with({"tiers.downgrades_require_approval": False})
    fold, out = run(*months("3000.00", "3000.00", "3000.00", "100.00", "100.00"), rules=rules)
    downs = [e for e in tier_events(out) if e["from_tier"] == "diamond"]
    # (3000 + 3000 + 100) / 3 = 2033.33 < 2700: gold at once; then 1066.67 >= 900: stays gold
    assert [(e["event_type"], e["to_tier"], e["basis"] if "basis" in e else None)
            for e in downs] == [("tier.change_proposed", "gold", Decimal("2033.33")),
                                ("tier.changed", "gold", None)]
    assert downs[0]["requires_approval"] is False
    assert tier_of(fold) == "gold"


def test_a_high_risk_customer_is_never_downgraded_without_approval():
    rules = rules_with({"tiers.downgrades_require_approval": False})
    fold, out = run(*months("1000.00", "1000.00", "1000.00"), port_out(T0 + 3 * DAY),
                    cancellation(T0 + 3 * DAY), rules=rules)
    assert fold.customer_state(CID)["churn"]["level"] == "high"
    out = fold.apply(billing(T0 + 4 * DAY, "2024-04", "100.00"))   # basis 700
    [proposal] = tier_events(out)
    assert proposal["requires_approval"] is True and tier_of(fold) == "gold"


def test_the_guard_sees_the_spend_drop_of_the_same_period():
    # port_out 45 (x1.15 gold = 51.75, medium) + this period's spend_drop 20 -> 74.75 high
    rules = rules_with({"tiers.downgrades_require_approval": False})
    fold, _ = run(*months("1000.00", "1000.00", "1000.00"), port_out(T0 + 3 * DAY), rules=rules)
    assert fold.customer_state(CID)["churn"]["level"] == "medium"
    out = fold.apply(billing(T0 + 4 * DAY, "2024-04", "100.00"))
    [proposal] = tier_events(out)
    assert proposal["requires_approval"] is True
    [risk] = [e for e in out if e["event_type"] == "churn.risk_changed"]
    assert risk["level"] == "high" and risk["reasons"] == ["port_out", "spend_drop"]


def test_a_repeated_period_replaces_it():
    fold, out = run(billing(T0, "2024-01", "5000.00"), billing(T0 + 1, "2024-01", "500.00"))
    assert fold.customer_state(CID)["tier"]["periods"] == {"2024-01": "500.00"}
    assert tier_of(fold) == "diamond"   # the correction proposes a downgrade, pending
    assert fold.customer_state(CID)["tier"]["pending"]["to_tier"] == "silver"


def test_an_old_period_arriving_late_does_not_displace_the_last_three():
    fold, _ = run(*months("1000.00", "1000.00", "1000.00", "1000.00", start=3),
                  billing(T0 + 10 * DAY, "2024-01", "0.00"))
    assert tiers.basis({k: Decimal(v) for k, v in
                        fold.customer_state(CID)["tier"]["periods"].items()}, 3) == Decimal("1000.00")


def test_the_scored_tier_is_current():
    fold, out = run(billing(T0, "2025-01", "3500.00"), survey(T0 + 1))
    [scored] = [e for e in out if e["event_type"] == "satisfaction.scored"]
    assert scored["tier"] == "diamond"
