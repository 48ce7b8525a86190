"""Record form -> JSON form of the contract (ISO-8601 times, money as strings)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import orjson

TIME_FIELDS = ("occurred_at", "deadline", "window_start")

_DAY_MS = 86_400_000
_DAYS: dict[int, str] = {}  # "YYYY-MM-DDT" by day since the epoch (UTC), the days seen


def iso_millis(ms: int) -> str:
    """UTC ISO-8601 with milliseconds, e.g. ``2026-03-01T08:15:00.250+00:00``: what
    ``datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")``
    writes, exactly (no float rounding), in a fifth of its time: the date is looked up per
    day, the time of day is integer arithmetic (UTC days have 86,400 s here, as in Python)."""
    day, rest = divmod(ms, _DAY_MS)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) > 100_000:
            _DAYS.clear()
        date = _DAYS[day] = (datetime(1970, 1, 1, tzinfo=timezone.utc)
                             + timedelta(days=day)).isoformat()[:11]
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{date}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}+00:00"


def _iso_times(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with its times (epoch milliseconds) in ISO-8601."""
    out = dict(record)
    for name in TIME_FIELDS:
        value = out.get(name)
        if isinstance(value, int):
            out[name] = iso_millis(value)
    return out


def to_json_form(record: dict[str, Any]) -> dict[str, Any]:
    out = _iso_times(record)
    for name, value in out.items():
        if isinstance(value, Decimal):
            out[name] = f"{value:.2f}"
    return out


def compact_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON, what ``json.dumps(value, separators=(",", ":"), ensure_ascii=False,
    default=default)`` means, in a third of its time (orjson); orjson writes some floats
    differently (``0.00001`` against ``1e-05``), the same values. A value orjson cannot write
    (an integer beyond 64 bits) goes through the json module."""
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=default).encode()


def _money(value: Any) -> str:
    """A Decimal (money) as the JSON form writes it; anything else cannot be written."""
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON text of the event in its JSON form (what ledger_events.payload holds).
    Compare two of them with ``same_payload``, not byte for byte."""
    # to_json_form's text: its money is written by ``_money`` as orjson meets it, rather
    # than looked for in every field first
    return compact_json(_iso_times(record), default=_money).decode()


def same_payload(a: str, b: str) -> bool:
    """Whether two payload texts hold the same event (equal text, or equal once parsed: a
    payload written by an earlier release may format a float differently)."""
    return a == b or json.loads(a) == json.loads(b)
