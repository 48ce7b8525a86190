"""The local stack leaves nothing behind: Ctrl-C or a killed demo stops broker and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack_driver import descendants, wait_gone

pytestmark = pytest.mark.integration


def _as_from_a_terminal() -> None:
    """SIGINT as a terminal leaves it. A shell starts a background job with SIGINT ignored, and
    that is inherited: a test suite run as one would start the demo deaf to Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_demo(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    demo = subprocess.Popen([sys.executable, "-m", "cxledger.cli", "demo", "--events", "400000",
                             "--store", str(tmp_path / "store")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 60
    kids: list[int] = []
    while len(kids) < 2 and time.monotonic() < deadline:  # the broker and a worker
        time.sleep(0.5)
        kids = descendants(demo.pid)
    assert len(kids) >= 2, "the demo should have started a broker and a worker"
    time.sleep(2)
    return demo, kids


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
