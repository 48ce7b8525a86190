"""Traffic simulator: realistic interaction events for demos, benchmarks and tests.

    for event in simulate(20_000, seed=7):
        producer.publish(event)

The traffic is modelled on the March 2025 satisfaction report of the reference scenario
(``reference/seed-digest-A.md``): 32 cities with the eight named city scores, the national
dimension means (follow-up lowest), an AI-handled share near 45 % nationally and above 60 %
in the leading cities, slower agents and more part-time handling in the bottom cities, and a
+40 % surge of logistics complaints in the last month of the simulated span.

Output: only interaction events (never derived ones), as plain dicts in the JSON form of the
contract (``domain.md``): ``occurred_at`` an ISO-8601 UTC string with milliseconds, ``spend``
a 2-decimal string, optional fields omitted, ``event_id`` a UUID drawn from the seeded
generator. The stream is in non-decreasing ``occurred_at`` order, so every customer's events
are in time order, and the same seed gives the same events, ids included.

How it works: a discrete-event simulation over one priority queue keyed by event time.
Contacts arrive as a Poisson process shaped by the hour of day and the month; a contact may
be followed by a survey and may open a complaint, whose whole lifecycle (acknowledged,
escalated, resolved, feedback, follow-up call, closed, sometimes reopened) is scheduled when it
is filed. Month boundaries close every customer's billing period and schedule the month's
plan changes, port-out / cancellation requests and tier decisions. Events leave the queue in
time order; ``simulate`` stops after exactly the requested number.

Service halls (seed: the Urumqi hall study, ``reference/seed-digest-B.md`` §3.2, §5): every city
has halls in proportion to its customers (one per ~60, at least one), grouped by three into
districts (Urumqi's are the study's: 南湖东, 延安路, ... in 新市区, 沙区, 天北). Customers visit a
hall of their city about once a month (business hours); the share served by a handheld
device rises from 10% in the first month to 30% in the last, 97.5-98% of matters are settled
on site. About 65% answer the SMS survey (7% of replies blank or garbled: not valid). The
waiting item moves from 92.3 in the first month to 96.6 in the last; about one hall in five is a
"key improvement" hall whose satisfaction stays in 93-95.5, below the 96.0 target, for the
first three months (at least), the others score 97-98.5. From the second month supervisors
receive customers in each hall weekly (on-site resolution 97.5-98%); every month each hall's
staff take the business exam (``AL`` + 6 digits, as the study's staff ids) and districts, halls
and staff are spot-checked. Customers' feedback (意见反馈) is handled within 24 h and answered
within 72 h, mostly; a few outages (incidents, levels 1-3) hit one to three cities and bring a
surge of contacts there while they last. Operational events (shifts, spot checks, exams,
incidents) have no customer_id. Live mode (``simulate_live``) has no hall traffic.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

try:
    from zoneinfo import ZoneInfo

    BUSINESS_TZ: Any = ZoneInfo("Asia/Shanghai")
except Exception:  # no tz database: China has had no daylight saving since 1991
    BUSINESS_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

__all__ = ["CITIES", "INTERACTION_TYPES", "SimulationConfig", "simulate", "simulate_live"]

INTERACTION_TYPES = (
    "contact.completed", "complaint.filed", "complaint.acknowledged", "complaint.escalated",
    "complaint.resolved", "complaint.feedback_delivered", "complaint.followed_up",
    "complaint.closed", "complaint.reopened", "survey.responded", "billing.period_closed",
    "plan.changed", "account.port_out_requested", "account.cancellation_requested",
    "tier.change_decided",
    "hall.visit_completed", "hall.survey_responded", "supervision.onsite_shift",
    "quality.spot_check_recorded", "staff.exam_scored", "feedback.received", "feedback.handled",
    "feedback.result_reported", "incident.detected", "incident.resolved",
)
OPERATIONAL_TYPES = ("supervision.onsite_shift", "quality.spot_check_recorded",
                     "staff.exam_scored", "incident.detected", "incident.resolved")

# City code, March 2025 composite level, relative customer base. The eight named levels are
# the report's; the other 24 lie strictly between the bottom three and the top five.
CITIES: tuple[tuple[str, float, float], ...] = (
    ("beijing", 92.1, 5.5), ("shanghai", 91.5, 5.5), ("shenzhen", 90.8, 4.0),
    ("hangzhou", 90.2, 3.0), ("guangzhou", 89.7, 4.5),
    ("chengdu", 89.4, 5.0), ("nanjing", 89.1, 3.5), ("suzhou", 88.9, 3.5),
    ("tianjin", 88.6, 3.5), ("wuhan", 88.3, 4.0), ("xiamen", 88.1, 1.8),
    ("qingdao", 87.9, 2.5), ("chongqing", 87.7, 5.5), ("xian", 87.4, 3.5),
    ("changsha", 87.2, 3.0), ("hefei", 87.0, 2.5), ("jinan", 86.8, 2.5),
    ("dalian", 86.6, 2.0), ("fuzhou", 86.4, 2.0), ("zhengzhou", 86.1, 3.5),
    ("shenyang", 85.8, 3.0), ("kunming", 85.5, 2.5), ("nanchang", 85.3, 2.2),
    ("harbin", 85.0, 2.5), ("changchun", 84.8, 2.2), ("shijiazhuang", 84.5, 2.5),
    ("nanning", 84.3, 2.2), ("taiyuan", 84.0, 2.0), ("guiyang", 83.6, 2.0),
    ("urumqi", 83.2, 1.8), ("lanzhou", 82.9, 1.6), ("hohhot", 82.5, 1.4),
)
_LEADING = {"beijing": 0.66, "shanghai": 0.65, "shenzhen": 0.64, "hangzhou": 0.62,
            "guangzhou": 0.61}
_BOTTOM = {"urumqi": 0.30, "lanzhou": 0.28, "hohhot": 0.27}
_PART_TIME = {"lanzhou": 0.50, "urumqi": 0.22, "hohhot": 0.25}
_DIALECT = {"hohhot": 5.0, "urumqi": 4.0, "lanzhou": 2.0}  # dialect complaint weight factor

# March 2025 national dimension means minus their weighted composite 87.38.
_COMPOSITE = 87.38
_OFF_SPEED, _OFF_RESOLUTION, _OFF_ATTITUDE, _OFF_FOLLOW_UP = (
    89.2 - _COMPOSITE, 85.7 - _COMPOSITE, 90.5 - _COMPOSITE, 82.4 - _COMPOSITE)
_W = (0.30, 0.40, 0.20, 0.10)  # default composite weights (domain.md)

# Contacts per local hour of day (Asia/Shanghai), normalised to mean 1 below.
_HOURS = (0.15, 0.08, 0.05, 0.04, 0.04, 0.08, 0.25, 0.6, 1.1, 1.6, 1.8, 1.7,
          1.3, 1.4, 1.7, 1.7, 1.6, 1.4, 1.1, 1.1, 1.2, 1.0, 0.7, 0.35)
_HOUR_MEAN = sum(_HOURS) / 24
_HOUR_REL = tuple(h / _HOUR_MEAN for h in _HOURS)

_AI_CHANNELS = (("ai_assistant", 40), ("ivr", 15), ("online_chat", 15), ("wechat", 15),
                ("app", 12), ("web", 3))
_AGENT_CHANNELS = (("phone", 38), ("online_chat", 14), ("wechat", 12), ("app", 9),
                   ("service_hall", 8), ("email", 4), ("sms", 3), ("field_visit", 3),
                   ("web", 3), ("ivr", 2), ("weibo", 2), ("social_media", 2))
_OUTBOUND_CHANNELS = (("phone", 85), ("wechat", 10), ("field_visit", 5))
# Channel -> (median wait s, asynchronous?, median handle s) for agents.
_TIMING = {
    "phone": (40, False, 300), "ivr": (50, False, 240), "online_chat": (25, False, 480),
    "wechat": (25, False, 420), "app": (25, False, 360), "web": (30, False, 400),
    "service_hall": (420, False, 600), "field_visit": (900, False, 2700),
    "email": (3600, True, 600), "sms": (2400, True, 180), "weibo": (3000, True, 600),
    "social_media": (3000, True, 600),
}
_AI_CATEGORIES = (("inquiry", 47), ("billing", 21), ("service_request", 16), ("technical", 10),
                  ("sales", 3), ("other", 3))
_AGENT_CATEGORIES = (("inquiry", 27), ("service_request", 19), ("billing", 13),
                     ("technical", 18), ("sales", 6), ("retention", 5), ("other", 12))
_OUTBOUND_CATEGORIES = (("sales", 35), ("retention", 30), ("service_request", 20),
                        ("other", 15))
_P_COMPLAINT = {"ai": 0.05, "agent": 0.13}       # share of contacts about a complaint
_P_FILE = {"ai": 0.5, "agent": 0.7}              # ... that open a complaint
_COMPLAINT_CATEGORIES = (("billing", 22), ("network", 22), ("logistics", 15),
                         ("service_attitude", 12), ("product", 14),
                         ("dialect_misunderstanding", 5), ("other", 10))
_RESOLUTIONS = (("fixed", 45), ("explained", 28), ("compensated", 17), ("rejected", 10))
_SURVEY_CHANNELS = (("sms", 50), ("wechat", 30), ("app", 12), ("web", 8))
_PLAN_CHANNELS = (("app", 40), ("phone", 25), ("service_hall", 20), ("web", 15))
_PORT_CHANNELS = (("sms", 35), ("service_hall", 35), ("phone", 20), ("app", 10))
_CANCEL_CHANNELS = (("service_hall", 50), ("phone", 35), ("app", 15))
_PORT_REASONS = ("price", "network_quality", "service", "competitor_offer", "relocation")
_CANCEL_REASONS = ("relocation", "price", "service", "no_longer_needed")

_PLAN_PRICES = (38, 58, 88, 128, 198, 298, 398, 598, 888, 1288, 1988, 2888, 3888, 5888, 8888)
_PLAN_FAMILIES = ("5g", "fusion")

_SURVEY_PER_CONTACT = 0.24
_SURVEY_PER_COMPLAINT = 0.45
_SPILL = 0.02  # share of events expected after the span, so the last billing close is kept

# Service halls (module docstring).
_CUSTOMERS_PER_HALL = 60
_HALL_VISITS_PER_MONTH = 1.0          # per customer
_SMS_REPLY = 0.65                     # visits answered
_SMS_INVALID = 0.07                   # replies blank or garbled
_HANDHELD_FIRST, _HANDHELD_LAST = 0.10, 0.30
_SELF_SERVICE = 0.05
_RESOLVED_ON_SITE = 0.978
_WAITING_FIRST, _WAITING_LAST = 92.3, 96.6   # the waiting item, percent
_KEY_HALL_SHARE = 0.2
_FEEDBACK_PER_MONTH = 0.03            # per customer
_INCIDENTS_PER_MONTH = 2
# Hall and feedback events per customer and month (for the volume calibration).
_HALL_EVENTS = (_HALL_VISITS_PER_MONTH * (1 + _SMS_REPLY) + _FEEDBACK_PER_MONTH * 2.95 + 0.05)
_XJ_DISTRICTS = ("xinshi", "shaqu", "tianbei")
_XJ_HALLS = ("nanhudong", "yananlu", "yingbinlu", "beijinglu", "pigechang", "zhongquan",
             "jiefangnan", "xibeilu", "qiantang")
_BUSINESS_TYPES = (("bill_payment", 22), ("inquiry", 20), ("plan_change", 16),
                   ("new_subscription", 12), ("broadband", 12), ("device_instalment", 8),
                   ("other", 10))
_FEEDBACK_CHANNELS = (("app", 35), ("phone", 30), ("wechat", 20), ("service_hall", 10),
                      ("web", 5))
_INCIDENT_SERVICES = (("network", 55), ("billing", 15), ("app", 20), ("other", 10))

_SECOND, _MINUTE, _HOUR, _DAY = 1000, 60_000, 3_600_000, 86_400_000
_EPOCH = datetime(1970, 1, 1)

# Queue item kinds.
# Live mode: the share of primary arrivals on the service-hall side (visits, feedback, shifts,
# spot checks); with the SMS replies and feedback steps that follow, about a tenth of events.
_LIVE_HALL_SHARE = 0.06
_EMIT, _CONTACT, _MONTH, _SLICE, _LIVE_PRIMARY, _HALL_VISIT = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``customers`` defaults to events // 25 (at least 50)."""

    seed: int = 7
    customers: int | None = None
    start: datetime = field(default_factory=lambda: datetime(2025, 1, 1, tzinfo=BUSINESS_TZ))
    months: int = 3
    logistics_surge: float = 0.40  # extra logistics complaints in the last month
    monthly_growth: float = 0.06   # contact volume growth per month
    ai_share: float = 0.45         # national share of contacts handled by AI

    def __post_init__(self) -> None:
        if self.months < 1:
            raise ValueError("months must be >= 1")
        if self.customers is not None and self.customers < 1:
            raise ValueError("customers must be >= 1")


