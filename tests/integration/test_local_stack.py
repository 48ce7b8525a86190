"""The local stack leaves nothing behind: Ctrl-C or a killed demo stops broker and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_demo(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    demo = subprocess.Popen([sys.executable, "-m", "cxledger.cli", "demo", "--events", "400000",
                             "--store", str(tmp_path / "store")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    kids: list[int] = []
    while len(kids) < 2 and time.monotonic() < deadline:  # the broker and a worker
        time.sleep(0.5)
        kids = children(demo.pid)
    assert len(kids) >= 2, "the demo should have started a broker and a worker"
    time.sleep(2)
    return demo, kids


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_an_interrupted_demo_leaves_no_process_behind(tmp_path, how):
    demo, kids = start_demo(tmp_path)
    if how == "ctrl-c":
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) != 0
    else:
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(timeout=10)
    assert wait_gone(kids) == []
