"""Reading and parsing a publish request's body, within limits.

The body is read chunk by chunk and never past ``limit + 1`` bytes, so an oversized (or
endless, chunked) body costs at most the limit in memory before the 413. Three forms:
one JSON event, a JSON array of events, or NDJSON (one event per line, blank lines skipped).
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines")
JSON_TYPES = ("application/json", "text/json")


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"the body is over {limit} bytes; split the batch into smaller requests")


class MalformedBody(ValueError):
    """A body that is not the JSON or NDJSON it claims to be; the message says where."""


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` ('' when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_ndjson(content_type: str | None) -> bool:
    return media_type(content_type) in NDJSON_TYPES


def is_json(content_type: str | None) -> bool:
    """JSON, ``application/<something>+json``, or no content type at all (curl -d sends
    form-encoded by default, which is refused: say what it is)."""
    kind = media_type(content_type)
    return kind in ("", *JSON_TYPES) or (kind.startswith("application/") and kind.endswith("+json"))


async def read_limited(chunks: AsyncIterator[bytes], limit: int,
                       declared_length: str | None = None) -> bytes:
    """The whole body from ``chunks``; BodyTooLarge as soon as it passes ``limit`` bytes (or
    when Content-Length already says it will)."""
    if declared_length and declared_length.strip().isdigit() and int(declared_length) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def parse_events(body: bytes, ndjson: bool) -> list[Any]:
    """The events of a body: a list (one element per event, whatever its JSON type, so that
    validation can say what is wrong with each); MalformedBody when it does not parse."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"the body is not UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    if ndjson:
        events = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                events.append(_loads(line, f"line {number}: "))
        return events
    parsed = _loads(text, "")
    return parsed if isinstance(parsed, list) else [parsed]


def _no_constants(name: str) -> Any:
    raise MalformedBody(f"{name} is not JSON; send a number or null")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants)
    except MalformedBody as exc:
        raise MalformedBody(f"{where}{exc}") from None
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"{where}not valid JSON: {exc.msg} (line {exc.lineno}, column "
                            f"{exc.colno})") from None
    except RecursionError:
        raise MalformedBody(f"{where}JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise MalformedBody(f"{where}not usable JSON: {exc}") from None
