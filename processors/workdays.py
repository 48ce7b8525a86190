"""Working days on mainland China's calendar, for the working-day complaint SLA profile
(domain.md, "Service halls, feedback, incidents and quality control"; seed: the service
manual, §3.2: preliminary investigation within 3 working days, the result within 7).

The calendar is the maintained ``chinese-calendar`` package (import ``chinese_calendar``): the
State Council's public holidays and the make-up working days (调休, a Saturday or Sunday that is
a working day) of every year it knows (2004 to 2026 in version 1.11.0). It is updated once a
year, when the State Council publishes the next year's arrangement (usually in November).

Counting, as Chinese rules count a period of days (期间开始的日不计算在期间内, the period ends
at the end of its last day): the day of filing does not count, whatever time and whatever kind
of day it is; the Nth working day after it is the last day, and the deadline is the end of that
day, local midnight in the business time zone. A complaint filed on Friday 2025-09-26 has its
3-working-day deadline at the end of Tuesday 09-30 (Sunday 09-28 is a make-up working day) and
its 7-working-day deadline at the end of Monday 10-13 (10-01 to 10-08 are the National Day
holiday, Saturday 10-11 a make-up working day).

Years the rules do not vouch for: the rules file names the last year the calendar is used for
(``complaints.working_days.last_calendar_year``); a day in a later year counts as a working day
when it is Monday to Friday, and the fold records that on the complaint (an anomaly). The value
is part of the versioned rules on purpose: a newer package that knows the next year must not
change, under the same rules version, deadlines a replay recomputes. Updating the package and
raising ``last_calendar_year`` (and the rules version) is the yearly chore; ``load_rules``
refuses a ``last_calendar_year`` the installed package does not know.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


def calendar_covers(year: int) -> str | None:
    """None when the installed calendar knows ``year``; else why not (for the rules check)."""
    try:
        import chinese_calendar
    except ImportError:
        return ("the working-day calendar needs the chinese-calendar package "
                "(pip install chinese-calendar)")
    try:
        chinese_calendar.is_workday(date(year, 12, 31))
    except NotImplementedError as exc:
        return (f"the installed chinese-calendar {_version()} does not know {year} ({exc}); "
                "install a newer one or lower last_calendar_year")
    return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chinese-calendar")
    except Exception:
        return "(unknown version)"


class WorkdayCalendar:
    """Working days in a business time zone; ``last_year``: see the module docstring."""

    def __init__(self, timezone: str, last_year: int):
        self.tz = ZoneInfo(timezone)
        self.last_year = last_year

    def is_workday(self, day: date) -> bool:
        return _is_workday(day, self.last_year)

    def vouched(self, day: date) -> bool:
        """True when ``day`` is in a year the calendar is used for (not a weekday guess)."""
        return 2004 <= day.year <= self.last_year

    def local_date(self, ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, self.tz).date()

    def midnight(self, day: date) -> int:
        """Epoch ms of local midnight at the start of ``day``."""
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp() * 1000)

    def deadline(self, start_ms: int, working_days: int) -> tuple[int, list[int]]:
        """(deadline ms, years counted Monday-Friday) of ``working_days`` working days after
        the local day of ``start_ms``: the end of the last of them."""
        day = self.local_date(start_ms)
        counted = 0
        guessed: list[int] = []
        while counted < working_days:
            day += timedelta(days=1)
            if self.is_workday(day):
                counted += 1
            if not self.vouched(day) and day.year not in guessed:
                guessed.append(day.year)
        return self.midnight(day + timedelta(days=1)), guessed


@lru_cache(maxsize=8192)
def _is_workday(day: date, last_year: int) -> bool:
    if 2004 <= day.year <= last_year:
        import chinese_calendar

        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:  # load_rules checked the years; be safe all the same
            pass
    return day.weekday() < 5