def _cum(pairs: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], list[float]]:
    names = tuple(p[0] for p in pairs)
    acc, cum = 0.0, []
    for _, w in pairs:
        acc += w
        cum.append(acc)
    return names, cum


class _City:
    __slots__ = ("code", "level", "ai", "part_time", "slow", "unhappy", "center", "seats",
                 "cat_names", "cat_cum", "surge_cat_cum", "surge_factor", "ack_late",
                 "res_late")


def _cities(ai_share: float, weights: list[float], surge: float) -> list[_City]:
    """Per-city behaviour derived from the city's level; ``surge`` = extra logistics share."""
    out = []
    for code, level, _ in CITIES:
        c = _City()
        c.code, c.level = code, level
        if code in _LEADING:
            c.ai = _LEADING[code]
        elif code in _BOTTOM:
            c.ai = _BOTTOM[code]
        else:
            c.ai = 0.34 + (level - 83.2) / (89.7 - 83.2) * 0.18
        c.part_time = _PART_TIME.get(code, 0.06 if code in _LEADING else 0.12)
        c.slow = 0.8 + max(0.0, 91.0 - level) * 0.12 + (0.8 if code in _BOTTOM else 0.0)
        c.unhappy = 0.015 + max(0.0, 90.0 - level) * 0.003
        # Centre of the ordinary surveys: the unhappy tail, the clipping at 100 and the
        # worse contacts of slow cities pull the mean down; this puts it back near `level`.
        c.center = (level - c.unhappy * 40) / (1 - c.unhappy) + 1.4 + 0.6 * (c.slow - 0.8)
        c.seats = max(8, int(level - 70) * 3)
        c.ack_late = 0.03 + 0.05 * (c.slow - 0.8)
        c.res_late = 0.05 + 0.06 * (c.slow - 0.8)
        cats = tuple((n, w * _DIALECT.get(code, 1.0) if n == "dialect_misunderstanding" else w)
                     for n, w in _COMPLAINT_CATEGORIES)
        c.cat_names, c.cat_cum = _cum(cats)
        surged = tuple((n, w * (1 + surge) if n == "logistics" else w) for n, w in cats)
        c.surge_cat_cum = _cum(surged)[1]
        # More complaint contacts in the surge month, so that logistics complaints grow by
        # `surge` while the other categories keep their volume.
        c.surge_factor = c.surge_cat_cum[-1] / c.cat_cum[-1]
        out.append(c)
    # Scale the unnamed cities so that the customer-weighted AI share meets the target.
    named = set(_LEADING) | set(_BOTTOM)
    fixed = sum(w * c.ai for w, c in zip(weights, out) if c.code in named)
    free = sum(w * c.ai for w, c in zip(weights, out) if c.code not in named)
    if free > 0:
        k = max(0.0, (ai_share * sum(weights) - fixed) / free)
        for c in out:
            if c.code not in named:
                c.ai = min(0.95, c.ai * k)
    return out


