"""File ingest: JSON Lines (one event per line) and CSV (one event type per file).

Every line is validated on its own. Valid lines are published; each invalid one is reported as
``FILE:LINE: reason`` on the terminal and in a rejects file, and nothing already accepted is
lost. The caller exits non-zero when anything was rejected.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from producers.sdk import LedgerProducer
from schemas.validation import EventValidationError


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


def read_events(path: Path, event_type: str | None = None,
                progress: tqdm | None = None) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line number, event in JSON form | None, parse error | None) for each data line."""
    fmt = file_format(path)
    with path.open("r", encoding="utf-8", newline="" if fmt == "csv" else None) as fh:
        if fmt == "jsonl":
            for number, line in enumerate(fh, start=1):
                if progress is not None:
                    progress.update(len(line.encode("utf-8")))
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
                    continue
                if not isinstance(event, dict):
                    yield number, None, "a line must hold one JSON object"
                    continue
                yield number, event, None
        else:
            reader = csv.DictReader(fh)
            fixed_type = event_type or _csv_event_type(path)
            if reader.fieldnames is None:
                return
            if "event_type" not in reader.fieldnames and not fixed_type:
                raise IngestError(f"{path}:1: the CSV has no event_type column; name the file "
                                  "<event_type>.csv (e.g. contact.completed.csv) or pass "
                                  "--event-type")
            for row in reader:
                number = reader.line_num
                if progress is not None:
                    progress.update(sum(len(v or "") + 1 for v in row.values()) + 1)
                if None in row:
                    yield number, None, f"{len(row[None])} more values than header columns"
                    continue
                event = {k: (v if v != "" else None) for k, v in row.items()}
                if fixed_type and not event.get("event_type"):
                    event["event_type"] = fixed_type
                yield number, event, None


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
                    summary.published_ids.append(producer.publish(event))
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
