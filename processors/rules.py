"""The rules of the domain contract as one immutable, versioned value.

Every default of ``domain.md`` lives in ``processors/rules/default.toml``; this module reads a
rules file into frozen dataclasses and checks it, naming the offending key. The folds in
this package take a :class:`Rules` and never read files or the environment themselves.

Durations are converted to milliseconds here, money thresholds to ``Decimal``, so the folds
work in the units of the record form (epoch milliseconds, ``Decimal`` spend).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_RULES_PATH = Path(__file__).with_name("rules") / "default.toml"

DIMENSIONS = ("response_speed", "resolution_efficiency", "attitude", "follow_up")
SEVERITIES = ("normal", "urgent", "complex")
COMPLAINT_CATEGORIES = ("billing", "network", "logistics", "service_attitude", "product",
                        "dialect_misunderstanding", "other")
TIERS = ("standard", "silver", "gold", "diamond")  # lowest to highest
#: Churn signals in the order of the domain table; ``reasons`` keep this order.
CHURN_SIGNALS = ("port_out", "cancel", "downgrade", "repeat_complaints", "sla_breach",
                 "reopened", "unsatisfied_follow_up", "low_satisfaction", "detractor",
                 "bounced", "spend_drop")

_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


class RulesError(ValueError):
    """A rules file that cannot be used; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"rules key '{key}': {reason}")


@dataclass(frozen=True)
class SatisfactionRules:
    """Composite weights (default and per-city profiles) and the dashboard thresholds."""

    weights: Mapping[str, float]
    profiles: Mapping[str, Mapping[str, float]]
    red_below: float
    recovery_target: float
    national_target: float
    alert_min_responses: int = 20

    def weights_for(self, city: str) -> tuple[str, Mapping[str, float]]:
        """The (profile name, weights) for a city: its own profile, else ``"default"``."""
        profile = self.profiles.get(city)
        if profile is None:
            return "default", self.weights
        return city, profile


@dataclass(frozen=True)
class WindowRules:
    business_timezone: str
    retention_1m_ms: int
    retention_1d_ms: int
    first_response_bounds: tuple[float, ...]


@dataclass(frozen=True)
class ClockRules:
    allowed_lateness_ms: int
    live_max_lag_ms: int


SLA_PROFILES = ("hours", "working_days")


@dataclass(frozen=True)
class WorkingDayRules:
    """The working-day complaint profile: acknowledged within ``first_response_days`` and
    resolved within ``resolution_days`` working days of filing, on mainland China's calendar
    (``processors.workdays``)."""

    first_response_days: int
    resolution_days: int
    calendar: str               # "chinese_calendar": the chinese-calendar package
    last_calendar_year: int     # later years count Monday-Friday
    business_timezone: str

    @cached_property
    def workdays(self):
        from processors.workdays import WorkdayCalendar

        return WorkdayCalendar(self.business_timezone, self.last_calendar_year)


@dataclass(frozen=True)
class ComplaintRules:
    """SLA durations (ms) and the escalation ceiling; the SLA profile of each category."""

    first_response_ms: Mapping[str, int]   # by severity
    resolution_ms: Mapping[str, int]       # by severity
    feedback_ms_default: int
    feedback_ms_by_category: Mapping[str, int]
    follow_up_ms: int
    max_level: int
    retain_closed_ms: int
    default_profile: str = "hours"
    profiles: Mapping[str, str] = field(default_factory=dict)  # category -> profile
    working_days: WorkingDayRules | None = None

    def feedback_ms(self, category: str | None) -> int:
        return self.feedback_ms_by_category.get(category, self.feedback_ms_default)

    def profile(self, category: str | None) -> str:
        """``hours`` or ``working_days``: the SLA profile of a complaint category."""
        return self.profiles.get(category, self.default_profile)


@dataclass(frozen=True)
class HallRules:
    """Hall SMS satisfaction and the key improvement indicator; star staff."""

    target: float
    min_valid_replies: int
    months_below_target: int
    item_scale: float
    star_exam_mean_at_least: float
    star_spot_check_at_least: float


@dataclass(frozen=True)
class FeedbackRules:
    handled_ms: int
    result_ms: int
    retain_ms: int


@dataclass(frozen=True)
class ServiceRequestRules:
    first_response_seconds: float


@dataclass(frozen=True)
class ChurnSignal:
    name: str
    window_ms: int | None  # None: not time-windowed (spend_drop)
    weight: float


