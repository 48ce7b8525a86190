"""Churn risk: each signal of the domain table, expiry, tier multipliers, levels, emission."""

import uuid

import pytest

from processors import churn
from processors.derived import NAMESPACE
from processors.rules import load_rules
from tests.unit.processors_factories import (fold_events, T0, billing, cancellation, complaint_event, contact,
                                             filed, plan_changed, port_out, survey)

RULES = load_rules()
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
CID = "c-000042"


def run(*events, rules=RULES):
    return fold_events(*events, rules=rules)


def risk_events(out):
    return [e for e in out if e["event_type"] == "churn.risk_changed"]


def assess(fold, at, cid=CID):
    """(score, level, reasons) of a customer at ``at``."""
    state = fold.customer_state(cid)
    score, level, reasons, _ = churn.assess(state["churn"], at, state["tier"]["tier"], RULES.churn)
    return score, level, list(reasons)


@pytest.mark.parametrize("make,signal,weight", [
    (lambda: port_out(T0), "port_out", 45),
    (lambda: contact(T0, intent="port_out"), "port_out", 45),
    (lambda: cancellation(T0), "cancel", 45),
    (lambda: contact(T0, intent="cancel"), "cancel", 45),
    (lambda: plan_changed(T0, "downgrade"), "downgrade", 20),
    (lambda: contact(T0, intent="downgrade"), "downgrade", 20),
    (lambda: complaint_event("complaint.reopened", T0, "q1"), "reopened", 15),
    (lambda: complaint_event("complaint.followed_up", T0, "q1", outcome="unsatisfied"),
     "unsatisfied_follow_up", 15),
    (lambda: survey(T0, response_speed=50, resolution_efficiency=50, attitude=80, follow_up=None,
                    nps=8), "low_satisfaction", 20),   # composite 55.56
    (lambda: survey(T0, nps=6), "detractor", 10),
    (lambda: contact(T0, transfers=3), "bounced", 10),
])
def test_each_signal_has_its_weight(make, signal, weight):
    fold, out = run(make())
    assert assess(fold, T0) == (weight, RULES.churn.level(weight), [signal])


@pytest.mark.parametrize("make", [
    lambda: contact(T0, intent="upgrade"),
    lambda: contact(T0, intent="none", transfers=2),
    lambda: plan_changed(T0, "lateral"),
    lambda: plan_changed(T0, "upgrade"),
    lambda: complaint_event("complaint.followed_up", T0, "q1", outcome="satisfied"),
    lambda: complaint_event("complaint.followed_up", T0, "q1", outcome="unreachable"),
    lambda: survey(T0, response_speed=60, resolution_efficiency=60, attitude=60, follow_up=60,
                   nps=7),
])
def test_events_below_the_signal_bounds_carry_no_signal(make):
    fold, out = run(make())
    state = fold.customer_state(CID)
    if state is not None:
        assert assess(fold, T0) == (0, "low", [])
    assert risk_events(out) == []


def test_repeat_complaints_20_from_two_30_from_three():
    fold, _ = run(filed(T0, "q1"))
    assert assess(fold, T0)[0] == 0
    fold.apply(filed(T0 + MIN, "q2"))
    assert assess(fold, T0 + MIN) == (20, "low", ["repeat_complaints"])
    fold.apply(filed(T0 + 2 * MIN, "q3"))
    assert assess(fold, T0 + 2 * MIN) == (30, "medium", ["repeat_complaints"])
    # q1 filed at T0 leaves the 30-day window at T0 + 30 d: two left
    assert assess(fold, T0 + 30 * DAY - 1)[0] == 30
    assert assess(fold, T0 + 30 * DAY)[0] == 20
    assert assess(fold, T0 + 30 * DAY + MIN) == (0, "low", [])


def test_sla_breach_signal_comes_from_the_derived_breach():
    fold, out = run(filed(T0, "q1", severity="urgent"))
    out = fold.advance_clock(T0 + 5 * MIN + 1)
    assert [e["event_type"] for e in out] == ["complaint.sla_breached"]
    assert assess(fold, T0 + 5 * MIN + 1) == (15, "low", ["sla_breach"])


def test_spend_drop_below_70_percent_of_the_three_periods_before():
    base = [billing(T0 + i * DAY, f"2024-{i + 1:02d}", "1000.00") for i in range(3)]
    fold, _ = run(*base, billing(T0 + 3 * DAY, "2024-04", "700.00"))
    assert assess(fold, T0 + 3 * DAY) == (0, "low", [])
    fold.apply(billing(T0 + 4 * DAY, "2024-04", "699.99"))   # the period closed again: replaces
    assert assess(fold, T0 + 4 * DAY) == (20 * 1.15, "low", ["spend_drop"])  # gold customer
    fold.apply(billing(T0 + 5 * DAY, "2024-05", "900.00"))   # mean(1000, 1000, 699.99) * 0.7
    assert assess(fold, T0 + 5 * DAY)[2] == []


def test_spend_drop_needs_three_prior_periods():
    fold, _ = run(billing(T0, "2024-01", "1000.00"), billing(T0 + DAY, "2024-02", "100.00"))
    assert "spend_drop" not in assess(fold, T0 + DAY)[2]


