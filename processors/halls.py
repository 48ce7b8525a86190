"""Service-hall SMS satisfaction and the key improvement indicator (domain.md, "Service halls,
feedback, incidents and quality control"; seed: the Urumqi hall study, [004-XJ]).

- A valid reply to the SMS survey after a visit (``hall.survey_responded``) scores the mean of
  its answered items (each 1-10) times ``item_scale`` (10): a percent. A hall's month value is
  the mean over its valid replies in the calendar month (business time zone), rounded half-up
  to 2 decimals; the target is 96.0, and a value of exactly 96.0 is on target. Invalid replies
  (blank, garbled) count in the replies (the response rate) only.
- A hall below target for 3 consecutive months, with at least 30 valid replies in each, is
  flagged (``hall.key_improvement_flagged``: hall_id, months, values) once per streak, when the
  third month closes; the first month back on target (with at least 30 valid replies) clears it
  (``hall.key_improvement_cleared``). A month that does not qualify (fewer replies, or on
  target) ends a streak that has not flagged yet; nothing but a qualifying month on target
  clears a flag.

Where it is folded (two steps, because a hall's replies are customer events and spread over
every ledger partition, while the flag needs the month's total):

1. :class:`HallSurveyMonths`, per ledger partition, inside :class:`processors.ledger.PartitionFold`:
   the partition's partial of each (hall, month): replies, valid replies, score sum, each item's
   sum and count. Drained like the satisfaction windows as ``hall.survey_month_updated`` (the
   highest version is current; ClickHouse sums the partitions: view hall_satisfaction_monthly).
   When the partition clock (event time) reaches the end of a month, the partition closes it:
   the rows of that month are emitted a last time (``closed`` true) and one
   ``hall.survey_month_closed`` (source_partition, month, the final partials of every hall, in
   parallel arrays) says "this partition is done with the month"; a reply for a closed month
   arriving later is late, counted and not folded (both live and in a replay: it depends on the
   order of the partition's events only). A partition closes every month from the month of its
   first event on, with or without replies, so every month it passed has a marker.
2. :class:`HallMonths`, the hall-months fold, one for the whole ledger: it reads the markers of
   all ``partitions`` ledger partitions and decides a month once every partition closed it (the
   watermark of the partitions' event-time clocks), in month order, from the sum of the final
   partials: exactly the month's total, whatever the order in which the markers arrive. Live, the
   processors run it on the markers' topic (processors.hall_app), replay and the restore of
   ``cxledger up`` run it after the partition folds (processors.batch): both see the same set of
   markers and decide the same months, with the same event ids (``derived_id`` of type, rules
   version, hall, month). A marker seen again (a redelivery) is ignored. Until every partition of
   the ledger topic has had an event, no month is decided: an empty partition holds the
   watermark back, as in any event-time system.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping
from zoneinfo import ZoneInfo

from processors.derived import derived_id, round2
from processors.rules import Rules

MONTH_UPDATED = "hall.survey_month_updated"
MONTH_CLOSED = "hall.survey_month_closed"
FLAGGED = "hall.key_improvement_flagged"
CLEARED = "hall.key_improvement_cleared"
SURVEY = "hall.survey_responded"
ITEMS = ("overall", "environment", "waiting", "handling", "staff_attitude")
HALL_CHANNEL = "service_hall"

# Row layout of a partial (a list): the counts, then sum and count of each item.
_VERSION, _REPLIES, _VALID, _SCORE = range(4)
_ITEM0 = 4  # item i: sum at _ITEM0 + 2i, count at _ITEM0 + 2i + 1
_N = _ITEM0 + 2 * len(ITEMS)


class Months:
    """Calendar months in the business time zone: ``"YYYY-MM"`` keys and their bounds."""

    def __init__(self, timezone: str):
        self.tz = ZoneInfo(timezone)
        self._bounds: dict[str, tuple[int, int]] = {}

    def key(self, ms: int) -> str:
        d = datetime.fromtimestamp(ms / 1000, self.tz)
        return f"{d.year:04d}-{d.month:02d}"

    def bounds(self, month: str) -> tuple[int, int]:
        """(start, end) epoch ms of a month: local midnight of its first day, of the next's."""
        found = self._bounds.get(month)
        if found is None:
            y, m = int(month[:4]), int(month[5:7])
            start = datetime(y, m, 1, tzinfo=self.tz)
            end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=self.tz)
            found = (int(start.timestamp() * 1000), int(end.timestamp() * 1000))
            self._bounds[month] = found
        return found