@dataclass(frozen=True)
class ChurnRules:
    signals: Mapping[str, ChurnSignal]  # in CHURN_SIGNALS order
    repeat_min_count: int
    repeat_heavy_count: int
    repeat_heavy_weight: float
    low_satisfaction_below: float
    detractor_at_most: int
    bounced_min_transfers: int
    spend_drop_ratio: Decimal
    spend_drop_prior_periods: int
    spend_drop_min_prior_periods: int
    tier_multipliers: Mapping[str, float]
    cap: float
    medium_from: float
    high_from: float

    @cached_property
    def signal_table(self) -> Mapping[str, tuple[int, int, float]]:
        """Windowed signals: name -> (rank in the domain table, window_ms, weight)."""
        return MappingProxyType({name: (CHURN_SIGNALS.index(name), s.window_ms, s.weight)
                                 for name, s in self.signals.items()
                                 if s.window_ms is not None})

    @property
    def longest_window_ms(self) -> int:
        return max(s.window_ms for s in self.signals.values() if s.window_ms is not None)

    def level(self, score: float) -> str:
        """low < medium_from <= medium < high_from <= high."""
        if score >= self.high_from:
            return "high"
        if score >= self.medium_from:
            return "medium"
        return "low"


@dataclass(frozen=True)
class TierRules:
    thresholds: Mapping[str, Decimal]  # diamond, gold, silver (standard has none)
    basis_periods: int
    downgrade_hysteresis: Decimal
    downgrades_require_approval: bool


