"""Turn an event in the JSON form of the contract into the record form, or say what is wrong.

The checks are driven by the Avro schema of the event type (field names, types, enums,
optional fields) plus the value rules of the domain contract the schema cannot express
(ranges, formats, privacy, the bounds below). Errors name the field, so a channel can fix its
payload, and quote at most ``MAX_QUOTED_CHARS`` of a bad value, so a hostile value cannot
flood a terminal, a rejects file or an HTTP answer.

Text rules (why: an event is immutable, so what enters the ledger stays; ids are join keys
and dashboard labels; the Kafka message that carries the event has a size limit):

- **ids and codes** (every string field not listed below; e.g. ``customer_id``, ``agent_id``,
  ``complaint_id``, ``plan_code``): at most ``MAX_ID_CHARS`` (ids) or ``MAX_CODE_CHARS``
  (codes, ``CODE_FIELDS``) characters; no control characters (C0, DEL, C1), no invisible
  format characters (zero-width, bidi overrides, BOM), no line or paragraph separators, no
  lone surrogates; no leading or trailing whitespace (``" c-1"`` would be another customer).
- **free text** (``TEXT_FIELDS``: ``reason``): at most ``MAX_TEXT_CHARS`` characters; tab and
  newline (LF) are the only control characters allowed (CR is not: use ``\\n``); format
  characters are allowed (emoji sequences and right-to-left text need them); lone surrogates
  are not (they cannot be encoded).
- Quotes, semicolons, ``--`` and other SQL-looking text are ordinary data: every statement the
  project runs binds values as parameters, so ``'; DROP TABLE ledger_events; --`` is stored
  and read back byte for byte.

Personal data (PII) never enters the ledger in clear. Every string field of an event is
scanned for (``find_pii``):

- **phone numbers**: mainland mobile numbers (``1[3-9]`` + 9 digits; with ``+86``, ``0086`` or
  ``86`` before it; a space or hyphen between any digits: ``+86 138-0013-8000``) and landline
  numbers (``0`` + a 2- or 3-digit area code + a 7- or 8-digit number that starts with 2-9, the
  area code optionally in parentheses, or ``+86``/``0086`` + the area code without its ``0``:
  ``010-6552 9988``, ``(0755)26888888``, ``+86 10 65529988``);
- **national id numbers**: the 18-character resident identity number (6-digit region, a real
  birth date from 1800 on, 3-digit sequence, check character), accepted only when its ISO 7064
  MOD 11-2 check character is right, so that other 18-digit numbers are not taken for one;
- **e-mail addresses** (``local@domain.tld``);
- **names in free text** (``TEXT_FIELDS``), when they are labelled: after ``姓名：``,
  ``名字：``, ``联系人：``, ``称呼：``, ``客户姓名：``, ``姓名是/为``, ``名字是/叫``,
  ``我的名字是/叫`` (2-4 Chinese characters) or ``name:``, ``full name:``, ``customer name:``,
  ``contact:``, ``my name is`` (1-3 capitalised words). An unlabelled name in free text ("王先生
  called twice") is not recognised: there is no reliable pattern for it short of a named-entity
  model; channels must not write names into ``reason``, and ids never carry names (an agent's
  name in ``agent_id`` is the agent's, not a customer's, and is allowed).

A number is only taken for one of these when no ASCII letter or digit touches it on either side:
``c13800138000`` or a hex digest is an id, not a phone number.

Without a key the event is refused (``EventValidationError`` naming the field, the kind of
data and its position, never quoting it). With a key (``normalize_event(...,
pseudonymize=Pseudonymizer(key))``; the SDK builds it from ``CXLEDGER_PII_HMAC_KEY``) the
data is replaced by its pseudonym ``pii-<kind>-<26 base32 characters>``: the first 128 bits of
HMAC-SHA256(key, "<kind>:<canonical form>"), kind ``phone``, ``idno``, ``email``, ``name`` or
``id``. The canonical form makes the same person give the same pseudonym whatever the channel
wrote: a mobile number's 11 digits (no +86, no separators), a landline's digits with the area
code's 0, an id number with an upper-case X, an e-mail address in lower case, a name with single
spaces, case-folded. Field by field:

- **ids and codes**: an id that *is* one of the above (``customer_id = "+86 138 0013 8000"``)
  becomes the pseudonym of that phone number, wholly, so the customer's events from every
  channel join on it; an id that *contains* one (``"wx-13800138000"``) is replaced wholly by the
  pseudonym of the whole id (kind ``id``): still one stable id per customer, nothing of it left.
- **free text**: each occurrence is replaced by its pseudonym in place, the rest of the text
  is kept (``"call me on 13800138000"`` -> ``"call me on pii-phone-..."``).

Pseudonyms are lower-case base32 (letters and the digits 2-7), so they never look like any of
the above: a consumer that checks an event again (``ledger_refusal``) accepts them. The key must
stay the same for joins to keep working; a new key starts new pseudonyms.

Time rules: ``occurred_at`` is not before ``EARLIEST_OCCURRED_AT_MS`` (2000-01-01 UTC) and not
more than ``MAX_AHEAD_MS`` (one day) ahead of the validating machine's clock: a later time is a
wrong year, a wrong time zone or seconds taken for milliseconds, and the processors, whose
clock is event time, would fire every deadline up to it at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Callable

from schemas.catalogue import DERIVED_TYPES, OPERATIONAL_KEYS, Catalogue, default_catalogue, key_field


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
        what = self.event_type if isinstance(self.event_type, str) else "event"
        if self.event_id:
            shown = self.event_id if _is_plain_id(self.event_id) else _show(self.event_id)
            what += f" {shown}"
        return f"{what}: {self}"


# -- bounds -------------------------------------------------------------------------------------
EARLIEST_OCCURRED_AT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: nothing in the ledger is older
LATEST_PARSEABLE_MS = 4_102_444_800_000  # 2100-01-01: a larger number is not epoch milliseconds
MAX_AHEAD_MS = 86_400_000  # occurred_at may be at most one day ahead of this machine's clock

MAX_ID_CHARS = 128  # customer, agent, correlation, contact, complaint, survey, proposal ids
MAX_CODE_CHARS = 64  # city, period and plan codes
MAX_TEXT_CHARS = 2_000  # free text
TEXT_FIELDS = frozenset({"reason"})
CODE_FIELDS = frozenset({"city", "cities", "period", "plan_code", "from_plan", "to_plan"})
MAX_QUOTED_CHARS = 60  # how much of a bad value an error message quotes

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_CITY = re.compile(r"[a-z][a-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")  # all but TAB, LF
_ID_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_CHAR_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BACKSPACE", 0x09: "TAB", 0x0A: "LF", 0x0D: "CR",
               0x1B: "ESC", 0x7F: "DEL", 0x85: "NEL"}

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
    # service halls, supervision, quality control (domain.md, "Service halls ...")
    "handling_seconds": (0, 86_400 * 30),
    "overall": (1, 10),
    "environment": (1, 10),
    "waiting": (1, 10),
    "handling": (1, 10),
    "staff_attitude": (1, 10),
    "customers_received": (0, 100_000),
    "unresolved": (0, 100_000),
    "sampled": (0, 1_000_000),
    "passed": (0, 1_000_000),
    "score": (0, 100),
}
#: The five items of the hall SMS survey; a valid reply answers at least one.
HALL_SURVEY_ITEMS = ("overall", "environment", "waiting", "handling", "staff_attitude")
# (field, the field it may not exceed): counts that are parts of another count
_AT_MOST = (("unresolved", "customers_received"), ("passed", "sampled"))


# -- quoting bad values -------------------------------------------------------------------------

def _show(value: Any) -> str:
    """repr of a bad value for an error message, cut to MAX_QUOTED_CHARS."""
    if isinstance(value, str) and len(value) > MAX_QUOTED_CHARS:
        return f"{value[:MAX_QUOTED_CHARS]!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}..."


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _field_label(name: str) -> str:
    """A field name from the payload, safe to print: escaped and cut when it is odd."""
    if _is_plain_id(name):
        return name
    cut = name[:MAX_QUOTED_CHARS]
    return repr(cut)[1:-1] + ("..." if len(name) > len(cut) else "")


def _is_plain_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_ID_CHARS
            and value.isprintable() and value == value.strip())


def _char(ch: str) -> str:
    """``U+0007 (BEL)``: a character named so that it can be found in the payload."""
    code = ord(ch)
    name = _CHAR_NAMES.get(code) or unicodedata.name(ch, "")
    if 0xD800 <= code <= 0xDFFF:
        name = "lone surrogate"
    return f"U+{code:04X}" + (f" ({name})" if name else "")


# -- times --------------------------------------------------------------------------------------

def parse_occurred_at(value: Any) -> int:
    """ISO-8601 with an offset, or epoch milliseconds (int or digits) -> epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO-8601 time with offset or epoch milliseconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a time, got {value!r}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {_show(value)}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{_show(value)} has no UTC offset; add one, e.g. +08:00 or Z")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("must be an ISO-8601 time with offset or epoch milliseconds")
    if not EARLIEST_OCCURRED_AT_MS <= ms < LATEST_PARSEABLE_MS:
        raise ValueError(f"{_show(value)} is not a time between 2000 and 2100 (epoch "
                         "milliseconds?)")
    return ms


