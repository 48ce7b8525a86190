"""What the reliability tests found, for `make reliability`'s summary.

A test calls ``record("hostile", cases=91, sent=...)``; when ``CXLEDGER_RELIABILITY_REPORT``
names a file (the runner sets it), a JSON line is appended to it; otherwise nothing happens.
"""

from __future__ import annotations

import json
import os
from typing import Any

REPORT_ENV = "CXLEDGER_RELIABILITY_REPORT"


def record(section: str, **values: Any) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"section": section, **values}) + "\n")


def read(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        return []