@dataclass(frozen=True)
class Rules:
    version: str
    satisfaction: SatisfactionRules
    windows: WindowRules
    clock: ClockRules
    complaints: ComplaintRules
    churn: ChurnRules
    tiers: TierRules
    halls: HallRules | None = None
    feedback: FeedbackRules | None = None
    service_requests: ServiceRequestRules | None = None
    source: str = "<memory>"

    @property
    def periods_kept(self) -> int:
        """How many closed billing periods the tier/churn rules ever look at."""
        return max(self.tiers.basis_periods, self.churn.spend_drop_prior_periods + 1)


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and check a rules file; ``None`` reads the shipped default."""
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError("<file>", f"{path} is not valid TOML: {exc}") from None
    return rules_from_dict(data, source=str(path))


def rules_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> Rules:
    """Build :class:`Rules` from the parsed TOML structure (also handy for tests)."""
    root = _Table(data, "")
    version = root.string("version")
    windows = _windows(root.table("windows"))
    rules = Rules(
        version=version,
        satisfaction=_satisfaction(root.table("satisfaction")),
        windows=windows,
        clock=_clock(root.table("clock")),
        complaints=_complaints(root.table("complaints"), windows.business_timezone),
        churn=_churn(root.table("churn")),
        tiers=_tiers(root.table("tiers")),
        halls=_halls(root.table("halls")),
        feedback=_feedback(root.table("feedback")),
        service_requests=_service_requests(root.table("service_requests")),
        source=source,
    )
    root.done()
    return rules


# -- sections -------------------------------------------------------------------------------

def _weights(t: _Table) -> Mapping[str, float]:
    weights = {d: t.number(d, low=0, high=1) for d in DIMENSIONS}
    t.done()
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise RulesError(t.path, f"weights must sum to 1.0, they sum to {total:g}")
    return MappingProxyType(weights)


def _satisfaction(t: _Table) -> SatisfactionRules:
    weights = _weights(t.table("weights"))
    profiles_t = t.table("profiles", optional=True)
    profiles = {}
    if profiles_t is not None:
        for city in profiles_t.keys():
            profiles[city] = _weights(profiles_t.table(city))
        profiles_t.done()
    red = t.number("red_below", low=0, high=100)
    recovery = t.number("recovery_target", low=0, high=100)
    target = t.number("national_target", low=0, high=100)
    if not red <= recovery <= target:
        raise RulesError(t.key("red_below"),
                         "thresholds must satisfy red_below <= recovery_target <= national_target")
    min_responses = t.integer("alert_min_responses", low=1)
    t.done()
    return SatisfactionRules(weights, MappingProxyType(profiles), red, recovery, target,
                             min_responses)


def _windows(t: _Table) -> WindowRules:
    tz = t.string("business_timezone")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RulesError(t.key("business_timezone"), f"unknown time zone {tz!r}") from None
    bounds = t.list("first_response_bucket_bounds_seconds")
    for i, b in enumerate(bounds):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0:
            raise RulesError(t.key("first_response_bucket_bounds_seconds"),
                             f"item {i} must be a positive number, got {b!r}")
    if not bounds or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise RulesError(t.key("first_response_bucket_bounds_seconds"),
                         "must be a non-empty, strictly increasing list")
    w = WindowRules(
        business_timezone=tz,
        retention_1m_ms=int(t.number("retention_1m_minutes", low=1) * _MINUTE),
        retention_1d_ms=int(t.number("retention_1d_hours", low=1) * _HOUR),
        first_response_bounds=tuple(bounds),
    )
    t.done()
    return w


def _clock(t: _Table) -> ClockRules:
    c = ClockRules(
        allowed_lateness_ms=int(t.number("allowed_lateness_seconds", low=0) * 1000),
        live_max_lag_ms=int(t.number("live_max_lag_seconds", low=0) * 1000),
    )
    t.done()
    return c


def _complaints(t: _Table, business_timezone: str = "Asia/Shanghai") -> ComplaintRules:
    def by_severity(name: str, unit: int) -> Mapping[str, int]:
        s = t.table(name)
        out = {sev: int(s.number(sev, low=0) * unit) for sev in SEVERITIES}
        s.done()
        return MappingProxyType(out)

    first = by_severity("first_response_minutes", _MINUTE)
    resolution = by_severity("resolution_hours", _HOUR)
    fb = t.table("feedback_minutes")
    fb_default = int(fb.number("default", low=0) * _MINUTE)
    fb_by_cat = {}
    for key in fb.keys():
        if key == "default":
            continue
        if key not in COMPLAINT_CATEGORIES:
            raise RulesError(fb.key(key), f"unknown complaint category; expected one of "
                                          f"{', '.join(COMPLAINT_CATEGORIES)}")
        fb_by_cat[key] = int(fb.number(key, low=0) * _MINUTE)
    fb.done()
    fu = t.table("follow_up_hours")
    follow_up = int(fu.number("default", low=0) * _HOUR)
    fu.done()
    pt = t.table("sla_profiles")
    profiles = {}
    for key in pt.keys():
        value = pt.string(key)
        if value not in SLA_PROFILES:
            raise RulesError(pt.key(key), f"unknown SLA profile {value!r}; expected one of "
                                          f"{', '.join(SLA_PROFILES)}")
        if key != "default" and key not in COMPLAINT_CATEGORIES:
            raise RulesError(pt.key(key), f"unknown complaint category; expected 'default' or "
                                          f"one of {', '.join(COMPLAINT_CATEGORIES)}")
        profiles[key] = value
    pt.done()
    default_profile = profiles.pop("default", "hours")
    working_days = _working_days(t.table("working_days"), business_timezone)
    c = ComplaintRules(
        first_response_ms=first,
        resolution_ms=resolution,
        feedback_ms_default=fb_default,
        feedback_ms_by_category=MappingProxyType(fb_by_cat),
        follow_up_ms=follow_up,
        max_level=t.integer("max_level", low=1, high=10),
        retain_closed_ms=int(t.number("retain_closed_days", low=0) * _DAY),
        default_profile=default_profile,
        profiles=MappingProxyType(profiles),
        working_days=working_days,
    )
    t.done()
    return c


def _working_days(t: _Table, business_timezone: str) -> WorkingDayRules:
    calendar = t.string("calendar")
    if calendar != "chinese_calendar":
        raise RulesError(t.key("calendar"), f"unknown calendar {calendar!r}; the one supported "
                                            "is 'chinese_calendar' (mainland China, with its "
                                            "make-up working days)")
    last_year = t.integer("last_calendar_year", low=2004, high=2100)
    from processors.workdays import calendar_covers

    problem = calendar_covers(last_year)
    if problem:
        raise RulesError(t.key("last_calendar_year"), problem)
    w = WorkingDayRules(
        first_response_days=t.integer("first_response_days", low=1, high=365),
        resolution_days=t.integer("resolution_days", low=1, high=365),
        calendar=calendar,
        last_calendar_year=last_year,
        business_timezone=business_timezone,
    )
    t.done()
    return w


def _halls(t: _Table) -> HallRules:
    st = t.table("star_staff")
    h = HallRules(
        target=t.number("target", low=0, high=100),
        min_valid_replies=t.integer("min_valid_replies", low=1),
        months_below_target=t.integer("months_below_target", low=1, high=24),
        item_scale=t.number("item_scale", low=0),
        star_exam_mean_at_least=st.number("exam_mean_at_least", low=0, high=100),
        star_spot_check_at_least=st.number("spot_check_at_least", low=0, high=100),
    )
    st.done()
    t.done()
    return h


def _feedback(t: _Table) -> FeedbackRules:
    f = FeedbackRules(
        handled_ms=int(t.number("handled_hours", low=0) * _HOUR),
        result_ms=int(t.number("result_hours", low=0) * _HOUR),
        retain_ms=int(t.number("retain_days", low=0) * _DAY),
    )
    t.done()
    return f


def _service_requests(t: _Table) -> ServiceRequestRules:
    r = ServiceRequestRules(first_response_seconds=t.number("first_response_seconds", low=0))
    t.done()
    return r


def _churn(t: _Table) -> ChurnRules:
    st = t.table("signals")
    signals = {}
    extra: dict[str, Any] = {}
    for name in CHURN_SIGNALS:
        s = st.table(name)
        window = None if name == "spend_drop" else int(s.number("window_days", low=0) * _DAY)
        signals[name] = ChurnSignal(name, window, s.number("weight", low=0))
        if name == "repeat_complaints":
            extra["repeat_min_count"] = s.integer("min_count", low=1)
            extra["repeat_heavy_count"] = s.integer("heavy_count", low=extra["repeat_min_count"])
            extra["repeat_heavy_weight"] = s.number("heavy_weight", low=0)
        elif name == "low_satisfaction":
            extra["low_satisfaction_below"] = s.number("below", low=0, high=100)
        elif name == "detractor":
            extra["detractor_at_most"] = s.integer("at_most", low=0, high=10)
        elif name == "bounced":
            extra["bounced_min_transfers"] = s.integer("min_transfers", low=1)
        elif name == "spend_drop":
            extra["spend_drop_ratio"] = Decimal(str(s.number("ratio", low=0, high=1)))
            extra["spend_drop_prior_periods"] = s.integer("prior_periods", low=1)
            extra["spend_drop_min_prior_periods"] = s.integer(
                "min_prior_periods", low=1, high=extra["spend_drop_prior_periods"])
        s.done()
    for name in st.keys():
        if name not in signals:
            raise RulesError(st.key(name), f"unknown churn signal; expected one of "
                                           f"{', '.join(CHURN_SIGNALS)}")
    st.done()
    mt = t.table("tier_multipliers")
    multipliers = {tier: mt.number(tier, low=0) for tier in TIERS}
    mt.done()
    medium = t.number("medium_from", low=0)
    high = t.number("high_from", low=medium)
    c = ChurnRules(
        signals=MappingProxyType(signals),
        tier_multipliers=MappingProxyType(multipliers),
        cap=t.number("cap", low=0),
        medium_from=medium,
        high_from=high,
        **extra,
    )
    t.done()
    return c


def _tiers(t: _Table) -> TierRules:
    th = t.table("thresholds")
    thresholds = {tier: Decimal(str(th.number(tier, low=0))) for tier in ("diamond", "gold", "silver")}
    th.done()
    if not thresholds["diamond"] > thresholds["gold"] > thresholds["silver"]:
        raise RulesError(th.path, "thresholds must satisfy diamond > gold > silver")
    r = TierRules(
        thresholds=MappingProxyType(thresholds),
        basis_periods=t.integer("basis_periods", low=1),
        downgrade_hysteresis=Decimal(str(t.number("downgrade_hysteresis", low=0, high=1))),
        downgrades_require_approval=t.boolean("downgrades_require_approval"),
    )
    t.done()
    return r


# -- checked access -------------------------------------------------------------------------

class _Table:
    """A TOML table that remembers which keys were read, so unknown keys are reported."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, Mapping):
            raise RulesError(path or "<root>", "must be a table")
        self._data = data
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def keys(self) -> list[str]:
        return list(self._data)

    def _get(self, name: str) -> Any:
        if name not in self._data:
            raise RulesError(self.key(name), "missing")
        self._seen.add(name)
        return self._data[name]

    def table(self, name: str, optional: bool = False) -> _Table | None:
        if optional and name not in self._data:
            return None
        return _Table(self._get(name), self.key(name))

    def string(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value.strip():
            raise RulesError(self.key(name), f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise RulesError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def list(self, name: str) -> list:
        value = self._get(name)
        if not isinstance(value, list):
            raise RulesError(self.key(name), f"must be a list, got {value!r}")
        return value

    def number(self, name: str, low: float | None = None, high: float | None = None) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RulesError(self.key(name), f"must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise RulesError(self.key(name), f"must be within [{low}, {high}], got {value!r}")
        return float(value)

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RulesError(self.key(name), f"must be an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise RulesError(self.key(name), f"must be within [{low}, {high}], got {value!r}")
        return value

    def done(self) -> None:
        unknown = [k for k in self._data if k not in self._seen]
        if unknown:
            raise RulesError(self.key(unknown[0]), "unknown key (misspelt?)")
