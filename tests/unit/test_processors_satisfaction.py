"""Satisfaction: composite, per-city profile, renormalisation, NPS, thresholds, scoring."""

import uuid

import pytest

from processors.derived import NAMESPACE
from processors.rules import load_rules
from processors.satisfaction import (composite, is_detractor, is_promoter, nps, nps_from_counts,
                                     score_survey, threshold_status)
from tests.unit.processors_factories import T0, survey

RULES = load_rules()
DEFAULT = RULES.satisfaction.weights
BEIJING = RULES.satisfaction.profiles["beijing"]
MARCH = {"response_speed": 89.2, "resolution_efficiency": 85.7, "attitude": 90.5,
         "follow_up": 82.4}


def test_reference_composite_is_87_38():
    # 0.30*89.2 + 0.40*85.7 + 0.20*90.5 + 0.10*82.4 = 26.76 + 34.28 + 18.10 + 8.24
    assert composite(MARCH, DEFAULT) == 87.38


def test_beijing_profile_puts_resolution_first():
    # 0.25*89.2 + 0.50*85.7 + 0.15*90.5 + 0.10*82.4 = 22.3 + 42.85 + 13.575 + 8.24 = 86.965
    assert composite(MARCH, BEIJING) == 86.97
    assert RULES.satisfaction.weights_for("beijing") == ("beijing", BEIJING)
    assert RULES.satisfaction.weights_for("urumqi") == ("default", DEFAULT)


def test_a_missing_dimension_drops_out_and_the_rest_renormalise():
    scores = dict(MARCH, follow_up=None)
    # (26.76 + 34.28 + 18.10) / 0.90 = 87.9333
    assert composite(scores, DEFAULT) == 87.93
    assert composite({"attitude": 70.0}, DEFAULT) == 70.0
    # response_speed and attitude only: (0.3*60 + 0.2*90) / 0.5 = 72
    assert composite({"response_speed": 60, "attitude": 90}, DEFAULT) == 72.0


def test_no_dimension_no_composite():
    assert composite({d: None for d in MARCH}, DEFAULT) is None
    assert composite({}, DEFAULT) is None


def test_nps_is_promoters_minus_detractors_in_percent():
    assert nps([10, 9, 8, 7, 6, 0]) == 0.0          # 2 promoters, 2 detractors of 6
    assert nps([10, 10, 10, 5]) == 50.0            # 75% - 25%
    assert nps([6, 6, 9]) == -33.33
    assert nps([None, 8, 7]) == 0.0                # passives only; None is no response
    assert nps([]) is None and nps([None]) is None
    assert nps_from_counts(200, 120, 30) == 45.0
    assert is_promoter(9) and is_promoter(10) and not is_promoter(8)
    assert is_detractor(6) and is_detractor(0) and not is_detractor(7)


@pytest.mark.parametrize("score,status", [(79.99, "red"), (80, "below_recovery"),
                                          (87.99, "below_recovery"), (88, "below_target"),
                                          (89.99, "below_target"), (90, "on_target"),
                                          (None, None)])
def test_thresholds(score, status):
    assert threshold_status(score, RULES.satisfaction) == status


def test_score_survey_builds_satisfaction_scored():
    s = survey(T0 + 5_000, "c-1", city="beijing", channel="wechat", correlation_id="case-9",
               subject_id="k-77", nps=10, **MARCH)
    scored = score_survey(s, "gold", RULES)
    assert scored == {
        "event_id": str(uuid.uuid5(NAMESPACE, f"satisfaction.scored|2025.10-1|{s['event_id']}")),
        "event_type": "satisfaction.scored",
        "occurred_at": T0 + 5_000,
        "customer_id": "c-1",
        "channel": "wechat",
        "city": "beijing",
        "agent_id": None,
        "correlation_id": "case-9",
        "rules_version": "2025.10-1",
        "survey_id": s["survey_id"],
        "subject_id": "k-77",
        "composite": 86.97,
        "weights_profile": "beijing",
        **MARCH,
        "nps": 10,
        "tier": "gold",
    }
    assert score_survey(s, "gold", RULES) == scored  # deterministic, id included


def test_score_survey_default_profile_and_missing_dimensions():
    s = survey(T0, city="lanzhou", response_speed=None, resolution_efficiency=None,
               attitude=None, follow_up=None, nps=None)
    scored = score_survey(s, "standard", RULES)
    assert scored["composite"] is None
    assert scored["weights_profile"] == "default"
    assert scored["nps"] is None
    assert score_survey(survey(T0, city="lanzhou", **MARCH), "standard", RULES)["composite"] == 87.38
