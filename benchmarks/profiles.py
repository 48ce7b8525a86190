"""Sampling profiles of the measured processes (``--profile DIR``), with py-spy.

py-spy attaches to a running process from outside (ptrace), samples the Python stack of the
thread holding the GIL (``--gil``, 100 Hz) and writes the samples as collapsed stacks when it
is stopped. So a profile is where the process's Python CPU goes (time in C with the GIL
released, e.g. librdkafka's flush or a chDB insert, is not in it), and samples per second
say how much of the wall time the process was busy in Python. Each profile is summarised into
the functions that take the most samples: inclusive ("cumulative": the function or anything it
calls) and exclusive ("self"), and the exclusive samples by package.

py-spy is not a dependency of the project: ``pip install py-spy`` into the environment to
profile. Attaching adds a little load on a 2-core machine, so a profiled run's figures are
marked as such in the document.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``start(name, pid)`` ... ``stop(name)`` -> the summary file."""

    def __init__(self, directory: Path, rate: int = 100, native: bool = False):
        self.directory = directory
        self.rate = rate
        self.native = native
        self.binary = py_spy()
        self.running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
        self.summaries: dict[str, str] = {}
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def available(self) -> bool:
        return self.binary is not None

    def start(self, name: str, pid: int) -> None:
        if not self.binary:
            return
        raw = self.directory / f"{name}.collapsed.txt"
        argv = [self.binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--gil",
                "--format", "raw", "--output", str(raw)]
        if self.native:
            argv.append("--native")
        log = open(self.directory / f"{name}.py-spy.log", "wb")
        self.running[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL), raw, time.monotonic())
        log.close()

    def stop(self, name: str) -> str | None:
        entry = self.running.pop(name, None)
        if entry is None:
            return None
        proc, raw, started = entry
        seconds = time.monotonic() - started
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not raw.exists():
            return None
        summary = self.directory / f"{name}.top.txt"
        summary.write_text(summarise(raw, title=name, seconds=seconds, rate=self.rate),
                           encoding="utf-8")
        self.summaries[name] = str(summary)
        return str(summary)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def _frame(text: str) -> str:
    """py-spy's "function (package/module.py:line)" without the line."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})" if path else name


def _package(text: str) -> str:
    """The top-level package or module of a frame (py-spy names files from their package
    root: "faust/streams.py", "asyncio/events.py", "selectors.py")."""
    path = text.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    if path.startswith("<frozen"):
        return "python (frozen)"
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def summarise(raw: Path, title: str = "", top: int = 40, seconds: float | None = None,
              rate: int = 100) -> str:
    """Top functions by inclusive and by exclusive samples, and exclusive samples by package,
    from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw_frames = [f for f in stack.split(";")
                      if f and not f.startswith(("process ", "thread "))]
        if not raw_frames:
            continue
        frames = [_frame(f) for f in raw_frames]
        total += n
        for f in set(frames):
            inclusive[f] += n
        exclusive[frames[-1]] += n
        packages[_package(raw_frames[-1])] += n
    busy = (f"; the GIL was held {total / (seconds * rate):.0%} of the {seconds:.1f} s "
            f"sampled" if seconds else "")
    lines = [f"# {title}: {total} samples at {rate} Hz (py-spy --gil: the thread holding the "
             f"GIL){busy}", "",
             "## self (exclusive) share by package", ""]
    lines += [f"{100 * n / max(total, 1):6.1f}%  {p}" for p, n in packages.most_common(25)]
    lines += ["", f"## top {top} by cumulative (inclusive) share", ""]
    lines += [f"{100 * n / max(total, 1):6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", f"## top {top} by self (exclusive) share", ""]
    lines += [f"{100 * n / max(total, 1):6.1f}%  {f}" for f, n in exclusive.most_common(top)]
    return "\n".join(lines) + "\n"
