"""Per-partition tumbling-window partial aggregates (domain.md, "Satisfaction": per window).

Each partition folds its events into tumbling event-time windows ``1m`` and ``1d`` keyed by
``(window, window_start, city, channel, tier)``; ``1d`` windows start at local midnight in the
business time zone (default Asia/Shanghai). A row holds sums and counts only, so the rows of
all partitions of one key are merged later (in ClickHouse) by summing, and the rates of the
contract are computed after merging: first-contact-resolution rate, mean and p90 first
response (from the histogram), AI-handled share, transfers per contact, complaint rate
(complaints / contacts), service-request SLA compliance (service requests answered within
``service_requests.first_response_seconds``, 600 s by default, over service requests), NPS and
mean composite (see :func:`window_metrics`).

Emission: :meth:`WindowAggregator.drain` returns one ``satisfaction.window_updated`` per key
touched since the last drain, carrying the row's full current partial and its ``version``
(number of events folded in so far), so a sink keeps the highest version per key.

Lateness: a window is closed for good once ``window_end + retention <= partition clock``
(2 h for 1m, 48 h for 1d by default). An event for a closed window is counted in
``late_events`` and not folded; closed rows leave memory at the next drain, after their
last emission. Both depend on the event sequence only, never on when drains happen.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from datetime import date, datetime, timedelta
from typing import Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from processors.derived import name_id
from processors.rules import Rules

WINDOW_UPDATED = "satisfaction.window_updated"
WINDOWS = ("1m", "1d")
MINUTE_MS = 60_000

# Row layout (a list, mutated in place; no per-event objects).
# After the partial fields: the window's [start, end), its key, and whether it was touched
# since the last drain.
(_VERSION, _SURVEYS, _COMPOSITE_SUM, _COMPOSITE_COUNT, _RS_SUM, _RS_COUNT, _RE_SUM, _RE_COUNT,
 _AT_SUM, _AT_COUNT, _FU_SUM, _FU_COUNT, _NPS_RESPONSES, _PROMOTERS, _DETRACTORS, _CONTACTS,
 _FCR, _AI, _TRANSFERS, _FR_COUNT, _FR_SUM, _BUCKETS, _COMPLAINTS, _SR, _SR_MET,
 _START, _END, _KEY, _TOUCHED) = range(29)
_N_PARTIAL = _START
# A row's key is (window, window_start, city, channel, tier); its first _BUCKET items name its
# bucket: the rows the changelog keeps in one record (take_changes), at most one per channel
# and tier (56), so a record stays small whatever the number of cities.
_BUCKET = 3
# The first-response bucket counts are stored flat at the end of the row (row[_B0:]), not as
# a nested list (one object less per window for the cycle collector); row[_BUCKETS] is unused.
_B0 = 29

#: Partial fields in row order (``first_response_buckets`` is a list of ints).
PARTIAL_FIELDS = (
    "version", "surveys", "composite_sum", "composite_count", "response_speed_sum",
    "response_speed_count", "resolution_efficiency_sum", "resolution_efficiency_count",
    "attitude_sum", "attitude_count", "follow_up_sum", "follow_up_count", "nps_responses",
    "promoters", "detractors", "contacts", "fcr_contacts", "ai_contacts", "transfers_sum",
    "first_response_count", "first_response_sum", "first_response_buckets", "complaints",
    "service_requests", "service_requests_met",
)


class DayStarts:
    """Local-midnight day boundaries in a time zone, cached (no zoneinfo lookup per event)."""

    def __init__(self, timezone: str):
        self.tz = ZoneInfo(timezone)
        self.lo = 1
        self.hi = 0
        self._cache: dict[date, tuple[int, int]] = {}

    def bounds(self, ms: int) -> tuple[int, int]:
        """(start, end) epoch ms of the local day containing ``ms``."""
        if self.lo <= ms < self.hi:
            return self.lo, self.hi
        day = datetime.fromtimestamp(ms // 1000, self.tz).date()
        found = self._cache.get(day)
        if found is None:
            nxt = day + timedelta(days=1)
            found = (self._midnight(day), self._midnight(nxt))
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[day] = found
        self.lo, self.hi = found
        return found

    def _midnight(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()) * 1000


class WindowAggregator:
    """The window partials of one partition; ``clock`` is set by the partition fold."""

    def __init__(self, rules: Rules, source_partition: int):
        self.rules_version = rules.version
        self.source_partition = source_partition
        self.bounds = tuple(rules.windows.first_response_bounds)
        self.service_request_s = (rules.service_requests.first_response_seconds
                                  if rules.service_requests is not None else 600.0)
        self._n_buckets = len(self.bounds) + 1
        self._ret_1m = rules.windows.retention_1m_ms
        self._ret_1d = rules.windows.retention_1d_ms
        self.days = DayStarts(rules.windows.business_timezone)
        self.clock = 0
        self.rows: dict[tuple, list] = {}
        # The open rows again, per bucket (window, window_start, city): the changelog keeps a
        # bucket's rows in one record (take_changes).
        self.buckets: dict[tuple, dict[tuple, list]] = {}
        self.late_events = 0
        self._touched: list[list] = []               # rows touched since the last drain
        # For persistence (take_changes): rows drained since the last take, and the keys of
        # rows forgotten (closed for good) since then.
        self._changed: dict[tuple, list] = {}
        self._forgotten: list[tuple] = []
        # Per window kind, (end + retention, key) in creation order: windows are created in
        # nearly ascending time, so the front expires first; a late-created row merely waits
        # behind (it is closed for events by the clock check either way).
        self._expiry: dict[str, deque] = {"1m": deque(), "1d": deque()}
        self._template = [0, 0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          0.0, None, 0, 0, 0, 0, 0, None, False] + [0] * self._n_buckets
        # (city, channel, tier) -> [1m row, 1d row] last used: consecutive events of a
        # combination mostly fall in the same minute and day, so no key is built for them.
        self._slots: dict[tuple, list] = {}
        self.m: list | None = None   # rows found by the last _pair()
        self.d: list | None = None

    # -- folding ------------------------------------------------------------------------------

    def _pair(self, at: int, city: str, channel: str, tier: str) -> None:
        """Point ``self.m`` / ``self.d`` at the 1m and 1d rows an event at ``at`` folds into
        (None for a closed window) and mark them touched. No per-event allocation beyond the
        (city, channel, tier) lookup key."""
        combo = (city, channel, tier)
        slot = self._slots.get(combo)
        if slot is None:
            slot = self._slots[combo] = [None, None]
        clock = self.clock
        m = slot[0]
        if m is None or not (m[_START] <= at < m[_END] and m[_END] + self._ret_1m > clock):
            start = at - at % MINUTE_MS
            m = self._row("1m", start, start + MINUTE_MS, self._ret_1m, combo)
            if m is not None:
                slot[0] = m
        elif not m[_TOUCHED]:
            m[_TOUCHED] = True
            self._touched.append(m)
        d = slot[1]
        if d is None or not (d[_START] <= at < d[_END] and d[_END] + self._ret_1d > clock):
            start, end = self.days.bounds(at)
            d = self._row("1d", start, end, self._ret_1d, combo)
            if d is not None:
                slot[1] = d
        elif not d[_TOUCHED]:
            d[_TOUCHED] = True
            self._touched.append(d)
        self.m = m
        self.d = d

    def _row(self, window: str, start: int, end: int, retention: int, combo: tuple) -> list | None:
        if end + retention <= self.clock:
            self.late_events += 1
            return None
        key = (window, start) + combo
        row = self.rows.get(key)
        if row is None:
            row = self._template[:]
            row[_START] = start
            row[_END] = end
            row[_KEY] = key
            self.rows[key] = row
            self.buckets.setdefault(bucket_of(key), {})[key] = row
            self._expiry[window].append((end + retention, key))
        if not row[_TOUCHED]:
            row[_TOUCHED] = True
            self._touched.append(row)
        return row

    def add_contact(self, contact: Mapping, tier: str) -> None:
        """Fold a ``contact.completed``: contacts, FCR, AI handler, transfers, first response,
        service requests and whether they met their SLA."""
        fcr = contact["resolved_first_contact"]
        ai = contact["handler"] == "ai"
        transfers = contact["transfers"]
        frs = contact["first_response_seconds"]
        bucket = _B0 + bisect_left(self.bounds, frs) if frs is not None else -1
        service_request = contact["category"] == "service_request"
        met = service_request and frs is not None and frs <= self.service_request_s
        self._pair(contact["occurred_at"], contact["city"], contact["channel"], tier)
        for row in (self.m, self.d):
            if row is None:
                continue
            row[_VERSION] += 1
            row[_CONTACTS] += 1
            if fcr:
                row[_FCR] += 1
            if ai:
                row[_AI] += 1
            row[_TRANSFERS] += transfers
            if service_request:
                row[_SR] += 1
                if met:
                    row[_SR_MET] += 1
            if bucket >= 0:
                row[_FR_COUNT] += 1
                row[_FR_SUM] += frs
                row[bucket] += 1

    def add_scored(self, scored: Mapping) -> None:
        """Fold a ``satisfaction.scored`` (its own city, channel and tier)."""
        comp = scored["composite"]
        rs = scored["response_speed"]
        re_ = scored["resolution_efficiency"]
        at = scored["attitude"]
        fu = scored["follow_up"]
        nps = scored["nps"]
        self._pair(scored["occurred_at"], scored["city"], scored["channel"], scored["tier"])
        for row in (self.m, self.d):
            if row is None:
                continue
            row[_VERSION] += 1
            row[_SURVEYS] += 1
            if comp is not None:
                row[_COMPOSITE_SUM] += comp
                row[_COMPOSITE_COUNT] += 1
            if rs is not None:
                row[_RS_SUM] += rs
                row[_RS_COUNT] += 1
            if re_ is not None:
                row[_RE_SUM] += re_
                row[_RE_COUNT] += 1
            if at is not None:
                row[_AT_SUM] += at
                row[_AT_COUNT] += 1
            if fu is not None:
                row[_FU_SUM] += fu
                row[_FU_COUNT] += 1
            if nps is not None:
                row[_NPS_RESPONSES] += 1
                if nps >= 9:
                    row[_PROMOTERS] += 1
                elif nps <= 6:
                    row[_DETRACTORS] += 1

    def add_complaint(self, filed: Mapping, tier: str) -> None:
        """Fold a ``complaint.filed`` (the numerator of the complaint rate)."""
        self._pair(filed["occurred_at"], filed["city"], filed["channel"], tier)
        for row in (self.m, self.d):
            if row is not None:
                row[_VERSION] += 1
                row[_COMPLAINTS] += 1

    # -- emission -----------------------------------------------------------------------------

    def drain(self) -> list[dict]:
        """``satisfaction.window_updated`` for every key touched since the last drain (sorted
        by key), then forget windows closed for good."""
        out = []
        touched = self._touched
        if touched:
            self._touched = []
            touched.sort(key=_row_key)
            version = self.rules_version
            partition = self.source_partition
            changed = self._changed
            for row in touched:
                row[_TOUCHED] = False
                out.append(self._event(row, version, partition))
                changed[row[_KEY]] = row
        clock = self.clock
        rows = self.rows
        buckets = self.buckets
        for expiry in self._expiry.values():
            while expiry and expiry[0][0] <= clock:
                key = expiry.popleft()[1]
                if rows.pop(key, None) is not None:
                    self._forgotten.append(key)
                    name = bucket_of(key)
                    bucket = buckets[name]
                    del bucket[key]
                    if not bucket:
                        del buckets[name]
        return out

    def take_changes(self) -> tuple[list[tuple[tuple, list]], list[tuple]]:
        """What changed since the last call, for a changelog that keeps the rows of one bucket
        (window, window_start, city) in one record (the partition record would grow with every
        open window; a record per row costs a message per row): (bucket, its open rows as
        ``[key, *row_plain]``) of every bucket with a row drained since, and the keys of the
        rows forgotten. A bucket's rows close together (same end), so a bucket changes only
        while all its rows are open."""
        buckets = self.buckets
        changed = []
        for bucket in sorted({bucket_of(key) for key in self._changed}):
            rows = buckets.get(bucket)
            if rows:
                changed.append((bucket, [[list(key), *self.row_plain(row)]
                                         for key, row in rows.items()]))
        forgotten, self._changed, self._forgotten = self._forgotten, {}, []
        return changed, forgotten

    def row_plain(self, row: list) -> list:
        """A row as plain data: [start, end, touched, values] (``snapshot`` without the key)."""
        values = row[:_N_PARTIAL]
        values[_BUCKETS] = row[_B0:]
        return [row[_START], row[_END], row[_TOUCHED], values]

    @staticmethod
    def _event(row: list, version: str, partition: int) -> dict:
        window, start, city, channel, tier = row[_KEY]
        return {
            "event_id": name_id(f"{WINDOW_UPDATED}|{version}|{partition}|{window}|{start}|"
                                f"{city}|{channel}|{tier}|{row[_VERSION]}"),
            "event_type": WINDOW_UPDATED,
            "occurred_at": start,
            "customer_id": "",
            "channel": channel,
            "city": city,
            "agent_id": None,
            "correlation_id": None,
            "rules_version": version,
            "window": window,
            "window_start": start,
            "source_partition": partition,
            "tier": tier,
            "version": row[_VERSION],
            "surveys": row[_SURVEYS],
            "composite_sum": row[_COMPOSITE_SUM],
            "composite_count": row[_COMPOSITE_COUNT],
            "response_speed_sum": row[_RS_SUM],
            "response_speed_count": row[_RS_COUNT],
            "resolution_efficiency_sum": row[_RE_SUM],
            "resolution_efficiency_count": row[_RE_COUNT],
            "attitude_sum": row[_AT_SUM],
            "attitude_count": row[_AT_COUNT],
            "follow_up_sum": row[_FU_SUM],
            "follow_up_count": row[_FU_COUNT],
            "nps_responses": row[_NPS_RESPONSES],
            "promoters": row[_PROMOTERS],
            "detractors": row[_DETRACTORS],
            "contacts": row[_CONTACTS],
            "fcr_contacts": row[_FCR],
            "ai_contacts": row[_AI],
            "transfers_sum": row[_TRANSFERS],
            "first_response_count": row[_FR_COUNT],
            "first_response_sum": row[_FR_SUM],
            "first_response_buckets": row[_B0:],
            "complaints": row[_COMPLAINTS],
            "service_requests": row[_SR],
            "service_requests_met": row[_SR_MET],
        }

    def partial(self, key: tuple) -> dict | None:
        """The current partial of a key as a field dict (None if not in memory)."""
        row = self.rows.get(tuple(key))
        if row is None:
            return None
        values = row[:_N_PARTIAL]
        values[_BUCKETS] = row[_B0:]
        return dict(zip(PARTIAL_FIELDS, values))

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self, rows: bool = True) -> dict:
        """Plain data: rows ([key, start, end, touched, values]; none with ``rows=False``, for
        a changelog that keeps them one record each, see ``take_changes``), late counter."""
        out = [[list(key), *self.row_plain(row)] for key, row in self.rows.items()] if rows \
            else []
        return {"rows": out, "late_events": self.late_events}

    def restore(self, plain: Mapping, rows: Iterable[tuple[Sequence, list]] = ()) -> None:
        """From ``snapshot`` output, plus ``rows``: (key, ``row_plain``) kept apart."""
        self.rows = {}
        self.buckets = {}
        self._touched = []
        self._slots = {}
        self._changed, self._forgotten = {}, []
        pending = []
        kept_apart = ([key, *row] for key, row in rows)
        for key, start, end, touched, values in [*plain["rows"], *kept_apart]:
            key = tuple(key)
            values = list(values) + [0] * (_N_PARTIAL - len(values))  # an older snapshot
            row = values + [start, end, key, touched] + list(values[_BUCKETS])
            row[_BUCKETS] = None
            self.rows[key] = row
            self.buckets.setdefault(bucket_of(key), {})[key] = row
            if touched:
                self._touched.append(row)
            retention = self._ret_1m if key[0] == "1m" else self._ret_1d
            pending.append((end + retention, key))
        pending.sort()
        self._expiry = {"1m": deque(), "1d": deque()}
        for item in pending:
            self._expiry[item[1][0]].append(item)
        self.late_events = plain.get("late_events", 0)


def bucket_of(key: tuple) -> tuple:
    """The bucket (window, window_start, city) of a row's key."""
    return key[:_BUCKET]