def _check_not_ahead(ms: int, now_ms: int) -> None:
    if ms > now_ms + MAX_AHEAD_MS:
        hours = (ms - now_ms) / 3_600_000
        raise ValueError(f"is {hours:,.1f} hours ahead of this machine's clock; at most "
                         f"{MAX_AHEAD_MS // 3_600_000} hours ahead is accepted (a wrong year "
                         "or time zone?)")


# -- converters ---------------------------------------------------------------------------------

def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float) and math.isfinite(value):
            return str(value)
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _check_id(text: str, limit: int) -> str:
    """An id or code: bounded, printable, no surrounding whitespace."""
    if len(text) > limit:
        raise ValueError(f"at most {limit} characters, got {len(text)}")
    # Fast path: isprintable() is false for every forbidden category (and for the space
    # separators other than ' ', which are allowed: the slow path decides).
    if text.isprintable():
        if text[0] == " " or text[-1] == " ":
            raise ValueError(f"must not start or end with whitespace, got {_show(text)}")
        return text
    bad = _CONTROL.search(text)
    at = bad.start() if bad else None
    if at is None:
        at = next((i for i, ch in enumerate(text)
                   if unicodedata.category(ch) in _ID_FORBIDDEN_CATEGORIES), None)
    if at is not None:
        raise ValueError(f"contains {_char(text[at])} at position {at + 1}; ids and codes take "
                         "printable characters only")
    if text != text.strip():
        raise ValueError(f"must not start or end with whitespace, got {_show(text)}")
    return text


