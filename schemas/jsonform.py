"""Record form -> JSON form of the contract (ISO-8601 times, money as strings)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson

TIME_FIELDS = ("occurred_at", "deadline", "window_start")


def iso_millis(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def to_json_form(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for name in TIME_FIELDS:
        value = out.get(name)
        if isinstance(value, int):
            out[name] = iso_millis(value)
    for name, value in out.items():
        if isinstance(value, Decimal):
            out[name] = f"{value:.2f}"
    return out


def compact_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, what ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``
    means, in a third of its time (orjson); orjson writes some floats differently (``0.00001``
    against ``1e-05``), the same values. A value orjson cannot write (an integer beyond 64
    bits) goes through the json module."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON text of the event in its JSON form (what ledger_events.payload holds).
    Compare two of them with ``same_payload``, not byte for byte."""
    return compact_json(to_json_form(record)).decode()


def same_payload(a: str, b: str) -> bool:
    """Whether two payload texts hold the same event (equal text, or equal once parsed: a
    payload written by an earlier release may format a float differently)."""
    return a == b or json.loads(a) == json.loads(b)
