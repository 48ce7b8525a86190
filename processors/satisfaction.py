"""Satisfaction (domain.md, "Satisfaction"; seed: the March 2025 report).

- Composite = weighted mean of the four dimensions (response_speed 0.30, resolution_efficiency
  0.40, attitude 0.20, follow_up 0.10). A missing dimension drops out and the remaining
  weights are renormalised. Per-city weight profiles override the default (beijing: 0.25 /
  0.50 / 0.15 / 0.10). Reference: 89.2 / 85.7 / 90.5 / 82.4 -> 87.38.
- NPS = % promoters (9-10) minus % detractors (0-6).
- Thresholds: below 80 red, 88 the recovery target, 90 the national target.

``score_survey`` turns a ``survey.responded`` record into ``satisfaction.scored``.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from processors.derived import name_id, round2
from processors.rules import DIMENSIONS, Rules, SatisfactionRules

SCORED = "satisfaction.scored"

PROMOTER_FROM = 9   # 9-10
DETRACTOR_TO = 6    # 0-6


def composite(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """Weighted mean of the present dimensions, renormalised, rounded to 2 decimals.

    None when no dimension with a positive weight is present.
    """
    total = 0.0
    weight_sum = 0.0
    for dim in DIMENSIONS:
        value = scores.get(dim)
        if value is not None:
            w = weights[dim]
            total += w * value
            weight_sum += w
    if weight_sum <= 0.0:
        return None
    return round2(total / weight_sum)


def is_promoter(nps_score: int) -> bool:
    return nps_score >= PROMOTER_FROM


def is_detractor(nps_score: int) -> bool:
    return nps_score <= DETRACTOR_TO


def nps_from_counts(responses: int, promoters: int, detractors: int) -> float | None:
    """NPS in points (-100..100) from counts; None without responses."""
    if responses <= 0:
        return None
    return round2(100.0 * (promoters - detractors) / responses)


def nps(scores: Iterable[int | None]) -> float | None:
    """NPS of individual 0-10 answers (None answers are not responses)."""
    responses = promoters = detractors = 0
    for s in scores:
        if s is None:
            continue
        responses += 1
        if s >= PROMOTER_FROM:
            promoters += 1
        elif s <= DETRACTOR_TO:
            detractors += 1
    return nps_from_counts(responses, promoters, detractors)


def threshold_status(score: float | None, rules: SatisfactionRules) -> str | None:
    """Where a composite stands against the dashboard lines.

    ``red`` (< red_below), ``below_recovery`` (< recovery_target), ``below_target``
    (< national_target) or ``on_target``; None for no score.
    """
    if score is None:
        return None
    if score < rules.red_below:
        return "red"
    if score < rules.recovery_target:
        return "below_recovery"
    if score < rules.national_target:
        return "below_target"
    return "on_target"


def score_survey(survey: Mapping, tier: str, rules: Rules) -> dict:
    """``satisfaction.scored`` for a ``survey.responded`` record.

    The weights are the survey city's profile if the rules have one, else the default;
    ``tier`` is the customer's tier at that moment. The event id is derived from the survey's
    event id, so a replay gives the same id.
    """
    profile, weights = rules.satisfaction.weights_for(survey["city"])
    # The record form carries every optional field (None when absent).
    rs = survey["response_speed"]
    re_ = survey["resolution_efficiency"]
    at = survey["attitude"]
    fu = survey["follow_up"]
    score = composite(survey, weights)
    version = rules.version
    return {
        "event_id": name_id(f"{SCORED}|{version}|{survey['event_id']}"),
        "event_type": SCORED,
        "occurred_at": survey["occurred_at"],
        "customer_id": survey["customer_id"],
        "channel": survey["channel"],
        "city": survey["city"],
        "agent_id": None,
        "correlation_id": survey["correlation_id"],
        "rules_version": version,
        "survey_id": survey["survey_id"],
        "subject_id": survey["subject_id"],
        "composite": score,
        "weights_profile": profile,
        "response_speed": rs,
        "resolution_efficiency": re_,
        "attitude": at,
        "follow_up": fu,
        "nps": survey["nps"],
        "tier": tier,
    }
