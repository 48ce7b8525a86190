"""File ingest: JSON Lines (one event per line) and CSV (one event type per file).

Every line is read, decoded and validated on its own. Valid lines are published; each invalid
one is reported as ``FILE:LINE: reason`` on the terminal and in a rejects file, and nothing
already accepted is lost. The caller exits non-zero when anything was rejected.

What a line can get wrong, and what happens (every case is in ``tests/data/hostile/``):

- bytes that are not UTF-8: ``FILE:LINE: not valid UTF-8 (byte 0xff at column 12)``; the other
  lines go on. A byte-order mark at the start of the file (Excel writes one) is skipped.
- a line longer than ``MAX_LINE_BYTES``: rejected unread (an event of the contract is a few
  kilobytes at most; see the text limits in ``schemas.validation``).
- JSON Lines: malformed JSON, a value that is not an object, a key given twice, nesting too deep.
- CSV: a row with more or fewer values than the header has columns (an unclosed quote shows
  as a row spanning several lines), a header naming a column twice; an unknown column is
  rejected by validation, naming it, on every row.

CSV cells are text; validation converts them to the field's type (numbers, booleans). A list
field (``cities`` of the incident events) is written as its items separated by ``;``
(``beijing;shanghai``) or as a JSON array (``["beijing","shanghai"]``); an empty cell is no value.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from tqdm import tqdm

from producers.sdk import LedgerProducer
from schemas.validation import MAX_QUOTED_CHARS, EventValidationError

MAX_LINE_BYTES = 8 * 1024 * 1024  # a line beyond this is rejected without being parsed
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_READ_CHUNK = 1024 * 1024

# csv's own limit on one field (128 KiB) would raise mid-file; the line limit bounds it instead.
csv.field_size_limit(MAX_LINE_BYTES)

# (line number, event in JSON form | None, why the line is rejected | None)
Line = tuple[int, "dict[str, Any] | None", "str | None"]


class IngestError(ValueError):
    pass


@dataclass
class Rejected:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class IngestSummary:
    path: Path
    published: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    rejects_file: Path | None = None
    published_ids: list[str] = field(default_factory=list)


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise IngestError(f"{path}: unknown file type {suffix!r}; use .jsonl (JSON Lines) or .csv")


def _csv_event_type(path: Path) -> str | None:
    """``contact.completed.csv`` -> ``contact.completed``."""
    stem = path.name[: -len(".csv")]
    return stem if "." in stem else None


# -- lines: bytes -> text, one line at a time ----------------------------------------------------

def _raw_lines(fh: BinaryIO, progress: tqdm | None) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, too long) for each line; an over-long line is skipped to its end
    and returned as its first MAX_LINE_BYTES bytes."""
    number = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        too_long = len(raw) > MAX_LINE_BYTES
        if progress is not None:
            progress.update(len(raw))
        while too_long and not raw.endswith(b"\n"):
            rest = fh.readline(_READ_CHUNK)
            if not rest:
                break
            if progress is not None:
                progress.update(len(rest))
            raw = raw[:MAX_LINE_BYTES] + rest[-1:]
        if number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        yield number, raw, too_long


def not_utf8(raw: bytes, exc: UnicodeDecodeError, number: int) -> str:
    """``not valid UTF-8 (byte 0xff at column 12)``: the column counts characters, as editors do."""
    column = len(raw[:exc.start].decode("utf-8")) + 1
    hint = ("the file looks UTF-16: save it as UTF-8" if number == 1
            and raw.startswith(_UTF16_BOMS) else "save the file as UTF-8")
    return f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}): {hint}"


def _too_long() -> str:
    return (f"line longer than {MAX_LINE_BYTES:,} bytes, not read; an event is a few "
            "kilobytes at most")


def _decoded(raw: bytes, number: int, too_long: bool) -> tuple[str | None, str | None]:
    """(text, None) or (None, why the line is rejected)."""
    if too_long:
        return None, _too_long()
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, not_utf8(raw, exc, number)


def _quoted(name: str) -> str:
    return repr(name) if len(name) <= MAX_QUOTED_CHARS else f"{name[:MAX_QUOTED_CHARS]!r}..."


# -- JSON Lines ---------------------------------------------------------------------------------

def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {_quoted(key)} appears twice in the object; which one is "
                             "meant?")
        obj[key] = value
    return obj


