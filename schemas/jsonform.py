"""Record form -> JSON form of the contract (ISO-8601 times, money as strings)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

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


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON text of the event in its JSON form (what ledger_events.payload holds)."""
    return json.dumps(to_json_form(record), ensure_ascii=False, separators=(",", ":"))
