"""Turn an event in the JSON form of the contract into the record form, or say what is wrong.

The checks are driven by the Avro schema of the event type (field names, types, enums,
optional fields) plus the value rules of the domain contract the schema cannot express
(ranges, formats, privacy). Errors name the field, so a channel can fix its payload.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Callable

from schemas.catalogue import DERIVED_TYPES, Catalogue, default_catalogue


class EventValidationError(ValueError):
    """An event that breaks the contract. ``field`` is None for whole-event problems."""

    def __init__(self, reason: str, field: str | None = None, event_type: str | None = None,
                 event_id: str | None = None):
        self.reason = reason
        self.field = field
        self.event_type = event_type
        self.event_id = event_id
        where = f"field '{field}': " if field else ""
        super().__init__(f"{where}{reason}")

    def describe(self) -> str:
        """The error with the event it is about, e.g. for a log line or a rejects file."""
        what = self.event_type or "event"
        if self.event_id:
            what += f" {self.event_id}"
        return f"{what}: {self}"


_MIN_MS = 946_684_800_000  # 2000-01-01
_MAX_MS = 4_102_444_800_000  # 2100-01-01
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_CITY = re.compile(r"^[a-z][a-z0-9_]*$")
# A mainland mobile number or an e-mail address is personal data, not a pseudonymous id.
_PERSONAL = re.compile(r"^(\+?86)?1[3-9]\d{9}$|@")

# Value rules the Avro types cannot carry: (low, high) inclusive.
_RANGES: dict[str, tuple[float, float]] = {
    "wait_seconds": (0, 86_400 * 30),
    "first_response_seconds": (0, 86_400 * 30),
    "handle_seconds": (0, 86_400 * 30),
    "transfers": (0, 1_000),
    "response_speed": (0, 100),
    "resolution_efficiency": (0, 100),
    "attitude": (0, 100),
    "follow_up": (0, 100),
    "nps": (0, 10),
    "level": (1, 3),
}


def parse_occurred_at(value: Any) -> int:
    """ISO-8601 with an offset, or epoch milliseconds (int or digits) -> epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO-8601 time with offset or epoch milliseconds")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value!r}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no UTC offset; add one, e.g. +08:00 or Z")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("must be an ISO-8601 time with offset or epoch milliseconds")
    if not _MIN_MS <= ms < _MAX_MS:
        raise ValueError(f"{value!r} is not a time between 2000 and 2100 (epoch milliseconds?)")
    return ms


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"must be an integer, got {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"must be a number, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be true or false, got {value!r}")


def _to_money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"must be a decimal amount such as \"1200.00\", got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"must be a decimal amount such as \"1200.00\", got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative amount, got {value!r}")
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"has more than 2 decimal places: {value!r}")
    return amount.quantize(Decimal("0.01"))


def _to_uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"must be a UUID, got {value!r}") from None


def _enum(symbols: tuple[str, ...]) -> Callable[[Any], str]:
    allowed = tuple(s for s in symbols if s != "unknown")

    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return convert


def _converter(avro_type: Any) -> tuple[Callable[[Any], Any], bool]:
    """(converter, nullable) for an Avro field type of our schemas."""
    if isinstance(avro_type, list):
        inner = [t for t in avro_type if t != "null"]
        return _converter(inner[0])[0], "null" in avro_type
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "timestamp-millis":
            return parse_occurred_at, False
        if logical == "uuid":
            return _to_uuid, False
        if logical == "decimal":
            return _to_money, False
        if avro_type["type"] == "enum":
            return _enum(tuple(avro_type["symbols"])), False
        if avro_type["type"] == "array":
            return (lambda v: [_to_str(x) for x in v]), False
        return _converter(avro_type["type"])
    return {
        "string": _to_str, "int": _to_int, "long": _to_int, "double": _to_float,
        "float": _to_float, "boolean": _to_bool,
    }[avro_type], False


@cache
def _plan(event_type: str, catalogue: Catalogue) -> tuple[tuple[str, Callable, bool, bool, Any], ...]:
    """Per field: (name, converter, nullable, has_default, default)."""
    schema = catalogue.latest(event_type).definition
    named: dict[str, Any] = {}
    plan = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and "name" in t:
            named[t["name"]] = t
        if isinstance(t, str) and t in named:
            t = named[t]
        convert, nullable = _converter(t)
        plan.append((f["name"], convert, nullable, "default" in f, f.get("default")))
    return tuple(plan)


def normalize_event(event: dict[str, Any], *, catalogue: Catalogue | None = None,
                    allow_derived: bool = False) -> dict[str, Any]:
    """Validate an event in JSON form and return its record form (a new dict).

    Fills ``event_id`` when absent. Raises EventValidationError naming the field.
    """
    if not isinstance(event, dict):
        raise EventValidationError(f"an event must be a JSON object, got {type(event).__name__}")
    catalogue = catalogue or default_catalogue()
    event_type = event.get("event_type")
    event_id = event.get("event_id")
    if not event_type:
        raise EventValidationError("missing", "event_type", event_id=event_id)
    if event_type not in catalogue.versions:
        known = ", ".join(catalogue.interaction_types)
        raise EventValidationError(f"unknown event_type {event_type!r}; expected one of: {known}",
                                   "event_type", event_type=None, event_id=event_id)
    if event_type in DERIVED_TYPES and not allow_derived:
        raise EventValidationError(f"{event_type} is derived by the processors; channels cannot "
                                   "publish it", "event_type", event_type, event_id)
    plan = _plan(event_type, catalogue)
    names = {p[0] for p in plan}
    unknown = sorted(k for k in event if k not in names)
    if unknown:
        raise EventValidationError(f"not a field of {event_type} (misspelt?)", unknown[0],
                                   event_type, event_id)
    record: dict[str, Any] = {}
    for name, convert, nullable, has_default, default in plan:
        value = event.get(name)
        if value is None or value == "" and name != "customer_id":
            if name == "event_id":
                record[name] = str(uuid.uuid4())
                continue
            if nullable:
                record[name] = None
                continue
            if has_default:
                record[name] = default
                continue
            raise EventValidationError("missing (required)", name, event_type, event_id)
        try:
            converted = convert(value)
        except ValueError as exc:
            raise EventValidationError(str(exc), name, event_type, event_id) from None
        bounds = _RANGES.get(name)
        if bounds and not bounds[0] <= converted <= bounds[1]:
            raise EventValidationError(f"must be between {bounds[0]:g} and {bounds[1]:g}, got "
                                       f"{value!r}", name, event_type, event_id)
        record[name] = converted
    _check_values(record, event_type, event_id)
    return record


def _check_values(record: dict[str, Any], event_type: str, event_id: Any) -> None:
    if _PERSONAL.search(record["customer_id"]):
        raise EventValidationError("looks like a phone number or e-mail address; publish the "
                                   "pseudonymous customer id instead", "customer_id",
                                   event_type, event_id)
    if not _CITY.match(record["city"]):
        raise EventValidationError(f"must be a lower-case city code such as 'beijing', got "
                                   f"{record['city']!r}", "city", event_type, event_id)
    if "period" in record and not _PERIOD.match(record["period"]):
        raise EventValidationError(f"must be YYYY-MM, got {record['period']!r}", "period",
                                   event_type, event_id)