def next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + (m == 12):04d}-{m % 12 + 1:02d}"


def reply_score(reply: Mapping, scale: float) -> float | None:
    """The score of a valid reply: mean of its answered items x ``scale`` (None: no item)."""
    answered = [reply[i] for i in ITEMS if reply.get(i) is not None]
    if not answered:
        return None
    return sum(answered) * scale / len(answered)


def month_value(score_sum: float, valid: int) -> float | None:
    """A hall's month value: the mean of its valid replies' scores, rounded half-up to 2."""
    return round2(score_sum / valid) if valid else None


# -- 1. per ledger partition ---------------------------------------------------------------------

class HallSurveyMonths:
    """One ledger partition's SMS-survey partials per (hall, month), and its month closes."""

    def __init__(self, rules: Rules, partition: int):
        self.version = rules.version
        self.scale = rules.halls.item_scale
        self.partition = partition
        self.months = Months(rules.windows.business_timezone)
        self.month: str | None = None   # the month of the partition clock
        self.month_end = 0              # its end (ms): the clock reaching it closes the month
        self.rows: dict[tuple[str, str], list] = {}   # (hall, month) -> partial
        self.cities: dict[str, str] = {}               # hall -> city (first seen)
        self.late_replies = 0
        self._touched: set[tuple[str, str]] = set()
        self._closed_rows: list[dict] = []
        self._markers: list[dict] = []

    def advance(self, clock: int) -> None:
        """The partition clock moved to ``clock``: close every month that ended."""
        if self.month is None:
            self.month = self.months.key(clock)
            self.month_end = self.months.bounds(self.month)[1]
            return
        while clock >= self.month_end:
            self._close(self.month)
            self.month = next_month(self.month)
            self.month_end = self.months.bounds(self.month)[1]

    def add_reply(self, reply: Mapping) -> None:
        """Fold one ``hall.survey_responded`` (the clock has been advanced to or past it)."""
        month = self.months.key(reply["occurred_at"])
        if self.month is not None and month < self.month:
            self.late_replies += 1  # its month is closed on this partition
            return
        hall = reply["hall_id"]
        self.cities.setdefault(hall, reply["city"])
        key = (hall, month)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0, 0, 0, 0.0] + [0.0, 0] * len(ITEMS)
        row[_VERSION] += 1
        row[_REPLIES] += 1
        self._touched.add(key)
        if not reply["valid"]:
            return
        score = reply_score(reply, self.scale)
        if score is None:  # validation refuses a valid reply without items; be safe
            return
        row[_VALID] += 1
        row[_SCORE] += score
        for i, item in enumerate(ITEMS):
            value = reply.get(item)
            if value is not None:
                row[_ITEM0 + 2 * i] += value
                row[_ITEM0 + 2 * i + 1] += 1

    def _close(self, month: str) -> None:
        start, end = self.months.bounds(month)
        halls = sorted(h for h, m in self.rows if m == month)
        finals = []
        for hall in halls:
            row = self.rows.pop((hall, month))
            self._touched.discard((hall, month))
            row[_VERSION] += 1  # the close is a change: the closed row supersedes the others
            self._closed_rows.append(self._row_event(hall, month, row, closed=True))
            finals.append((hall, row))
        self._markers.append({
            "event_id": derived_id(MONTH_CLOSED, self.version, self.partition, month),
            "event_type": MONTH_CLOSED,
            "occurred_at": end,
            "customer_id": "",
            "channel": HALL_CHANNEL,
            "city": "",
            "agent_id": None,
            "correlation_id": None,
            "rules_version": self.version,
            "source_partition": self.partition,
            "month": month,
            "month_end": end,
            "hall_ids": [h for h, _ in finals],
            "hall_cities": [self.cities.get(h, "") for h, _ in finals],
            "replies": [r[_REPLIES] for _, r in finals],
            "valid_replies": [r[_VALID] for _, r in finals],
            "score_sums": [r[_SCORE] for _, r in finals],
        })

    def _row_event(self, hall: str, month: str, row: list, closed: bool) -> dict:
        start = self.months.bounds(month)[0]
        event = {
            "event_id": derived_id(MONTH_UPDATED, self.version, self.partition, hall, month,
                                   row[_VERSION]),
            "event_type": MONTH_UPDATED,
            "occurred_at": start,
            "customer_id": "",
            "channel": HALL_CHANNEL,
            "city": self.cities.get(hall, ""),
            "agent_id": None,
            "correlation_id": None,
            "rules_version": self.version,
            "hall_id": hall,
            "month": month,
            "month_start": start,
            "source_partition": self.partition,
            "version": row[_VERSION],
            "closed": closed,
            "replies": row[_REPLIES],
            "valid_replies": row[_VALID],
            "score_sum": row[_SCORE],
        }
        for i, item in enumerate(ITEMS):
            event[f"{item}_sum"] = float(row[_ITEM0 + 2 * i])
            event[f"{item}_count"] = row[_ITEM0 + 2 * i + 1]
        return event

    def drain(self) -> list[dict]:
        """The partials touched since the last drain (sorted), the rows closed, the markers."""
        out = self._closed_rows
        for key in sorted(self._touched):
            out.append(self._row_event(key[0], key[1], self.rows[key], closed=False))
        out += self._markers
        self._touched = set()
        self._closed_rows = []
        self._markers = []
        return out

    def snapshot(self) -> dict:
        return {"month": self.month, "late_replies": self.late_replies,
                "cities": dict(self.cities),
                "rows": [[h, m, list(r), (h, m) in self._touched] for (h, m), r in
                         sorted(self.rows.items())],
                "undrained": self._closed_rows + self._markers}

    def restore(self, plain: Mapping | None) -> None:
        if not plain:
            return
        self.month = plain.get("month")
        self.month_end = self.months.bounds(self.month)[1] if self.month else 0
        self.late_replies = plain.get("late_replies", 0)
        self.cities = dict(plain.get("cities", {}))
        self.rows = {(h, m): list(r) for h, m, r, _ in plain.get("rows", ())}
        self._touched = {(h, m) for h, m, _, touched in plain.get("rows", ()) if touched}
        undrained = list(plain.get("undrained", ()))
        self._closed_rows = [e for e in undrained if e["event_type"] == MONTH_UPDATED]
        self._markers = [e for e in undrained if e["event_type"] == MONTH_CLOSED]


