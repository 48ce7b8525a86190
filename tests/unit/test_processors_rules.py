"""The rules file: every default of domain.md is data, and a bad file names the key."""

from decimal import Decimal

import pytest

from processors.rules import CHURN_SIGNALS, RulesError, load_rules
from tests.unit.processors_factories import DELETE, rules_with

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def test_shipped_defaults_match_the_contract():
    r = load_rules()
    assert r.version == "2025.10-1"
    s = r.satisfaction
    assert dict(s.weights) == {"response_speed": 0.30, "resolution_efficiency": 0.40,
                               "attitude": 0.20, "follow_up": 0.10}
    assert dict(s.profiles["beijing"]) == {"resolution_efficiency": 0.50, "response_speed": 0.25,
                                           "attitude": 0.15, "follow_up": 0.10}
    assert (s.red_below, s.recovery_target, s.national_target) == (80, 88, 90)
    assert r.windows.business_timezone == "Asia/Shanghai"
    assert r.windows.first_response_bounds == (5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
    assert r.clock.allowed_lateness_ms == 5 * MIN
    c = r.complaints
    assert dict(c.first_response_ms) == {"urgent": 5 * MIN, "normal": 2 * HOUR, "complex": 2 * HOUR}
    assert dict(c.resolution_ms) == {"urgent": 4 * HOUR, "normal": 24 * HOUR, "complex": 48 * HOUR}
    assert c.feedback_ms("logistics") == 15 * MIN
    assert c.feedback_ms("billing") == 24 * HOUR
    assert c.follow_up_ms == 72 * HOUR
    assert c.max_level == 3
    ch = r.churn
    assert list(ch.signals) == list(CHURN_SIGNALS)
    expected = {"port_out": (30, 45), "cancel": (30, 45), "downgrade": (60, 20),
                "repeat_complaints": (30, 20), "sla_breach": (30, 15), "reopened": (30, 15),
                "unsatisfied_follow_up": (30, 15), "low_satisfaction": (60, 20),
                "detractor": (60, 10), "bounced": (30, 10)}
    for name, (days, weight) in expected.items():
        assert (ch.signals[name].window_ms, ch.signals[name].weight) == (days * DAY, weight)
    assert ch.signals["spend_drop"].weight == 20 and ch.signals["spend_drop"].window_ms is None
    assert (ch.repeat_min_count, ch.repeat_heavy_count, ch.repeat_heavy_weight) == (2, 3, 30)
    assert ch.spend_drop_ratio == Decimal("0.7")
    assert dict(ch.tier_multipliers) == {"diamond": 1.3, "gold": 1.15, "silver": 1.0, "standard": 1.0}
    assert (ch.cap, ch.medium_from, ch.high_from) == (100, 30, 60)
    t = r.tiers
    assert dict(t.thresholds) == {"diamond": Decimal(3000), "gold": Decimal(1000),
                                  "silver": Decimal(300)}
    assert t.downgrade_hysteresis == Decimal("0.9")
    assert t.basis_periods == 3
    assert t.downgrades_require_approval is True


@pytest.mark.parametrize("score,level", [(0, "low"), (29.99, "low"), (30, "medium"),
                                         (59.99, "medium"), (60, "high"), (100, "high")])
def test_churn_level_bounds(score, level):
    assert load_rules().churn.level(score) == level


def test_load_rules_from_a_path(tmp_path):
    src = load_rules().source
    text = open(src, encoding="utf-8").read().replace('version = "2025.10-1"', 'version = "x-2"')
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    assert load_rules(path).version == "x-2"
    assert load_rules(str(path)).version == "x-2"


@pytest.mark.parametrize("overrides,key", [
    ({"version": DELETE}, "version"),
    ({"satisfaction.weights.attitude": "high"}, "satisfaction.weights.attitude"),
    ({"satisfaction.weights.attitude": 0.5}, "satisfaction.weights"),
    ({"satisfaction.profiles.beijing.follow_up": DELETE}, "satisfaction.profiles.beijing.follow_up"),
    ({"satisfaction.red_below": 95}, "satisfaction.red_below"),
    ({"windows.business_timezone": "Mars/Olympus"}, "windows.business_timezone"),
    ({"windows.first_response_bucket_bounds_seconds": [10, 5]},
     "windows.first_response_bucket_bounds_seconds"),
    ({"complaints.resolution_hours.urgent": -1}, "complaints.resolution_hours.urgent"),
    ({"complaints.feedback_minutes.parcels": 15}, "complaints.feedback_minutes.parcels"),
    ({"complaints.max_level": 0}, "complaints.max_level"),
    ({"churn.signals.port_out.weight": True}, "churn.signals.port_out.weight"),
    ({"churn.signals.loyalty": {"window_days": 1, "weight": 1}}, "churn.signals.loyalty"),
    ({"churn.tier_multipliers.gold": DELETE}, "churn.tier_multipliers.gold"),
    ({"tiers.thresholds.gold": 5000}, "tiers.thresholds"),
    ({"tiers.downgrades_require_approval": "yes"}, "tiers.downgrades_require_approval"),
    ({"tiers.surprise": 1}, "tiers.surprise"),
])
def test_a_bad_rules_file_names_the_key(overrides, key):
    with pytest.raises(RulesError) as err:
        rules_with(overrides)
    assert err.value.key == key
    assert key in str(err.value)


def test_invalid_toml_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("version = ", encoding="utf-8")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(path)


def test_rules_are_immutable():
    r = load_rules()
    with pytest.raises(Exception):
        r.version = "other"
    with pytest.raises(TypeError):
        r.satisfaction.weights["attitude"] = 1.0
