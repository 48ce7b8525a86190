"""Driving `cxledger up` and the other commands as a user would, for the tests that need a
whole stack: processes in process groups of their own, the stack record, the commands run in
the stack's directory."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxledger.localstack import free_port  # noqa: F401  (the stack tests import it from here)

READY = 240  # seconds for a stack to come up on a loaded 2-core machine


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240,
        input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxledger.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of children included)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def read_record(store: Path) -> dict | None:
    try:
        return json.loads((store / "stack.json").read_text())
    except (OSError, ValueError):
        return None


class Up:
    """A foreground ``cxledger up`` in its own process group, as a terminal would run it."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str):
        self.cwd = cwd
        self.store = cwd / ".cxledger" / "store"
        self.out = open(cwd / f"up-{time.monotonic_ns()}.out", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "cxledger.cli", "up", *args],
                                     cwd=cwd, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text()

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"cxledger up exited with {self.proc.returncode}:\n{self.output()}")
            record = read_record(self.store)
            if record and record["pid"] == self.proc.pid and record["state"] == "ready":
                return record
            time.sleep(0.3)
        pytest.fail(f"cxledger up not ready in {READY}s:\n{self.output()}")

    def interrupt(self) -> float:
        """Ctrl-C at the terminal: SIGINT to the process group; returns seconds to exit."""
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=90)
        seconds = time.monotonic() - started
        assert code == 0, self.output()
        return seconds

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> "Up":
        return self

    def __exit__(self, *exc) -> None:
        """Nothing outlives the test: a stack still running at the end is killed."""
        if self.proc.poll() is None:
            self.kill()


def csv_rows(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout.splitlines()[1:]


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


DERIVED = ["satisfaction_scores", "satisfaction_window_partials", "complaint_sla_breaches",
           "complaint_state", "churn_risk_changes", "tier_proposals", "tier_changes"]


def final_rows(cwd: Path, env: dict, store: Path, tables=tuple(DERIVED)) -> dict[str, list[str]]:
    """Each table's rows (read FINAL), every row as one CSV line, sorted: one ``cxledger
    sql`` for all the tables (each run starts Python and the engine, about a second)."""
    union = " UNION ALL ".join(f"SELECT '{t}' AS t, formatRow('CSV', *) AS r FROM {t} FINAL"
                               for t in tables)
    result = cli("sql", "--store", str(store), "--format", "csv",
                 f"SELECT t, r FROM ({union}) ORDER BY t, r", cwd=cwd, env=env)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    rows: dict[str, list[str]] = {t: [] for t in tables}
    for table, row in list(csv.reader(io.StringIO(result.stdout)))[1:]:
        rows[table].append(row)
    return rows