def _row_key(row: list) -> tuple:
    return row[_KEY]


# -- after merging partitions -------------------------------------------------------------------

def merge_partials(partials: Iterable[Mapping]) -> dict:
    """Sum the partial fields of rows of one window key (as ClickHouse does across partitions).

    ``version`` is not a metric and is summed like the others only for completeness.
    """
    merged: dict = {}
    for p in partials:
        for name in PARTIAL_FIELDS:
            v = p[name]
            if name == "first_response_buckets":
                acc = merged.get(name)
                merged[name] = list(v) if acc is None else [a + b for a, b in zip(acc, v)]
            else:
                merged[name] = merged.get(name, 0) + v
    return merged


def quantile_from_buckets(counts: Sequence[int], bounds: Sequence[float], q: float, *,
                          interpolate: bool = False) -> float | None:
    """The q-quantile of a histogram with inclusive upper ``bounds`` (+inf bucket last).

    By default the upper bound of the first bucket whose cumulative count reaches
    ``q * total`` (``inf`` for the last bucket): the conservative reading, and the one the
    ClickHouse view ``satisfaction_windows`` computes. With ``interpolate`` the value is
    interpolated linearly inside that bucket (first lower edge 0), as Prometheus'
    ``histogram_quantile``, and the +inf bucket gives the last finite bound. None for an
    empty histogram.
    """
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds (+inf expected)")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c > 0 and cum + c >= rank:
            if i == len(bounds):
                return float(bounds[-1]) if interpolate else math.inf
            upper = float(bounds[i])
            if not interpolate:
                return upper
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            return lower + (upper - lower) * max(rank - cum, 0) / c
        cum += c
    return float(bounds[-1]) if interpolate else math.inf