def _check_text(text: str, limit: int) -> str:
    """Free text: bounded; tab and newline are its only control characters."""
    if len(text) > limit:
        raise ValueError(f"at most {limit} characters, got {len(text)}")
    bad = _TEXT_FORBIDDEN.search(text)
    if bad:
        raise ValueError(f"contains {_char(bad.group())} at position {bad.start() + 1}; free "
                         "text takes tab and newline (\\n) but no other control character")
    return text


def string_limit(name: str) -> int:
    """The most characters string field ``name`` may hold."""
    if name in TEXT_FIELDS:
        return MAX_TEXT_CHARS
    return MAX_CODE_CHARS if name in CODE_FIELDS else MAX_ID_CHARS


def _string(name: str) -> Callable[[Any], str]:
    limit = string_limit(name)
    check = _check_text if name in TEXT_FIELDS else _check_id

    def convert(value: Any) -> str:
        if type(value) is not str or not value or value.isspace():
            value = _to_str(value)  # a number as text, or the error
        return check(value, limit)

    return convert


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 32 and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"must be an integer, got {_show(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number, got a boolean")
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str) and len(value) <= 64:
            number = float(value)
        else:
            number = None
    except (ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"must be a number, got {_show(value)}")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be true or false, got {_show(value)}")


MONEY_MAX_INTEGER_DIGITS = 12  # decimal(14,2)


def _to_money(value: Any) -> Decimal:
    example = "must be a decimal amount such as \"1200.00\""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"{example}, got {_show(value)}")
    if isinstance(value, str) and len(value) > 64:
        raise ValueError(f"{example}, got {_show(value)}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{example}, got {_show(value)}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative amount, got {_show(value)}")
    if amount >= Decimal(10) ** MONEY_MAX_INTEGER_DIGITS:
        raise ValueError(f"must be below 10^{MONEY_MAX_INTEGER_DIGITS} (decimal(14,2)), got "
                         f"{_show(value)}")
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"has more than 2 decimal places: {_show(value)}")
    return amount.quantize(Decimal("0.01"))