def parse_json_line(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(event, None) or (None, why the line is rejected)."""
    try:
        event = json.loads(text, object_pairs_hook=_object_without_repeated_keys)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:  # a repeated key
        return None, str(exc)
    except RecursionError:
        return None, "not valid JSON here: nested too deeply"
    if not isinstance(event, dict):
        return None, "a line must hold one JSON object"
    return event, None


def _jsonl_events(fh: BinaryIO, progress: tqdm | None) -> Iterator[Line]:
    for number, raw, too_long in _raw_lines(fh, progress):
        if not too_long and not raw.strip():
            continue
        text, error = _decoded(raw, number, too_long)
        if error is None:
            event, error = parse_json_line(text)
            yield number, event, error
        else:
            yield number, None, error


# -- CSV ----------------------------------------------------------------------------------------

class _CsvLines:
    """Text lines for ``csv.reader``, one per line of the file, so that the reader's
    ``line_num`` stays the file's line number. A line that cannot be read is passed on as an
    empty line and remembered in ``bad``; the row holding it is rejected."""

    def __init__(self, fh: BinaryIO, progress: tqdm | None):
        self._lines = _raw_lines(fh, progress)
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        for number, raw, too_long in self._lines:
            text, error = _decoded(raw, number, too_long)
            if error is not None:
                self.bad[number] = error
                text = "\n"
            yield text


def _header_problem(header: list[str]) -> str | None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            return (f"the header (line 1) names column {_quoted(name)} twice; which one is "
                    "meant?")
        seen.add(name)
    return None


def _width_problem(row: list[str], header: list[str], first: int, last: int) -> str | None:
    if len(row) == len(header):
        return None
    more = len(row) > len(header)
    problem = (f"{abs(len(row) - len(header))} {'more' if more else 'fewer'} values than "
               f"header columns ({len(row)} values, {len(header)} columns)")
    if last > first:
        problem += f"; the row runs from line {first} to line {last}: a quote left open?"
    return problem


def _csv_events(path: Path, fh: BinaryIO, fixed_type: str | None,
                progress: tqdm | None) -> Iterator[Line]:
    lines = _CsvLines(fh, progress)
    reader = csv.reader(lines)
    header: list[str] | None = None
    header_problem = None
    last = 0  # the line the previous row ended on
    while True:
        try:
            row, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as exc:
            row, error = [], f"not valid CSV: {exc}"
        first, last = last + 1, reader.line_num
        unreadable = [(n, lines.bad.pop(n)) for n in sorted(lines.bad) if n <= last]
        error = unreadable[0][1] if unreadable else error
        at = unreadable[0][0] if unreadable else first
        if header is None:
            if error:
                raise IngestError(f"{path}:{at}: the header cannot be read: {error}")
            if row:
                header, header_problem = row, _header_problem(row)
                _check_event_type_column(path, header, fixed_type)
            continue
        if error:
            yield at, None, error
        elif row:  # (an empty row is a blank line)
            problem = header_problem or _width_problem(row, header, first, last)
            yield first, None if problem else _csv_event(header, row, fixed_type), problem


def _check_event_type_column(path: Path, header: list[str], fixed_type: str | None) -> None:
    if "event_type" not in header and not fixed_type:
        raise IngestError(f"{path}:1: the CSV has no event_type column; name the file "
                          "<event_type>.csv (e.g. contact.completed.csv) or pass --event-type")


def _csv_event(header: list[str], row: list[str], fixed_type: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {k: (v if v != "" else None) for k, v in zip(header, row)}
    if fixed_type and not event.get("event_type"):
        event["event_type"] = fixed_type
    for name in _list_fields(event.get("event_type")):
        if isinstance(event.get(name), str):
            event[name] = _csv_list(event[name])
    return event


def _list_fields(event_type: Any) -> tuple[str, ...]:
    """The list-valued fields of an event type (none for an unknown type: validation says)."""
    from schemas.catalogue import default_catalogue

    catalogue = default_catalogue()
    if not isinstance(event_type, str) or event_type not in catalogue.versions:
        return ()
    return tuple(f["name"] for f in catalogue.latest(event_type).definition["fields"]
                 if isinstance(f["type"], dict) and f["type"].get("type") == "array")


def _csv_list(cell: str) -> Any:
    """``a;b`` or a JSON array -> a list; anything else is left for validation to refuse."""
    text = cell.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return cell
        return value
    return [item.strip() for item in text.split(";")]


def read_events(path: Path, event_type: str | None = None,
                progress: tqdm | None = None) -> Iterator[Line]:
    """Yield (line number, event in JSON form | None, why rejected | None) for each data line
    (for a CSV row spanning several lines, the line it starts on)."""
    fmt = file_format(path)
    with path.open("rb") as fh:
        if fmt == "jsonl":
            yield from _jsonl_events(fh, progress)
        else:
            yield from _csv_events(path, fh, event_type or _csv_event_type(path), progress)


def publish_file(path: str | Path, producer: LedgerProducer, *, rejects_path: Path | None = None,
                 event_type: str | None = None, show_progress: bool = True,
                 on_reject=None) -> IngestSummary:
    """Publish every valid line of ``path``; report and keep the rejected ones."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    summary = IngestSummary(path)
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
               disable=not show_progress, leave=False)
    try:
        for number, event, error in read_events(path, event_type, progress=bar):
            if error is None:
                try:
                    summary.published_ids.append(producer.publish(event,
                                                                  source=f"{path}:{number}"))
                    summary.published += 1
                    continue
                except EventValidationError as exc:
                    error = exc.describe()
            rejected = Rejected(path, number, error)
            summary.rejected.append(rejected)
            if on_reject:
                on_reject(rejected)
        producer.flush()
    finally:
        bar.close()
    if summary.rejected:
        summary.rejects_file = rejects_path or path.with_name(path.name + ".rejects")
        summary.rejects_file.write_text("".join(f"{r}\n" for r in summary.rejected),
                                        encoding="utf-8")
    return summary