# -- 2. the hall-months fold ---------------------------------------------------------------------

STATE_FORMAT = 1


class HallMonths:
    """Decides hall months from the markers of all ledger partitions (module docstring)."""

    def __init__(self, rules: Rules, partitions: int):
        if partitions < 1:
            raise ValueError("the hall-months fold needs the number of ledger partitions")
        self.rules = rules
        self.partitions = partitions
        self.months = Months(rules.windows.business_timezone)
        self.closed: dict[int, str] = {}              # partition -> last month it closed
        self.pending: dict[str, dict[str, list]] = {}  # month -> hall -> [city, replies, valid, sum]
        self.decided: str | None = None               # the last month decided
        self.halls: dict[str, dict] = {}               # hall -> streak state
        self.duplicates = 0

    def apply(self, marker: Mapping) -> list[dict]:
        """Fold one ``hall.survey_month_closed``; returns the flags and clears it decides."""
        if marker.get("event_type") != MONTH_CLOSED:
            return []
        p = int(marker["source_partition"])
        month = marker["month"]
        if (p in self.closed and month <= self.closed[p]) or (
                self.decided is not None and month <= self.decided):
            self.duplicates += 1
            return []
        per_hall = self.pending.setdefault(month, {})
        for hall, city, replies, valid, score in zip(
                marker["hall_ids"], marker["hall_cities"], marker["replies"],
                marker["valid_replies"], marker["score_sums"]):
            acc = per_hall.get(hall)
            if acc is None:
                per_hall[hall] = [city, replies, valid, score]
            else:
                acc[1] += replies
                acc[2] += valid
                acc[3] += score
        self.closed[p] = month
        return self._decide_ready()

    def apply_all(self, markers: Iterable[Mapping]) -> list[dict]:
        out: list[dict] = []
        for m in markers:
            out += self.apply(m)
        return out

    def _decide_ready(self) -> list[dict]:
        if any(p not in self.closed for p in range(self.partitions)):
            return []
        through = min(self.closed[p] for p in range(self.partitions))
        month = next_month(self.decided) if self.decided is not None else min(self.pending)
        out: list[dict] = []
        while month <= through:
            out += self._decide(month)
            self.decided = month
            month = next_month(month)
        return out

    def _decide(self, month: str) -> list[dict]:
        rules = self.rules.halls
        target = rules.target
        end = self.months.bounds(month)[1]
        values = self.pending.pop(month, {})
        out = []
        for hall in sorted(set(values) | set(self.halls)):
            state = self.halls.get(hall)
            acc = values.get(hall)
            if state is None:
                state = self.halls[hall] = {"city": acc[0], "streak": [], "flagged": None}
            if acc is not None and acc[0]:
                state["city"] = acc[0]
            valid = acc[2] if acc else 0
            value = month_value(acc[3], valid) if acc else None
            qualifies = valid >= rules.min_valid_replies and value is not None
            if state["flagged"] is not None:
                if qualifies and value >= target:
                    out.append(self._cleared(hall, state, month, end, value, valid))
                    state["flagged"] = None
                    state["streak"] = []
                continue
            if qualifies and value < target:
                state["streak"].append([month, value, valid])
                if len(state["streak"]) >= rules.months_below_target:
                    streak = state["streak"][-rules.months_below_target:]
                    out.append(self._flagged(hall, state, month, end, streak))
                    state["flagged"] = [m for m, _, _ in streak]
                    state["streak"] = []
            else:
                state["streak"] = []
        return out

    def _envelope(self, event_type: str, hall: str, state: dict, month: str, end: int) -> dict:
        version = self.rules.version
        return {
            "event_id": derived_id(event_type, version, hall, month),
            "event_type": event_type,
            "occurred_at": end,
            "customer_id": "",
            "channel": HALL_CHANNEL,
            "city": state["city"] or "",
            "agent_id": None,
            "correlation_id": None,
            "rules_version": version,
            "hall_id": hall,
        }

    def _flagged(self, hall: str, state: dict, month: str, end: int, streak: list) -> dict:
        return {**self._envelope(FLAGGED, hall, state, month, end),
                "months": [m for m, _, _ in streak], "values": [v for _, v, _ in streak],
                "valid_replies": [n for _, _, n in streak], "target": self.rules.halls.target}

    def _cleared(self, hall: str, state: dict, month: str, end: int, value: float,
                 valid: int) -> dict:
        return {**self._envelope(CLEARED, hall, state, month, end),
                "month": month, "value": value, "valid_replies": valid,
                "target": self.rules.halls.target,
                "flagged_months": list(state["flagged"] or [])}

    def flagged_halls(self) -> dict[str, list[str]]:
        """Halls flagged now: hall -> the months of the streak that flagged it."""
        return {h: list(s["flagged"]) for h, s in sorted(self.halls.items()) if s["flagged"]}

    # -- state ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"format": STATE_FORMAT, "rules_version": self.rules.version,
                "partitions": self.partitions,
                "closed": {str(p): m for p, m in sorted(self.closed.items())},
                "pending": {m: {h: list(v) for h, v in sorted(hs.items())}
                            for m, hs in sorted(self.pending.items())},
                "decided": self.decided,
                "halls": {h: {"city": s["city"], "streak": [list(x) for x in s["streak"]],
                              "flagged": s["flagged"]} for h, s in sorted(self.halls.items())},
                "duplicates": self.duplicates}

    def restore(self, plain: Mapping | None) -> None:
        if not plain:
            return
        if plain.get("format") != STATE_FORMAT:
            raise ValueError(f"hall-months state format {plain.get('format')!r} is not "
                             f"{STATE_FORMAT}")
        self.closed = {int(p): m for p, m in plain["closed"].items()}
        self.pending = {m: {h: list(v) for h, v in hs.items()} for m, hs in plain["pending"].items()}
        self.decided = plain["decided"]
        self.halls = {h: {"city": s["city"], "streak": [list(x) for x in s["streak"]],
                          "flagged": s["flagged"]} for h, s in plain["halls"].items()}
        self.duplicates = plain.get("duplicates", 0)


def markers(derived: Iterable[Mapping]) -> list[Mapping]:
    """The ``hall.survey_month_closed`` among derived events, in order."""
    return [d for d in derived if d["event_type"] == MONTH_CLOSED]