class _Population:
    """Customers; customer i's attributes depend on the seed and i only."""

    def __init__(self, seed: int, count: int, months: int):
        rng = random.Random(f"cxledger-population:{seed}")
        weights = [w for _, _, w in CITIES]
        city_cum = _cum(tuple((c, w) for c, _, w in CITIES))[1]
        total_w = city_cum[-1]
        n_cities = len(CITIES)
        self.ids = [f"c-{i + 1:06d}" for i in range(count)]
        self.city: list[int] = []
        self.risk: list[bool] = []
        self.base: list[float] = []
        self.plan: list[int] = []
        self.family: list[int] = []
        self.drop_month: list[int] = []
        self.drop_factor: list[float] = []
        act: list[float] = []
        grump: list[float] = []
        for i in range(count):
            r = [rng.random() for _ in range(9)]
            g = [rng.gauss(0.0, 1.0) for _ in range(4)]
            # The first 32 customers cover every city once; the rest follow the city weights.
            city = i if i < n_cities else bisect_right(city_cum, r[0] * total_w)
            self.city.append(min(city, n_cities - 1))
            risk = r[1] < 0.07
            self.risk.append(risk)
            base = max(18.0, 300.0 * math.exp(1.43 * g[0]))  # lognormal: ~5/15/30/50 % tiers
            self.base.append(base)
            idx = max(0, bisect_right(_PLAN_PRICES, base * 0.85) - 1)
            self.plan.append(idx)
            self.family.append(0 if r[2] < 0.6 else 1)
            a = math.exp(0.8 * g[1]) * (1.5 if risk else 1.0) * (1.3 if base >= 1000 else 1.0)
            act.append(a)
            grump.append(math.exp(0.6 * g[2]) * (2.5 if risk else 1.0))
            drops = months >= 2 and r[3] < (0.35 if risk else 0.05)
            self.drop_month.append(1 + int(r[4] * (months - 1)) if drops else -1)
            self.drop_factor.append(0.30 + 0.35 * r[5])
        # Complaint propensity normalised to mean 1 over contacts.
        tot_act = sum(act) or 1.0
        mean_grump = sum(a * g for a, g in zip(act, grump)) / tot_act or 1.0
        self.grump = [g / mean_grump for g in grump]
        self.act_cum = list(_accumulate(act))
        self.act_total = self.act_cum[-1] if act else 0.0
        self.mult = [1.0] * count
        self.hist: list[list[float]] = [[] for _ in range(count)]
        self.billed_live = [False] * count
        self.city_weights = weights

    def __len__(self) -> int:
        return len(self.ids)


def _accumulate(values: list[float]) -> Iterator[float]:
    acc = 0.0
    for v in values:
        acc += v
        yield acc


def _month_starts(start: datetime, count: int) -> list[datetime]:
    """start, then the first instant of each following calendar month (business zone)."""
    tz = start.tzinfo
    out = [start]
    y, m = start.year, start.month
    for _ in range(count):
        m += 1
        if m > 12:
            y, m = y + 1, 1
        out.append(datetime(y, m, 1, tzinfo=tz))
    return out


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