def p90(counts: Sequence[int], bounds: Sequence[float]) -> float | None:
    """p90 first response (seconds) from merged bucket counts: the upper bound of the bucket
    holding the 90th percentile, as the dashboards compute it."""
    return quantile_from_buckets(counts, bounds, 0.9)


def window_metrics(partial: Mapping, bounds: Sequence[float]) -> dict:
    """The per-window metrics of the contract from a (merged) partial; None where undefined."""
    def ratio(num: float, den: float) -> float | None:
        return num / den if den else None

    contacts = partial["contacts"]
    return {
        "composite_mean": ratio(partial["composite_sum"], partial["composite_count"]),
        "response_speed_mean": ratio(partial["response_speed_sum"], partial["response_speed_count"]),
        "resolution_efficiency_mean": ratio(partial["resolution_efficiency_sum"],
                                            partial["resolution_efficiency_count"]),
        "attitude_mean": ratio(partial["attitude_sum"], partial["attitude_count"]),
        "follow_up_mean": ratio(partial["follow_up_sum"], partial["follow_up_count"]),
        "nps": (None if not partial["nps_responses"] else
                100.0 * (partial["promoters"] - partial["detractors"]) / partial["nps_responses"]),
        "fcr_rate": ratio(partial["fcr_contacts"], contacts),
        "ai_share": ratio(partial["ai_contacts"], contacts),
        "transfers_per_contact": ratio(partial["transfers_sum"], contacts),
        "complaint_rate": ratio(partial["complaints"], contacts),
        "service_request_compliance": ratio(partial.get("service_requests_met", 0),
                                            partial.get("service_requests", 0)),
        "first_response_mean": ratio(partial["first_response_sum"], partial["first_response_count"]),
        "first_response_p90": p90(partial["first_response_buckets"], bounds),
    }