def _to_uuid(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ValueError(f"must be a UUID, got {_show(value)}")


def _enum(symbols: tuple[str, ...]) -> Callable[[Any], str]:
    allowed = tuple(s for s in symbols if s != "unknown")

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {_show(value)}")
        return value

    return convert


def _strings(name: str) -> Callable[[Any], list[str]]:
    element = _string(name)

    def convert(value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list of strings, got {type(value).__name__}")
        return [element(x) for x in value]

    return convert


def _converter(avro_type: Any, name: str) -> tuple[Callable[[Any], Any], bool]:
    """(converter, nullable) for the Avro type of field ``name`` of our schemas."""
    if isinstance(avro_type, list):
        inner = [t for t in avro_type if t != "null"]
        return _converter(inner[0], name)[0], "null" in avro_type
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
            return _strings(name), False
        return _converter(avro_type["type"], name)
    if avro_type == "string":
        return _string(name), False
    return {
        "int": _to_int, "long": _to_int, "double": _to_float,
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
        convert, nullable = _converter(t, f["name"])
        plan.append((f["name"], convert, nullable, "default" in f, f.get("default")))
    return tuple(plan)


def normalize_event(event: dict[str, Any], *, catalogue: Catalogue | None = None,
                    allow_derived: bool = False, now_ms: int | None = None,
                    pseudonymize: "Pseudonymizer | None" = None) -> dict[str, Any]:
    """Validate an event in JSON form and return its record form (a new dict).

    Fills ``event_id`` when absent. Raises EventValidationError naming the field.
    ``now_ms`` is the clock ``occurred_at`` may be at most MAX_AHEAD_MS ahead of (default:
    this machine's). Personal data in string fields is refused, or replaced by its pseudonym
    when ``pseudonymize`` is given (see the module docstring).
    """
    if not isinstance(event, dict):
        raise EventValidationError(f"an event must be a JSON object, got {type(event).__name__}")
    catalogue = catalogue or default_catalogue()
    event_type = event.get("event_type")
    event_id = event.get("event_id")
    if not event_type:
        raise EventValidationError("missing", "event_type", event_id=event_id)
    if not isinstance(event_type, str) or event_type not in catalogue.versions:
        known = ", ".join(catalogue.interaction_types)
        raise EventValidationError(f"unknown event_type {_show(event_type)}; expected one of: "
                                   f"{known}", "event_type", event_type=None, event_id=event_id)
    if event_type in DERIVED_TYPES and not allow_derived:
        raise EventValidationError(f"{event_type} is derived by the processors; channels cannot "
                                   "publish it", "event_type", event_type, event_id)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    record = _fast_path(event_type, catalogue)(event, now_ms)
    if record is not None:
        return record
    return _general_path(event, event_type, catalogue, now_ms, pseudonymize)


def _general_path(event: dict[str, Any], event_type: str, catalogue: Catalogue, now_ms: int,
                  pseudonymize: "Pseudonymizer | None") -> dict[str, Any]:
    """``normalize_event`` for an event of a known type: every conversion, every error."""
    event_id = event.get("event_id")
    plan = _plan(event_type, catalogue)
    names = {p[0] for p in plan}
    if event_type in OPERATIONAL_KEYS and "customer_id" in event:
        if event["customer_id"] not in (None, ""):
            raise EventValidationError(
                f"{event_type} is an operational event and has no customer: omit customer_id "
                f"(it is keyed by {OPERATIONAL_KEYS[event_type]})", "customer_id", event_type,
                event_id)
        event = {k: v for k, v in event.items() if k != "customer_id"}
    unknown = sorted(str(k) for k in event if k not in names)
    if unknown:
        raise EventValidationError(f"not a field of {event_type} (misspelt?)",
                                   _field_label(unknown[0]),
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
            raise EventValidationError(f"must be between {_number(bounds[0])} and "
                                       f"{_number(bounds[1])}, got {_show(value)}", name,
                                       event_type, event_id)
        record[name] = converted
    screen_pii(record, event_type, catalogue, pseudonymize)
    _check_values(record, event_type, event_id, now_ms)
    return record


def _check_values(record: dict[str, Any], event_type: str, event_id: Any, now_ms: int) -> None:
    try:
        _check_not_ahead(record["occurred_at"], now_ms)
    except ValueError as exc:
        raise EventValidationError(str(exc), "occurred_at", event_type, event_id) from None
    if not _CITY.fullmatch(record["city"]):
        raise EventValidationError(f"must be a lower-case city code such as 'beijing', got "
                                   f"{_show(record['city'])}", "city", event_type, event_id)
    if "period" in record and not _PERIOD.fullmatch(record["period"]):
        raise EventValidationError(f"must be YYYY-MM, got {_show(record['period'])}", "period",
                                   event_type, event_id)
    for part, whole in _AT_MOST:
        if part in record and whole in record and record[part] > record[whole]:
            raise EventValidationError(f"must be at most {whole} ({record[whole]}), got "
                                       f"{record[part]}", part, event_type, event_id)
    if "cities" in record:
        if not record["cities"]:
            raise EventValidationError("must name at least one affected city", "cities",
                                       event_type, event_id)
        for i, city in enumerate(record["cities"]):
            if not _CITY.fullmatch(city):
                raise EventValidationError(f"item {i + 1} must be a lower-case city code such "
                                           f"as 'beijing', got {_show(city)}", "cities",
                                           event_type, event_id)
    if (record.get("valid") is True and event_type == "hall.survey_responded"
            and all(record.get(item) is None for item in HALL_SURVEY_ITEMS)):
        raise EventValidationError("a valid reply answers at least one item (overall, "
                                   "environment, waiting, handling, staff_attitude); a blank "
                                   "reply has valid false", "valid", event_type, event_id)


# -- personal data (PII) ------------------------------------------------------------------------
_NOT_AFTER = r"(?<![0-9A-Za-z])"  # no ASCII letter or digit right before a match ...
_NOT_BEFORE = r"(?![0-9A-Za-z])"  # ... or right after it
_AREA = r"(?:10|2\d|[3-9]\d\d)"  # a landline area code without its 0: 10, 2x, 3 digits
_PII_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("idno", "a national id number", re.compile(
        _NOT_AFTER + r"[1-9]\d{5}(?:18|19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}"
        r"[\dXx]" + _NOT_BEFORE)),
    ("mobile", "a phone number (mainland mobile)", re.compile(
        _NOT_AFTER + r"(?:(?:\+|00)?86[ \-]?)?1[3-9](?:[ \-]?\d){9}" + _NOT_BEFORE)),
    ("landline", "a phone number (landline)", re.compile(
        _NOT_AFTER + r"(?:(?:\+|00)86[ \-]?\(?" + _AREA + r"\)?|\(?0" + _AREA + r"\)?)"
        r"[ \-]?[2-9]\d{2,3}[ \-]?\d{4}" + _NOT_BEFORE)),
    ("email", "an e-mail address", re.compile(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
        + _NOT_BEFORE)),
)
_NAME_PATTERNS = (
    re.compile(r"(?:(?:客户姓名|姓名|名字|联系人|称呼)\s*[:：]|(?:姓名|名字)\s*[是为叫]"
               r"|我的名字\s*[是叫])\s*(?P<name>[\u4e00-\u9fff][\u4e00-\u9fff·]{1,3})"),
    re.compile(r"(?i:\b(?:(?:full |customer )?name\s*[:：]|contact\s*[:：]|my name is))"
               r"\s*(?P<name>[A-Z][a-z'\-]+(?:[ \t]+[A-Z][a-z'\-]+){0,2})"),
)
# Cheap tests before the patterns: 7 digits (with separators) or an @; a name label.
_PII_HINT = re.compile(r"@|\d[\d \-()]{6}")
_NAME_HINT = re.compile(r"姓名|名字|联系人|称呼|(?i:name|contact)")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
PSEUDONYM_PREFIX = "pii-"


def national_id_valid(text: str) -> bool:
    """True when ``text`` is an 18-character resident identity number with a real birth date
    and the right ISO 7064 MOD 11-2 check character."""
    if len(text) != 18 or not text[:17].isdigit() or text[17] not in "0123456789Xx":
        return False
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if born > date.today():
        return False
    total = sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == text[17].upper()


@dataclass(frozen=True)
class PiiMatch:
    """Personal data found in a text: ``kind`` (phone, idno, email, name), what it is in words,
    where (``start``/``end`` in the text) and its canonical form (the pseudonym's input)."""

    kind: str
    what: str
    start: int
    end: int
    canonical: str


def _canonical(kind: str, text: str) -> str:
    if kind == "mobile":
        return re.sub(r"\D", "", text)[-11:]
    if kind == "landline":
        digits = re.sub(r"\D", "", text)
        for prefix in ("0086", "86"):
            if text.lstrip("(").startswith(("+", "00")) and digits.startswith(prefix):
                return "0" + digits[len(prefix):]
        return digits
    if kind == "idno":
        return text.upper()
    if kind == "email":
        return text.lower()
    return " ".join(text.split()).casefold()  # a name


def find_pii(text: str, free_text: bool = False) -> list[PiiMatch]:
    """The personal data in ``text`` (module docstring), in order, never overlapping; names
    are looked for only in ``free_text``."""
    found: list[PiiMatch] = []
    if _PII_HINT.search(text):
        for kind, what, pattern in _PII_PATTERNS:
            for m in pattern.finditer(text):
                if kind == "idno" and not national_id_valid(m.group()):
                    continue
                found.append(PiiMatch("phone" if kind in ("mobile", "landline") else kind, what,
                                      m.start(), m.end(), _canonical(kind, m.group())))
    if free_text and _NAME_HINT.search(text):
        for pattern in _NAME_PATTERNS:
            for m in pattern.finditer(text):
                label = text[m.start():m.start("name")].strip()
                found.append(PiiMatch("name", f"a name (after {label!r})", m.start("name"),
                                      m.end("name"), _canonical("name", m.group("name"))))
    if len(found) < 2:
        return found
    found.sort(key=lambda m: (m.start, m.start - m.end))  # at one place, the longest first
    kept: list[PiiMatch] = []
    for m in found:
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    return kept


class Pseudonymizer:
    """Keyed pseudonyms of personal data: ``pii-<kind>-<26 base32 characters>``, the first
    128 bits of HMAC-SHA256(key, "<kind>:<canonical form>"). The same data gives the same
    pseudonym for as long as the key stays the same; without the key nobody can tell whose
    it is, or test a guess."""

    def __init__(self, key: str | bytes):
        if not key:
            raise ValueError("a Pseudonymizer needs a key")
        self._key = key.encode() if isinstance(key, str) else bytes(key)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"

    def pseudonym(self, kind: str, canonical: str) -> str:
        digest = hmac.new(self._key, f"{kind}:{canonical}".encode(), hashlib.sha256).digest()
        return (PSEUDONYM_PREFIX + kind + "-"
                + base64.b32encode(digest[:16]).decode().rstrip("=").lower())

    def replace(self, name: str, value: str, matches: list[PiiMatch]) -> str:
        """``value`` of field ``name`` with its personal data pseudonymised (module docstring:
        ids wholly, free text in place)."""
        if name not in TEXT_FIELDS:
            only = matches[0]
            if len(matches) == 1 and (only.start, only.end) == (0, len(value)):
                return self.pseudonym(only.kind, only.canonical)
            return self.pseudonym("id", value)
        out, at = [], 0
        for m in matches:
            out += [value[at:m.start], self.pseudonym(m.kind, m.canonical)]
            at = m.end
        return "".join(out) + value[at:]


@cache
def _string_fields(event_type: str, catalogue: Catalogue) -> tuple[tuple[str, bool], ...]:
    """(name, is a list) of the fields of ``event_type`` that hold text (not enums or UUIDs)."""
    out = []
    for f in catalogue.latest(event_type).definition["fields"]:
        t = f["type"]
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), None)
        if t == "string":
            out.append((f["name"], False))
        elif isinstance(t, dict) and t.get("type") == "array" and t.get("items") == "string":
            out.append((f["name"], True))
        elif isinstance(t, dict) and t.get("type") == "string" and "logicalType" not in t:
            out.append((f["name"], False))
    return tuple(out)


def screen_pii(record: dict[str, Any], event_type: str, catalogue: Catalogue | None = None,
               pseudonymize: Pseudonymizer | None = None) -> None:
    """Refuse (EventValidationError) or, with ``pseudonymize``, replace in ``record`` the
    personal data of its string fields. The error names the field, the kind and the position,
    and never quotes the data."""
    catalogue = catalogue or default_catalogue()
    if event_type not in catalogue.versions:
        return  # not an event of the contract: the schema check says so
    for name, is_list in _string_fields(event_type, catalogue):
        value = record.get(name)
        if not value:
            continue
        free_text = name in TEXT_FIELDS
        texts = value if is_list else (value,)
        changed = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not (
                    _PII_HINT.search(text) or (free_text and _NAME_HINT.search(text))):
                continue  # the cheap test: most values stop here
            matches = find_pii(text, free_text)
            if not matches:
                continue
            if pseudonymize is None:
                first = matches[0]
                where = (f"looks like {first.what}" if (first.start, first.end) == (0, len(text))
                         else f"contains what looks like {first.what} at position "
                              f"{first.start + 1}")
                raise EventValidationError(
                    f"{where} (personal data, which never enters the ledger in clear): publish a "
                    "pseudonymous value, or set CXLEDGER_PII_HMAC_KEY so that the producer "
                    "replaces it with a keyed hash", name, event_type, record.get("event_id"))
            changed[i] = pseudonymize.replace(name, text, matches)
            if free_text and len(changed[i]) > MAX_TEXT_CHARS:
                raise EventValidationError(
                    f"longer than {MAX_TEXT_CHARS} characters once its personal data is replaced "
                    "by pseudonyms: shorten it", name, event_type, record.get("event_id"))
        if changed != list(texts):
            record[name] = changed if is_list else changed[0]


def partition_key(record: dict[str, Any]) -> str:
    """What a ledger event is keyed by on Kafka: its customer, so that one customer's events
    stay in order on one partition; an operational event (no customer) by its hall, unit, agent
    or incident (``schemas.catalogue.OPERATIONAL_KEYS``), so that those stay in order too."""
    return record[key_field(record["event_type"])]


def ledger_refusal(record: dict[str, Any], key: bytes | None) -> str | None:
    """Why a decoded ledger record must not enter the ledger, or None.

    A record can reach the topic without the SDK (a raw producer): the consumers then apply the
    checks the SDK applies, and its message key must be its partition key, or that customer's
    events would not stay in order. The ledger sink dead-letters a refused record and the
    processors skip it, so what is folded is what is stored.
    """
    field = key_field(record.get("event_type"))
    expected = record.get(field)
    if not isinstance(expected, str):
        try:  # the record lacks its key field: validation names it
            normalize_event(dict(record))
        except EventValidationError as exc:
            return str(exc)
        return f"no {field}: a ledger event of this type is keyed by it"
    if key is None:
        return f"no message key: a ledger event is keyed by its {field} ({expected!r})"
    if key != expected.encode():
        return (f"message key {key[:80]!r} is not the event's {field} {expected!r}: "
                f"publish with the SDK or key by {field}")
    try:
        normalize_event(dict(record))
    except EventValidationError as exc:
        return str(exc)
    return None


# -- the fast path ------------------------------------------------------------------------------
# Nearly every event arrives already in its record form: ids that need no trimming, numbers as
# numbers, canonical UUIDs, no personal data. For each event type a function is generated
# (``fast_path_source`` shows it) that takes such an event field by field with a type test, a
# length or a range, and returns its record; anything else (a value to convert, an error to
# name, personal data to refuse or pseudonymise) makes it return None, and ``normalize_event``
# takes the general path, which gives the same record or names the field. Generated code
# because the general path's per-field calls and lookups were most of the producer's and the
# ledger sink's time; tests/unit/test_validation_fast_path.py checks that both paths agree.

#: A UUID in canonical form (lower-case hex digits and dashes): what validation lets through.
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Matches where any of the personal-data patterns matches (the exact test behind _PII_HINT).
_ANY_PII = re.compile("|".join(f"(?:{p.pattern})" for _, _, p in _PII_PATTERNS))


def _field_source(name: str, avro_type: Any, convert: Callable[[Any], Any], nullable: bool,
                  has_default: bool, default: Any, ns: dict[str, Any]) -> list[str]:
    """Lines of the fast path for one field (its ``_plan`` entry and Avro type): leave ``v``
    in record form in ``r[name]``, or return None. Names the lines use go into ``ns``."""
    if isinstance(avro_type, list):
        avro_type = next(t for t in avro_type if t != "null")
    logical = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
    kind = avro_type.get("type") if isinstance(avro_type, dict) else avro_type
    if name == "event_id":
        missing = "r['event_id'] = str(_uuid4())"
    elif nullable:
        missing = f"r[{name!r}] = None"
    elif has_default:
        ns[f"DEFAULT_{name}"] = default
        missing = f"r[{name!r}] = DEFAULT_{name}"
    else:
        missing = "return None"
    empty = "v is None" if name == "customer_id" else 'v is None or v == ""'
    lines = [f"v = get({name!r})", f"if {empty}:", f"    {missing}", "else:"]
    if logical == "uuid":
        test = "type(v) is not str or not _UUID_FORM(v)"
    elif logical is None and kind == "string" and name in TEXT_FIELDS:
        test = (f"type(v) is not str or len(v) > {MAX_TEXT_CHARS} or v.isspace() "
                "or _TEXT_FORBIDDEN(v) or _PII_HINT(v) and _ANY_PII(v) or _NAME_HINT(v)")
    elif logical is None and kind == "string":
        test = (f"type(v) is not str or not 0 < len(v) <= {string_limit(name)} "
                "or not v.isprintable() or v[0] == ' ' or v[-1] == ' ' "
                "or _PII_HINT(v) and _ANY_PII(v)")
    elif logical == "timestamp-millis":  # epoch milliseconds as they are, else parsed
        ns[f"CONVERT_{name}"] = parse_occurred_at
        lines += [f"    if type(v) is not int or not {EARLIEST_OCCURRED_AT_MS} <= v < "
                  f"{LATEST_PARSEABLE_MS}:", "        try:", f"            v = CONVERT_{name}(v)",
                  "        except ValueError:", "            return None"]
        test = None
    elif kind in ("int", "long"):
        test = "type(v) is not int"
    elif kind == "boolean":
        test = "type(v) is not bool"
    elif kind == "enum":
        ns[f"SYMBOLS_{name}"] = frozenset(s for s in avro_type["symbols"] if s != "unknown")
        test = f"type(v) is not str or v not in SYMBOLS_{name}"
    elif kind in ("double", "float"):
        lines += ["    if type(v) is int and -1e15 < v < 1e15:", "        v = float(v)"]
        test = "type(v) is not float or not -_INF < v < _INF"
    else:  # amounts, lists: the general converter, which is quick on record form
        ns[f"CONVERT_{name}"] = convert
        lines += ["    try:", f"        v = CONVERT_{name}(v)", "    except ValueError:",
                  "        return None"]
        test = None
        if kind == "array":
            test = "any(_PII_HINT(x) and _ANY_PII(x) for x in v)"
    if name in _RANGES:
        low, high = _RANGES[name]
        out_of_range = f"not {low!r} <= v <= {high!r}"
        test = f"{test} or {out_of_range}" if test else out_of_range
    if test:
        lines += [f"    if {test}:", "        return None"]
    lines.append(f"    r[{name!r}] = v")
    return lines


@cache
def _fast_path_parts(event_type: str, catalogue: Catalogue) -> tuple[str, dict[str, Any]]:
    plan = _plan(event_type, catalogue)
    ns: dict[str, Any] = {
        "NAMES": frozenset(p[0] for p in plan), "_uuid4": uuid.uuid4,
        "_UUID_FORM": CANONICAL_UUID.fullmatch, "_TEXT_FORBIDDEN": _TEXT_FORBIDDEN.search,
        "_PII_HINT": _PII_HINT.search, "_ANY_PII": _ANY_PII.search,
        "_NAME_HINT": _NAME_HINT.search, "_INF": math.inf, "_check_values": _check_values,
        "EventValidationError": EventValidationError, "EVENT_TYPE": event_type}
    body = ["if not event.keys() <= NAMES:", "    return None"]
    if event_type in OPERATIONAL_KEYS:
        body += ["if 'customer_id' in event:", "    return None"]
    body += ["get = event.get", "r = {}"]
    fields = {f["name"]: f["type"] for f in catalogue.latest(event_type).definition["fields"]}
    named = {t["name"]: t for t in fields.values() if isinstance(t, dict) and "name" in t}
    for name, convert, nullable, has_default, default in plan:
        avro_type = fields[name]
        avro_type = named.get(avro_type, avro_type) if isinstance(avro_type, str) else avro_type
        body += _field_source(name, avro_type, convert, nullable, has_default, default, ns)
    body += ["try:", "    _check_values(r, EVENT_TYPE, None, now_ms)",
             "except EventValidationError:", "    return None", "return r"]
    source = "def fast_path(event, now_ms):\n" + "".join(f"    {line}\n" for line in body)
    return source, ns


def fast_path_source(event_type: str, catalogue: Catalogue | None = None) -> str:
    """The generated fast path of ``event_type`` (for reading; see the section comment)."""
    return _fast_path_parts(event_type, catalogue or default_catalogue())[0]


@cache
def _fast_path(event_type: str, catalogue: Catalogue) -> Callable[[dict, int], dict | None]:
    source, ns = _fast_path_parts(event_type, catalogue)
    exec(compile(source, f"<fast path of {event_type}>", "exec"), ns)
    return ns["fast_path"]