class _Engine:
    """One simulation run: a time-ordered queue of pending events."""

    def __init__(self, cfg: SimulationConfig, pop: _Population, rng: random.Random, *,
                 start_ms: int, live_rate: float | None = None, end_ms: int | None = None):
        self.cfg, self.pop, self.rng = cfg, pop, rng
        self.live = live_rate is not None
        self.live_rate = live_rate or 0.0
        self.end_ms = end_ms
        self.cities = _cities(cfg.ai_share, pop.city_weights,
                              0.0 if self.live else cfg.logistics_surge)
        self.heap: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.bucket: dict[int, int] = {}
        self.tag = f"{rng.getrandbits(24):06x}"
        self.n_contact = self.n_complaint = self.n_survey = 0
        start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=BUSINESS_TZ)
        off = start.utcoffset()
        self.offset_ms = int(off.total_seconds() * 1000) if off else 0
        self.start_ms = start_ms
        if not self.live:
            months = _month_starts(start, cfg.months + 24)
            self.bounds = [_ms(d) for d in months]
            self.periods = [f"{d.year:04d}-{d.month:02d}" for d in months]
            self.last_month = cfg.months - 1
            growth = [(1 + cfg.monthly_growth) ** min(k, self.last_month)
                      for k in range(len(self.bounds))]
            self.growth = growth
        self.contact_rate = self.rate_max = 0.0  # per ms; set by start_batch
        if self.live:
            self.last_month = 0  # live is "now": the halls as in the last month of a span
        self.halls = _halls(cfg.seed, self.cities, pop)
        self.city_halls: dict[int, list[_Hall]] = {}
        for h in self.halls:
            self.city_halls.setdefault(h.city, []).append(h)
        self.city_customers: dict[int, list[int]] = {}
        for i, city in enumerate(pop.city):
            self.city_customers.setdefault(city, []).append(i)
        self.n_visit = self.n_feedback = self.n_ops = 0
        self._iso_sec = -1
        self._iso_prefix = ""

    # -- calibration ---------------------------------------------------------------------
    def _events_per_contact(self) -> float:
        ai = self.cfg.ai_share
        p_file = (ai * _P_COMPLAINT["ai"] * _P_FILE["ai"]
                  + (1 - ai) * _P_COMPLAINT["agent"] * _P_FILE["agent"])
        lifecycle = 6.25 + _SURVEY_PER_COMPLAINT * 0.88
        # 0.985: measured (complaints filed near the end of the span finish after it).
        return (1.0 + _SURVEY_PER_CONTACT + p_file * lifecycle) * 0.985

    def _calibrate(self, n: int) -> None:
        """Contact rate (per ms, before month and hour shaping) giving ~n events."""
        cfg = self.cfg
        other = len(self.pop) * cfg.months * (1.06 + _HALL_EVENTS)
        contacts = max((n * (1 - _SPILL) - other) / self._events_per_contact(),
                       0.3 * n / self._events_per_contact())
        shaped = sum(self.growth[k] * (self.bounds[k + 1] - self.bounds[k])
                     for k in range(cfg.months))
        self.contact_rate = contacts / shaped if shaped else 0.0
        self.rate_max = self.contact_rate * max(self.growth) * max(_HOUR_REL)

    # -- queue ---------------------------------------------------------------------------
    def push(self, t: int, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def emit(self, t: int, data: dict[str, Any]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, _EMIT, data))
        if self.live:
            k = (t - self.start_ms) // _SECOND
            self.bucket[k] = self.bucket.get(k, 0) + 1

    def iso(self, ms: int) -> str:
        s, r = divmod(ms, 1000)
        if s != self._iso_sec:
            self._iso_sec = s
            self._iso_prefix = (_EPOCH + timedelta(seconds=s)).isoformat()
        return f"{self._iso_prefix}.{r:03d}+00:00"

    def new_id(self) -> str:
        b = self.rng.getrandbits(128)
        b = (b & ~(0xF000 << 64)) | (0x4000 << 64)   # version 4
        b = (b & ~(0xC000 << 48)) | (0x8000 << 48)   # RFC 4122 variant
        h = "%032x" % b
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def month_of(self, t: int) -> int:
        if self.live:
            return 0
        return min(bisect_right(self.bounds, t) - 1, self.last_month)

    def pick(self, pairs_cum: tuple[tuple[str, ...], list[float]]) -> str:
        names, cum = pairs_cum
        return names[bisect_right(cum, self.rng.random() * cum[-1])]

    # -- run -----------------------------------------------------------------------------
    def run(self, limit: int | None) -> Iterator[dict[str, Any]]:
        heap, pop_ = self.heap, heapq.heappop
        emitted = 0
        end = self.end_ms
        handlers = {_CONTACT: self.on_contact_arrival, _MONTH: self.on_month,
                    _SLICE: self.on_slice, _LIVE_PRIMARY: self.on_live_primary,
                    _HALL_VISIT: self.on_hall_visit}
        new_id, iso = self.new_id, self.iso
        while heap:
            if limit is not None and emitted >= limit:
                return
            t, _, kind, data = pop_(heap)
            if end is not None and t >= end:
                return
            if kind == _EMIT:
                data["event_id"] = new_id()
                data["occurred_at"] = iso(t)
                emitted += 1
                yield data
            else:
                handlers[kind](t, data)

    def start_batch(self, events: int) -> None:
        self._calibrate(events)
        if self.contact_rate > 0:
            self.push(self.next_arrival(self.bounds[0]), _CONTACT, None)
        self.plan_month(0)
        self.push(self.bounds[1], _MONTH, 1)

    def start_live(self) -> None:
        self.push(self.start_ms, _SLICE, 0)

    # -- arrivals ------------------------------------------------------------------------
    def next_arrival(self, t: float) -> int:
        rng, rmax = self.rng, self.rate_max
        growth, bounds, last = self.growth, self.bounds, self.last_month
        norm = max(growth) * max(_HOUR_REL)
        off = self.offset_ms
        while True:
            t += rng.expovariate(rmax)
            ti = int(t)
            k = min(bisect_right(bounds, ti) - 1, last)
            hour = ((ti + off) // _HOUR) % 24
            if rng.random() * norm < growth[k] * _HOUR_REL[hour]:
                return ti

    def on_contact_arrival(self, t: int, _: Any) -> None:
        self.contact(t, self.pick_customer())
        self.push(self.next_arrival(t), _CONTACT, None)

    def pick_customer(self) -> int:
        pop = self.pop
        i = bisect_right(pop.act_cum, self.rng.random() * pop.act_total)
        return min(i, len(pop) - 1)

    def on_slice(self, t: int, k: int) -> None:
        """Live mode: primaries for the next second fill up to the target rate."""
        rng = self.rng
        scheduled = self.bucket.pop(k, 0)
        mean = max(self.live_rate * 0.05, self.live_rate - scheduled)
        n = _poisson(rng, mean)
        for _ in range(n):
            self.push(t + int(rng.random() * _SECOND), _LIVE_PRIMARY, None)
        nxt = t + _SECOND
        if self.end_ms is None or nxt < self.end_ms:
            self.push(nxt, _SLICE, k + 1)

    def on_live_primary(self, t: int, _: Any) -> None:
        rng, pop = self.rng, self.pop
        r = rng.random()
        i = self.pick_customer()
        if r < _LIVE_HALL_SHARE:  # service halls: a visit (its SMS reply later), feedback, ...
            self.live_hall_activity(t, i, r / _LIVE_HALL_SHARE)
        elif r < 0.955:
            self.contact(t, i)
        elif r < 0.995:
            # The previous month's billing run, customer by customer (once each).
            j = int(rng.random() * len(pop))
            if not pop.billed_live[j]:
                pop.billed_live[j] = True
                d = datetime.fromtimestamp(t / 1000, BUSINESS_TZ).replace(day=1) - timedelta(days=1)
                self.billing(t, j, f"{d.year:04d}-{d.month:02d}", 0)
            else:
                self.contact(t, i)
        elif r < 0.9988:
            self.plan_change(t, i, self.rng.choice(("upgrade", "downgrade", "lateral")))
        elif r < 0.9993:
            self.account_request(t, i, port_out=pop.risk[i] or rng.random() < 0.5)
        elif r < 0.9996:
            self.account_request(t, i, port_out=False)
        else:
            self.tier_decision(t, i)

    def live_hall_activity(self, t: int, i: int, r: float) -> None:
        """Live mode's share of the service-hall side (``r`` uniform in [0, 1)): mostly visits,
        some feedback, and now and then a supervisor's shift or a spot check of a hall."""
        if r < 0.84:
            self.on_hall_visit(t, i)
        elif r < 0.97:
            self.feedback(t, i)
        else:
            h = self.halls[int(self.rng.random() * len(self.halls))]
            city = self.cities[h.city].code
            if r < 0.99:
                self.onsite_shift(t, h, city)
            else:
                self.spot_check(t, "hall", h.hall_id, city, h.skill)

    # -- contacts ------------------------------------------------------------------------
    def operational(self, event_type: str, city: str, channel: str,
                    agent: str | None = None) -> dict[str, Any]:
        """An operational event: no customer (domain.md)."""
        d: dict[str, Any] = {"event_id": None, "event_type": event_type, "occurred_at": None,
                             "channel": channel, "city": city}
        if agent is not None:
            d["agent_id"] = agent
        return d

    def base(self, event_type: str, i: int, channel: str, agent: str | None,
             corr: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"event_id": None, "event_type": event_type, "occurred_at": None,
                             "customer_id": self.pop.ids[i], "channel": channel,
                             "city": self.cities[self.pop.city[i]].code}
        if agent is not None:
            d["agent_id"] = agent
        if corr is not None:
            d["correlation_id"] = corr
        return d

    def agent_id(self, c: _City, part_time: bool) -> str:
        n = 1 + int(self.rng.random() * c.seats)
        return f"{'pt' if part_time else 'ag'}-{c.code}-{n:03d}"

    def contact(self, t: int, i: int) -> None:
        rng, pop = self.rng, self.pop
        c = self.cities[pop.city[i]]
        risk = pop.risk[i]
        rnd = rng.random
        self.n_contact += 1
        contact_id = f"ct-{self.tag}-{self.n_contact:08d}"
        # Intent voiced by the customer.
        r = rnd()
        if risk:
            intent = ("port_out" if r < 0.06 else "cancel" if r < 0.11 else
                      "downgrade" if r < 0.19 else "upgrade" if r < 0.20 else "none")
        else:
            intent = ("port_out" if r < 0.004 else "cancel" if r < 0.008 else
                      "downgrade" if r < 0.018 else "upgrade" if r < 0.033 else "none")
        outbound = rnd() < 0.06
        if outbound:
            handler = "agent"
        elif rnd() < c.ai / 0.94:
            handler = "ai"
        else:
            handler = "part_time_agent" if rnd() < c.part_time else "agent"
        kind = "ai" if handler == "ai" else "agent"
        # Category: complaints first (propensity, logistics surge), then the ordinary mix.
        surge = self.month_of(t) == self.last_month if not self.live else False
        p_c = _P_COMPLAINT[kind] * pop.grump[i] * (c.surge_factor if surge else 1.0)
        if outbound:
            category = self.pick(_CAT_OUT)
        elif rnd() < p_c:
            category = "complaint"
        else:
            category = self.pick(_CAT_AI if kind == "ai" else _CAT_AGENT)
        if category != "complaint" and intent != "none" and rnd() < 0.6:
            category = "sales" if intent == "upgrade" else "retention"
        # Channel and timings.
        if handler == "ai":
            channel = self.pick(_CH_AI)
            wait = int(rng.expovariate(1.0))
            first = wait + 1 + min(59, int(rng.expovariate(1 / 6.0)))
            handle = int(150 * math.exp(0.6 * rng.gauss(0, 1)))
            transfers = 0 if rnd() < 0.88 else 1
            agent = "ai-assistant"
        else:
            channel = self.pick(_CH_OUT if outbound else _CH_AGENT)
            w_med, asynchronous, h_med = _TIMING[channel]
            slow = c.slow * (1.2 if handler == "part_time_agent" else 1.0)
            if outbound:
                wait = int(rng.expovariate(1 / 8.0))
                first = wait + 2
            else:
                wait = int(w_med * slow * math.exp(0.8 * rng.gauss(0, 1)))
                first = wait if asynchronous else wait + 3 + int(rnd() * 20)
            handle = int(h_med * math.exp(0.55 * rng.gauss(0, 1))
                         * (1.3 if handler == "part_time_agent" else 1.0)
                         * (1.4 if category in ("complaint", "technical") else 1.0))
            r = rnd()
            p3 = 0.025 * c.slow
            transfers = (3 + int(rng.expovariate(1.2)) if r < p3 else 2 if r < p3 + 0.06 else
                         1 if r < p3 + 0.26 else 0)
            agent = self.agent_id(c, handler == "part_time_agent")
        p_rfc = (0.80 if handler == "ai" else 0.88) - 0.06 * (c.slow - 0.8)
        if handler == "part_time_agent":
            p_rfc -= 0.08
        if transfers >= 2:
            p_rfc -= 0.2
        if category == "complaint":
            p_rfc -= 0.3
        elif category == "technical":
            p_rfc -= 0.08
        rfc = rnd() < p_rfc
        files = category == "complaint" and rnd() < _P_FILE[kind]
        corr = None
        if files:
            self.n_complaint += 1
            corr = f"case-{self.tag}-{self.n_complaint:07d}"
        d = self.base("contact.completed", i, channel, agent, corr)
        d["contact_id"] = contact_id
        d["direction"] = "outbound" if outbound else "inbound"
        d["category"] = category
        d["handler"] = handler
        d["wait_seconds"] = wait
        d["first_response_seconds"] = first
        d["handle_seconds"] = handle
        d["transfers"] = transfers
        d["resolved_first_contact"] = rfc
        d["intent"] = intent
        self.emit(t, d)
        if files:
            self.complaint(t + 5 * _SECOND + int(rnd() * 85 * _SECOND), i, c, channel,
                           agent if handler != "ai" else self.agent_id(c, False), corr)
        if rnd() < _SURVEY_PER_CONTACT:
            q = (1.5 if rfc else -6.0) - (7.0 if transfers >= 3 else 0.0)
            sync_first = first if not (handler != "ai" and _TIMING[channel][1]) else first / 60
            pen = 0.0 if sync_first <= 60 else min(14.0, 3.0 * math.log(sync_first / 60))
            if channel == "phone" and rnd() < 0.3:
                st, sch = t + 20 * _SECOND + int(rnd() * 100 * _SECOND), "ivr"
            else:
                delay = min(48 * _HOUR, int(30 * _MINUTE * math.exp(rng.gauss(0, 1))))
                st, sch = t + _MINUTE + delay, self.pick(_CH_SURVEY)
            self.survey(st, i, c, sch, agent if handler != "ai" else None, corr, contact_id,
                        q, pen)

    # -- surveys -------------------------------------------------------------------------
    def survey(self, t: int, i: int, c: _City, channel: str, agent: str | None,
               corr: str | None, subject: str, q: float, pen: float) -> None:
        rng = self.rng
        rnd, gauss = rng.random, rng.gauss
        self.n_survey += 1
        u = c.unhappy + (0.05 if q < -5 else 0.0)
        if rnd() < u:
            base = 22 + rnd() * 36
        else:
            base = c.center + q + gauss(0, 3.5)
        dims = [base + _OFF_SPEED - pen + gauss(0, 3.0), base + _OFF_RESOLUTION + gauss(0, 3.0),
                base + _OFF_ATTITUDE + gauss(0, 3.0), base + _OFF_FOLLOW_UP + gauss(0, 3.5)]
        scores: list[float | None] = [round(min(100.0, max(0.0, x)), 1) for x in dims]
        if rnd() < 0.03:
            r = rnd()
            scores[3 if r < 0.4 else 0 if r < 0.6 else 1 if r < 0.8 else 2] = None
        num = den = 0.0
        for s, w in zip(scores, _W):
            if s is not None:
                num += s * w
                den += w
        comp = num / den
        nps = None
        if rnd() >= 0.10:
            nps = int(round(10.4 - (100 - comp) / 4.2 + gauss(0, 1.3)))
            nps = 0 if nps < 0 else 10 if nps > 10 else nps
        d = self.base("survey.responded", i, channel, agent, corr)
        d["survey_id"] = f"sv-{self.tag}-{self.n_survey:08d}"
        d["subject_id"] = subject
        d["response_speed"], d["resolution_efficiency"], d["attitude"], d["follow_up"] = scores
        d["nps"] = nps
        self.emit(t, d)

    # -- complaints ----------------------------------------------------------------------
    def complaint(self, t0: int, i: int, c: _City, channel: str, agent: str,
                  corr: str) -> None:
        rng = self.rng
        rnd = rng.random
        cid = "cp" + corr[4:]
        surge = not self.live and self.month_of(t0) == self.last_month
        cum = c.surge_cat_cum if surge else c.cat_cum
        category = c.cat_names[bisect_right(cum, rnd() * cum[-1])]
        r = rnd()
        complex_w = 0.22 if category in ("network", "product") else 0.10
        severity = "urgent" if r < 0.15 else "complex" if r < 0.15 + complex_w else "normal"

        def ev(event_type: str, t: int, ch: str = channel, who: str | None = agent,
               **extra: Any) -> None:
            d = self.base(event_type, i, ch, who, corr)
            d["complaint_id"] = cid
            d.update(extra)
            self.emit(t, d)

        ev("complaint.filed", t0, category=category, severity=severity)
        # First response.
        sla = 5 * _MINUTE if severity == "urgent" else 2 * _HOUR
        late_any = False
        if rnd() < c.ack_late:
            late_any = True
            ta = t0 + int(sla * (1.05 + rnd() * 2 * c.slow))
        else:
            ta = t0 + 10 * _SECOND + int(sla * 0.95 * rnd() ** 1.6)
        ev("complaint.acknowledged", ta)
        if rnd() < 0.02:  # stuck: never resolved (past deadline on the dashboards)
            return
        # Resolution.
        sla_res = (4 * _HOUR if severity == "urgent" else 48 * _HOUR if severity == "complex"
                   else 24 * _HOUR)
        if rnd() < c.res_late:
            late_any = True
            tr = t0 + int(sla_res * (1.05 + rnd() * 1.5))
        else:
            tr = t0 + int(sla_res * (0.08 + 0.88 * rnd() ** 1.3))
        tr = max(tr, ta + _MINUTE + int(rnd() * 20 * _MINUTE))
        p_esc = 0.25 if severity == "complex" else 0.12 if severity == "urgent" else 0.08
        if rnd() < p_esc:
            level = 2 if severity == "complex" and rnd() < 0.3 else 1
            te = ta + int((tr - ta) * (0.2 + 0.5 * rnd()))
            ev("complaint.escalated", te, level=level, reason="manual")
        resolution = self.pick(_RES)
        end = self.resolve_cycle(ev, tr, category, resolution, late_any, reopened=False,
                                 i=i, c=c, cid=cid, corr=corr)
        tc, outcome = end
        p_reopen = 0.18 if outcome == "unsatisfied" else 0.025
        if rnd() < p_reopen:
            t_re = tc + 6 * _HOUR + int(rnd() * 6 * _DAY)
            ev("complaint.reopened", t_re)
            tr2 = t_re + int(sla_res * (0.1 + 0.8 * rnd()))
            self.resolve_cycle(ev, tr2, category, self.pick(_RES), late_any, reopened=True,
                               i=i, c=c, cid=cid, corr=corr)

    def resolve_cycle(self, ev: Callable[..., None], tr: int, category: str, resolution: str,
                      late_any: bool, *, reopened: bool, i: int, c: _City, cid: str,
                      corr: str) -> tuple[int, str]:
        """resolved -> feedback_delivered -> followed_up -> closed; (closed time, outcome)."""
        rng = self.rng
        rnd = rng.random
        ev("complaint.resolved", tr, resolution=resolution)
        if category == "logistics":
            tf = tr + (int((1 + rnd() * 13) * _MINUTE) if rnd() < 0.9
                       else int((16 + rnd() * 74) * _MINUTE))
        elif rnd() < 0.94:
            tf = tr + min(23 * _HOUR, int(40 * _MINUTE * math.exp(rng.gauss(0, 1))))
        else:
            tf = tr + int((24 + rnd() * 16) * _HOUR)
        ev("complaint.feedback_delivered", tf)
        if rnd() < 0.97:
            if rnd() < 0.88:
                tu = tr + max(tf - tr, 0) + int((2 + rnd() * 66) * _HOUR)
            else:
                tu = tr + int((73 + rnd() * 47) * _HOUR)
            tu = max(tu, tf + _MINUTE)
            r = rnd()
            p_unsat = 0.12 + (0.15 if resolution == "rejected" else 0) + (0.1 if late_any else 0)
            outcome = "unreachable" if r < 0.10 else "unsatisfied" if r < 0.10 + p_unsat \
                else "satisfied"
            ev("complaint.followed_up", tu, ch="phone", outcome=outcome)
            if outcome != "unreachable" and rnd() < _SURVEY_PER_COMPLAINT:
                q = ((1.0 if outcome == "satisfied" else -14.0) - (5.0 if late_any else 0.0)
                     - (6.0 if reopened else 0.0) - (8.0 if resolution == "rejected" else 0.0))
                delay = int(2 * _HOUR * math.exp(rng.gauss(0, 0.8)))
                self.survey(tu + _MINUTE + delay, i, c, self.pick(_CH_SURVEY), None, corr, cid,
                            q, 5.0 if late_any else 0.0)
            last = tu
        else:
            outcome = "unreachable"
            last = tf
        tc = last + int((10 + rnd() * 1430) * _MINUTE)
        ev("complaint.closed", tc)
        return tc, outcome

    # -- month-level activity ------------------------------------------------------------
    def on_month(self, t: int, k: int) -> None:
        """Month k begins: close period k-1 for everyone, then plan month k."""
        rng, pop = self.rng, self.pop
        period = self.periods[k - 1]
        for i in range(len(pop)):
            tb = t + int(rng.random() * 3 * _HOUR)
            self.billing(tb, i, period, k - 1)
            hist = pop.hist[i]
            if len(hist) >= 2:
                prev = hist[-4:-1]
                mean = sum(prev) / len(prev)
                if mean >= 270 and hist[-1] < 0.7 * mean and rng.random() < 0.75:
                    td = t + int((2 + rng.random() * 4) * _DAY)
                    td = _daytime(td, self.offset_ms, rng)
                    self.tier_decision(td, i)
        if k + 1 < len(self.bounds):
            self.plan_month(k)
            self.push(self.bounds[k + 1], _MONTH, k + 1)

    def plan_month(self, k: int) -> None:
        self.plan_halls(k)
        rng, pop = self.rng, self.pop
        lo, hi = self.bounds[k], self.bounds[k + 1]
        rnd = rng.random
        for i in range(len(pop)):
            risk = pop.risk[i]
            r = rnd()
            if k == pop.drop_month[i]:
                pop.mult[i] *= pop.drop_factor[i]
                if r < 0.5:
                    self.plan_change(_when(lo, hi, self.offset_ms, rng), i, "downgrade",
                                     apply=False)
                continue
            p_up, p_down = (0.005, 0.08) if risk else (0.02, 0.008)
            if r < p_up:
                self.plan_change(_when(lo, hi, self.offset_ms, rng), i, "upgrade")
            elif r < p_up + p_down:
                self.plan_change(_when(lo, hi, self.offset_ms, rng), i, "downgrade")
            elif r < p_up + p_down + 0.006:
                self.plan_change(_when(lo, hi, self.offset_ms, rng), i, "lateral")
            r = rnd()
            p_port, p_cancel = (0.10, 0.06) if risk else (0.0015, 0.001)
            if r < p_port:
                self.account_request(_when(lo, hi, self.offset_ms, rng), i, port_out=True)
            elif r < p_port + p_cancel:
                self.account_request(_when(lo, hi, self.offset_ms, rng), i, port_out=False)

    # -- service halls, feedback, incidents --------------------------------------------------
    def progress(self, k: int) -> float:
        """0 in the first month of the span, 1 in the last (and after it)."""
        return 1.0 if self.last_month == 0 else min(1.0, k / self.last_month)

    def plan_halls(self, k: int) -> None:
        """Month k: the visits, shifts, exams, spot checks, feedback and incidents."""
        if not self.halls:
            return
        rng, pop, off = self.rng, self.pop, self.offset_ms
        lo, hi = self.bounds[k], self.bounds[k + 1]
        for i in range(len(pop)):
            for _ in range(_poisson(rng, _HALL_VISITS_PER_MONTH)):
                self.push(_when(lo, hi, off, rng), _HALL_VISIT, i)
            if rng.random() < _FEEDBACK_PER_MONTH:
                self.feedback(_when(lo, hi, off, rng), i)
        kk = min(k, self.last_month)
        for h in self.halls:
            city = self.cities[h.city].code
            if kk >= 1 or self.last_month == 0:  # on-site reception from the second month
                week = lo + int(rng.random() * 7 * _DAY)
                while week < hi:
                    self.onsite_shift(_daytime(week, off, rng), h, city)
                    week += 7 * _DAY
            exam_day = _when(lo + 20 * _DAY, lo + 22 * _DAY, off, rng)
            for agent in h.staff:
                d = self.operational("staff.exam_scored", city, "service_hall", agent)
                d["exam_id"] = f"ex-{self.tag}-{k:02d}-{agent}"
                d["hall_id"] = h.hall_id
                d["score"] = round(min(100.0, max(50.0, rng.gauss(h.skill, 3.5))), 1)
                self.emit(exam_day + int(rng.random() * _HOUR), d)
            self.spot_check(_when(lo, hi, off, rng), "hall", h.hall_id, city, h.skill)
            for agent in h.staff[:2]:
                self.spot_check(_when(lo, hi, off, rng), "agent", agent, city, h.skill)
        for district in sorted({(h.district, self.cities[h.city].code) for h in self.halls}):
            self.spot_check(_when(lo, hi, off, rng), "district", district[0], district[1], 92.0)
        for _ in range(_poisson(rng, _INCIDENTS_PER_MONTH)):
            self.incident(lo + int(rng.random() * (hi - lo)))

    def on_hall_visit(self, t: int, i: int) -> None:
        rng, pop = self.rng, self.pop
        rnd = rng.random
        halls = self.city_halls.get(pop.city[i])
        if not halls:
            return
        h = halls[int(rnd() * len(halls))] if rnd() < 0.3 else halls[i % len(halls)]
        c = self.cities[pop.city[i]]
        k = self.month_of(t)
        p = self.progress(k)
        self.n_visit += 1
        visit_id = f"hv-{self.tag}-{self.n_visit:08d}"
        handheld = _HANDHELD_FIRST + (_HANDHELD_LAST - _HANDHELD_FIRST) * p
        r = rnd()
        served = "handheld" if r < handheld else "self_service" if r < handheld + \
            _SELF_SERVICE else "counter"
        wait = int((600 - 240 * p) * h.busy * math.exp(0.7 * rng.gauss(0, 1)))
        if served != "counter":
            wait = int(wait * 0.35)
        agent = h.staff[int(rnd() * len(h.staff))]
        d = self.base("hall.visit_completed", i, "service_hall", agent, None)
        d["visit_id"] = visit_id
        d["hall_id"] = h.hall_id
        d["district"] = h.district
        d["wait_seconds"] = wait
        d["served_at"] = served
        d["business_type"] = self.pick(_BUSINESS)
        d["handling_seconds"] = int(420 * math.exp(0.5 * rng.gauss(0, 1)))
        d["resolved_on_site"] = rnd() < _RESOLVED_ON_SITE
        d["greeted"] = rnd() < 0.92 + 0.06 * p
        d["need_asked"] = rnd() < 0.82 + 0.13 * p
        # a batch draws arrivals; live draws completions (a visit ends now, it began earlier)
        done = t if self.live else t + (wait + d["handling_seconds"]) * _SECOND
        self.emit(done, d)
        if rnd() < _SMS_REPLY:
            reply_at = done + int(10 * _MINUTE + rnd() * 6 * _HOUR)
            self.hall_survey(reply_at, i, c, h, k, visit_id)

    def hall_survey(self, t: int, i: int, c: _City, h: "_Hall", k: int, visit_id: str) -> None:
        rng = self.rng
        d = self.base("hall.survey_responded", i, "sms", None, None)
        self.n_survey += 1
        d["survey_id"] = f"hs-{self.tag}-{self.n_survey:08d}"
        d["hall_id"] = h.hall_id
        d["visit_id"] = visit_id
        valid = rng.random() >= _SMS_INVALID
        d["valid"] = valid
        if valid:
            level = h.level(k)  # the hall's month level, percent
            p = self.progress(k)
            waiting = _WAITING_FIRST + (_WAITING_LAST - _WAITING_FIRST) * p + (level - 97.0) * 0.6
            means = {"overall": level, "environment": level + 0.8, "waiting": waiting,
                     "handling": level + 0.3, "staff_attitude": level + 0.6}
            for item, mean in means.items():
                if rng.random() < 0.04:
                    continue  # not answered
                d[item] = _item(rng, mean)
            if not any(item in d for item in means):
                d["overall"] = _item(rng, level)
        self.emit(t, d)

    def onsite_shift(self, t: int, h: "_Hall", city: str) -> None:
        rng = self.rng
        self.n_ops += 1
        received = 5 + int(rng.random() * 11)
        unresolved = sum(1 for _ in range(received) if rng.random() < 0.022)
        d = self.operational("supervision.onsite_shift", city, "service_hall")
        d["shift_id"] = f"sh-{self.tag}-{self.n_ops:06d}"
        d["hall_id"] = h.hall_id
        d["manager_id"] = f"mgr-{h.district}"
        d["customers_received"] = received
        d["unresolved"] = unresolved
        d["on_duty"] = rng.random() < 0.96
        d["handheld_used"] = rng.random() < 0.9
        self.emit(t, d)

    def spot_check(self, t: int, unit_type: str, unit_id: str, city: str, skill: float) -> None:
        rng = self.rng
        self.n_ops += 1
        sampled = 10 + int(rng.random() * 21)
        rate = min(1.0, max(0.5, rng.gauss(0.75 + (skill - 90) / 40, 0.06)))
        d = self.operational("quality.spot_check_recorded", city, "service_hall")
        d["check_id"] = f"qc-{self.tag}-{self.n_ops:06d}"
        d["unit_type"] = unit_type
        d["unit_id"] = unit_id
        d["sampled"] = sampled
        d["passed"] = min(sampled, int(round(sampled * rate)))
        d["score"] = round(min(100.0, max(40.0, rng.gauss(skill + 1.0, 3.0))), 1)
        self.emit(t, d)

    def feedback(self, t: int, i: int) -> None:
        rng = self.rng
        rnd = rng.random
        self.n_feedback += 1
        fid = f"fb-{self.tag}-{self.n_feedback:07d}"
        channel = self.pick(_FB_CHANNELS)

        def ev(event_type: str, when: int) -> None:
            d = self.base(event_type, i, channel, None, fid)
            d["feedback_id"] = fid
            self.emit(when, d)

        ev("feedback.received", t)
        handled = t + (int((0.5 + rnd() * 20) * _HOUR) if rnd() < 0.95
                       else int((24.5 + rnd() * 24) * _HOUR))
        ev("feedback.handled", handled)
        r = rnd()
        if r < 0.93:
            reported = handled + int((rnd() * max(0.0, 71.5 - (handled - t) / _HOUR)) * _HOUR)
        elif r < 0.98:
            reported = t + int((72.2 + rnd() * 48) * _HOUR)
        else:
            return  # never reported
        ev("feedback.result_reported", max(reported, handled + _MINUTE))

    def incident(self, t: int) -> None:
        """An outage in one to three cities, and the extra contacts it brings while it lasts."""
        rng = self.rng
        self.n_ops += 1
        incident_id = f"inc-{self.tag}-{self.n_ops:06d}"
        r = rng.random()
        level = 1 if r < 0.15 else 2 if r < 0.5 else 3
        service = self.pick(_INC_SERVICES)
        weights = self.pop.city_weights
        chosen: list[int] = []
        for _ in range(1 + int(rng.random() * 3)):
            j = bisect_right(self._city_cum(), rng.random() * sum(weights))
            j = min(j, len(self.cities) - 1)
            if j not in chosen:
                chosen.append(j)
        cities = [self.cities[j].code for j in chosen]
        hours = (1 + rng.random() * (4 if level == 1 else 10))
        end = t + int(hours * _HOUR)
        for event_type, when in (("incident.detected", t), ("incident.resolved", end)):
            d = self.operational(event_type, cities[0], "phone", "noc-01")
            d["incident_id"] = incident_id
            d["level"] = level
            d["service"] = service
            d["cities"] = list(cities)
            self.emit(when, d)
        surge = {1: 3.0, 2: 1.5, 3: 0.6}[level]
        per_hour = self.contact_rate * _HOUR
        total_w = sum(weights)
        for j in chosen:
            customers = self.city_customers.get(j)
            if not customers:
                continue
            n = _poisson(rng, per_hour * weights[j] / total_w * hours * surge)
            for _ in range(n):
                self.contact(t + int(rng.random() * (end - t)),
                             customers[int(rng.random() * len(customers))])

    def _city_cum(self) -> list[float]:
        cum = getattr(self, "_cities_cum", None)
        if cum is None:
            cum = self._cities_cum = list(_accumulate(self.pop.city_weights))
        return cum

    def billing(self, t: int, i: int, period: str, k: int) -> None:
        pop, rng = self.pop, self.rng
        spend = pop.base[i] * pop.mult[i] * math.exp(0.07 * rng.gauss(0, 1))
        if self.live and k == 0 and pop.drop_month[i] >= 0:
            spend *= pop.drop_factor[i]
        spend = max(10.0, spend)
        pop.hist[i].append(spend)
        d = self.base("billing.period_closed", i, "web", None, None)
        d["period"] = period
        d["spend"] = f"{spend:.2f}"
        d["plan_code"] = f"{_PLAN_FAMILIES[pop.family[i]]}-{_PLAN_PRICES[pop.plan[i]]}"
        self.emit(t, d)

    def plan_change(self, t: int, i: int, direction: str, apply: bool = True) -> None:
        pop, rng = self.pop, self.rng
        fam, idx = pop.family[i], pop.plan[i]
        before = f"{_PLAN_FAMILIES[fam]}-{_PLAN_PRICES[idx]}"
        if direction == "upgrade":
            if idx >= len(_PLAN_PRICES) - 1:
                direction = "lateral"
            else:
                new = min(len(_PLAN_PRICES) - 1, idx + 1 + int(rng.random() * 2))
                if apply:
                    pop.mult[i] *= _PLAN_PRICES[new] / _PLAN_PRICES[idx] * 0.6 + 0.4
                pop.plan[i] = idx = new
        elif direction == "downgrade":
            if idx == 0:
                direction = "lateral"
            else:
                new = max(0, idx - 1 - int(rng.random() * 3))
                if apply:
                    pop.mult[i] *= _PLAN_PRICES[new] / _PLAN_PRICES[idx] * 0.6 + 0.4
                pop.plan[i] = idx = new
        if direction == "lateral":
            pop.family[i] = fam = 1 - fam
        after = f"{_PLAN_FAMILIES[fam]}-{_PLAN_PRICES[idx]}"
        ch = self.pick(_CH_PLAN)
        c = self.cities[pop.city[i]]
        agent = self.agent_id(c, False) if ch in ("phone", "service_hall") else None
        d = self.base("plan.changed", i, ch, agent, None)
        d["from_plan"], d["to_plan"], d["direction"] = before, after, direction
        self.emit(t, d)

    def account_request(self, t: int, i: int, *, port_out: bool) -> None:
        rng = self.rng
        ch = self.pick(_CH_PORT if port_out else _CH_CANCEL)
        c = self.cities[self.pop.city[i]]
        agent = self.agent_id(c, False) if ch in ("phone", "service_hall") else None
        event_type = "account.port_out_requested" if port_out else \
            "account.cancellation_requested"
        d = self.base(event_type, i, ch, agent, None)
        if rng.random() < 0.7:
            d["reason"] = rng.choice(_PORT_REASONS if port_out else _CANCEL_REASONS)
        self.emit(t, d)

    def tier_decision(self, t: int, i: int) -> None:
        d = self.base("tier.change_decided", i, "web", f"ops-{1 + int(self.rng.random() * 12):02d}",
                      None)
        d["decision"] = "approved" if self.rng.random() < 0.75 else "rejected"
        self.emit(t, d)


class _Hall:
    __slots__ = ("hall_id", "district", "city", "key", "base", "busy", "skill", "staff")

    def level(self, k: int) -> float:
        """The hall's satisfaction level in month k (percent): a key improvement hall starts
        below target and improves slowly (still below 96 in the third month)."""
        return self.base + (0.45 * k if self.key else 0.0)


def _halls(seed: int, cities: list[_City], pop: _Population) -> list[_Hall]:
    """The hall network: per city, one hall per ~60 customers (at least one), by three in
    districts; Urumqi's halls and districts are the study's."""
    rng = random.Random(f"cxledger-halls:{seed}")
    counts = [0] * len(cities)
    for c in pop.city:
        counts[c] += 1
    out = []
    staff_no = 1000
    for j, c in enumerate(cities):
        n = max(1, min(12, round(counts[j] / _CUSTOMERS_PER_HALL)))
        for h in range(n):
            hall = _Hall()
            hall.city = j
            if c.code == "urumqi":
                hall.hall_id = f"urumqi-{_XJ_HALLS[h % len(_XJ_HALLS)]}" + (
                    f"-{h // len(_XJ_HALLS) + 1}" if h >= len(_XJ_HALLS) else "")
                hall.district = f"urumqi-{_XJ_DISTRICTS[h % 3]}"
            else:
                hall.hall_id = f"{c.code}-h{h + 1:02d}"
                hall.district = f"{c.code}-d{h // 3 + 1}"
            # key improvement halls: mostly busy ones (enough replies to be ranked at all)
            busy = counts[j] / n >= 45
            hall.key = rng.random() < (_KEY_HALL_SHARE * 1.6 if busy else _KEY_HALL_SHARE / 2)
            hall.base = (93.0 + rng.random() * 1.6) if hall.key else (97.2 + rng.random() * 1.3)
            hall.busy = 0.7 + rng.random() * 0.8
            hall.skill = 88.0 + rng.random() * 8.0
            staff = []
            for _ in range(3 + int(rng.random() * 4)):
                staff_no += 1 + int(rng.random() * 40)
                staff.append(f"AL{staff_no:06d}")
            hall.staff = staff
            out.append(hall)
    return out


def _item(rng: random.Random, mean_percent: float) -> int:
    """One survey item, 1-10, around ``mean_percent`` / 10 (answers cluster at 9 and 10)."""
    deficit = max(0.0, 10.0 - mean_percent / 10.0)
    # 10 minus a geometric number of points whose mean is the deficit
    p = 1.0 / (1.0 + deficit)
    x = 10
    while x > 1 and rng.random() > p:
        x -= 1
    return x


def _when(lo: int, hi: int, offset_ms: int, rng: random.Random) -> int:
    """A business-hours instant (09:00-21:00 local) in [lo, hi)."""
    return min(hi - 1, _daytime(lo + int(rng.random() * (hi - lo)), offset_ms, rng))


def _daytime(t: int, offset_ms: int, rng: random.Random) -> int:
    local_day = (t + offset_ms) // _DAY * _DAY - offset_ms
    return local_day + 9 * _HOUR + int(rng.random() * 12 * _HOUR)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, int(round(rng.gauss(mean, math.sqrt(mean)))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


_CH_AI = _cum(_AI_CHANNELS)
_CH_AGENT = _cum(_AGENT_CHANNELS)
_CH_OUT = _cum(_OUTBOUND_CHANNELS)
_CH_SURVEY = _cum(_SURVEY_CHANNELS)
_CH_PLAN = _cum(_PLAN_CHANNELS)
_CH_PORT = _cum(_PORT_CHANNELS)
_CH_CANCEL = _cum(_CANCEL_CHANNELS)
_CAT_AI = _cum(_AI_CATEGORIES)
_CAT_AGENT = _cum(_AGENT_CATEGORIES)
_CAT_OUT = _cum(_OUTBOUND_CATEGORIES)
_RES = _cum(_RESOLUTIONS)
_BUSINESS = _cum(_BUSINESS_TYPES)
_FB_CHANNELS = _cum(_FEEDBACK_CHANNELS)
_INC_SERVICES = _cum(_INCIDENT_SERVICES)


def _config(seed: int, config: SimulationConfig | None) -> SimulationConfig:
    if config is None:
        config = SimulationConfig(seed=seed)
    elif seed != 7 and seed != config.seed:  # an explicit seed argument wins
        config = SimulationConfig(**{**config.__dict__, "seed": seed})
    return config


def simulate(events: int, seed: int = 7, *,
             config: SimulationConfig | None = None) -> Iterator[dict[str, Any]]:
    """Exactly ``events`` interaction events in non-decreasing ``occurred_at`` order.

    The same seed (and config) gives the same events. The volume is calibrated so that the
    events cover ``config.months`` months from ``config.start`` with about 3 % spilling just
    past the end (so the last month's billing close is included); the tail is cut at
    ``events``, which leaves some complaints open. A non-default ``seed`` argument overrides
    ``config.seed``.
    """
    if events <= 0:
        return iter(())
    cfg = _config(seed, config)
    customers = cfg.customers if cfg.customers is not None else max(50, events // 25)
    pop = _Population(cfg.seed, customers, cfg.months)
    rng = random.Random(f"cxledger-simulate:{cfg.seed}")
    start = cfg.start if cfg.start.tzinfo else cfg.start.replace(tzinfo=BUSINESS_TZ)
    engine = _Engine(cfg, pop, rng, start_ms=_ms(start))
    engine.start_batch(events)
    return engine.run(events)


def simulate_live(rate: float, duration_s: float, seed: int = 7, *,
                  now: Callable[[], float] = time.time,
                  config: SimulationConfig | None = None) -> Iterator[dict[str, Any]]:
    """About ``rate * duration_s`` events stamped from ``now()`` to ``now() + duration_s``.

    For live mode: events are in non-decreasing ``occurred_at`` order and the caller paces
    them (e.g. publishes each when the wall clock reaches its ``occurred_at``). Complaint
    lifecycles, surveys and other follow-ups keep their real-world delays, so steps due after
    the window are not emitted. Customers (ids, cities, spend) depend on the seed only;
    the events and their ids depend on the seed and the start time, so two live runs do not
    repeat each other's event ids. No logistics surge and no month-end billing burst: the
    previous month's billing run trickles in, one customer at a time.
    """
    if rate <= 0 or duration_s <= 0:
        return iter(())
    cfg = _config(seed, config)
    expected = rate * duration_s
    customers = cfg.customers if cfg.customers is not None else max(50, int(expected // 25))
    pop = _Population(cfg.seed, customers, 2)

    def gen() -> Iterator[dict[str, Any]]:
        start_ms = int(now() * 1000)
        rng = random.Random(f"cxledger-live:{cfg.seed}:{start_ms}")
        engine = _Engine(cfg, pop, rng, start_ms=start_ms, live_rate=float(rate),
                         end_ms=start_ms + int(duration_s * 1000))
        engine.start_live()
        yield from engine.run(None)

    return gen()