def test_signals_expire_after_their_window():
    fold, out = run(port_out(T0))
    [changed] = risk_events(out)
    assert (changed["previous_level"], changed["level"], changed["score"]) == ("low", "medium", 45)
    out = fold.apply(contact(T0 + 30 * DAY - 1))
    assert risk_events(out) == []
    out = fold.apply(contact(T0 + 30 * DAY))
    [dropped] = risk_events(out)
    assert (dropped["previous_level"], dropped["level"], dropped["score"]) == ("medium", "low", 0)
    assert dropped["reasons"] == [] and dropped["occurred_at"] == T0 + 30 * DAY


def test_sixty_day_signals():
    fold, _ = run(plan_changed(T0, "downgrade"), survey(T0, nps=0))
    assert assess(fold, T0 + 59 * DAY)[0] == 30
    assert assess(fold, T0 + 60 * DAY)[0] == 0


def diamond_then(*events):
    ups = [billing(T0 - (3 - i) * DAY, f"2024-{i + 10:02d}", "5000.00") for i in range(3)]
    return run(*ups, *events)


@pytest.mark.parametrize("tier_spend,multiplier", [("5000.00", 1.3), ("1500.00", 1.15),
                                                   ("400.00", 1.0), ("100.00", 1.0)])
def test_tier_multipliers(tier_spend, multiplier):
    fold, _ = run(billing(T0 - DAY, "2024-12", tier_spend), port_out(T0))
    assert assess(fold, T0)[0] == round(45 * multiplier, 2)


def test_a_diamond_customer_reaches_high_sooner():
    # standard: port_out 45 + detractor 10 = 55 medium; diamond: 55 * 1.3 = 71.5 high
    fold, out = run(port_out(T0), survey(T0 + 1, nps=3))
    assert [e["level"] for e in risk_events(out)] == ["medium"]
    fold, out = diamond_then(port_out(T0), survey(T0 + 1, nps=3))
    assert [(e["level"], e["score"], e["tier"]) for e in risk_events(out)] == [
        ("medium", 58.5, "diamond"), ("high", 71.5, "diamond")]


def test_score_is_capped_at_100():
    fold, _ = run(port_out(T0), cancellation(T0 + 1), plan_changed(T0 + 2, "downgrade"))
    assert assess(fold, T0 + 2) == (100, "high", ["port_out", "cancel", "downgrade"])


def test_emits_only_on_level_change_with_reasons_in_table_order():
    fold, out = run(
        contact(T0, transfers=4),                       # bounced 10: low, nothing
        survey(T0 + 1, nps=2),                          # + detractor 10 = 20: low
        complaint_event("complaint.reopened", T0 + 2, "q9"),  # + 15 = 35: medium
        contact(T0 + 3, transfers=3),                   # still medium: nothing
        port_out(T0 + 4),                               # + 45 = 80: high
    )
    risk = risk_events(out)
    assert [(e["previous_level"], e["level"], e["score"]) for e in risk] == [
        ("low", "medium", 35), ("medium", "high", 80)]
    assert risk[0]["reasons"] == ["reopened", "detractor", "bounced"]
    assert risk[1]["reasons"] == ["port_out", "reopened", "detractor", "bounced"]
    assert risk[1]["occurred_at"] == T0 + 4


def test_risk_event_fields_and_id():
    p = port_out(T0, "c-5")
    fold, out = run(p)
    [risk] = risk_events(out)
    assert risk == {
        "event_id": str(uuid.uuid5(NAMESPACE, f"churn.risk_changed|2025.10-1|c-5|{p['event_id']}")),
        "event_type": "churn.risk_changed",
        "occurred_at": T0,
        "customer_id": "c-5",
        "channel": p["channel"],
        "city": p["city"],
        "agent_id": None,
        "correlation_id": None,
        "rules_version": "2025.10-1",
        "score": 45.0,
        "level": "medium",
        "previous_level": "low",
        "reasons": ["port_out"],
        "tier": "standard",
    }


def test_a_breach_reevaluates_churn_at_the_deadline():
    fold, out = run(port_out(T0), filed(T0 + 1, "q1", severity="urgent"),
                    filed(T0 + 2, "q2", severity="urgent"))
    # port_out 45 + repeat 20 = 65: already high at the second filing
    assert [e["level"] for e in risk_events(out)] == ["medium", "high"]
    fold2, out2 = run(survey(T0, nps=0), contact(T0, transfers=5),
                      filed(T0 + 1, "q1", severity="urgent"))
    assert risk_events(out2) == []
    out2 = fold2.advance_clock(T0 + 6 * MIN)
    # detractor 10 + bounced 10 + sla_breach 15 = 35 -> medium, at the deadline
    [breach, risk] = out2
    assert risk["level"] == "medium" and risk["occurred_at"] == T0 + 1 + 5 * MIN
    assert risk["reasons"] == ["sla_breach", "detractor", "bounced"]
    assert (risk["channel"], risk["city"]) == (breach["channel"], breach["city"])


def test_signal_history_stays_compact():
    fold, _ = run(port_out(T0), survey(T0, nps=0), *(filed(T0 + i, f"q{i}") for i in range(6)))
    state = fold.customer_state(CID)["churn"]
    assert len(state["filed"]) == 3
    fold.apply(contact(T0 + 90 * DAY))
    state = fold.customer_state(CID)["churn"]
    assert state["last"] == {} and state["filed"] == []
    assert state["level"] == "low"
