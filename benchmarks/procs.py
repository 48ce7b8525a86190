"""Processes and consumer groups as the benchmark watches them: peak memory, group state,
committed offsets, children started and always stopped."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    pass


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set of a live process (VmHWM), in MB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def self_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def command_of(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                .decode(errors="replace").strip())
    except OSError:
        return "?"


def child_env() -> dict[str, str]:
    """The environment for children that import ``benchmarks``: the checkout on the path,
    and none of the user's CXLEDGER_* settings (the benchmark brings its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(argv: list[str], log: Path, *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child that dies with this process (the kernel's parent-death signal)."""
    from cxledger.localstack import die_with_parent

    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd or log.parent,
                                env=env or child_env(), preexec_fn=die_with_parent)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(proc: subprocess.Popen, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal, wait up to ``timeout``, then kill; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Groups:
    """Consumer-group state and committed offsets through the admin API (no group joins)."""

    def __init__(self, bootstrap: str):
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})

    def stable(self, group: str) -> bool:
        try:
            described = self.admin.describe_consumer_groups([group])[group].result(timeout=5)
        except Exception:  # not there until the first member joins
            return False
        return described.state == ConsumerGroupState.STABLE

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                        for p in partitions])]
        try:
            result = self.admin.list_consumer_group_offsets(request)[group].result(timeout=5)
        except Exception:
            return {}
        return {tp.partition: max(tp.offset, 0) for tp in result.topic_partitions}

    def wait_stable(self, group: str, timeout: float, alive: Callable[[], None]) -> float:
        """Block until ``group`` is STABLE; returns the monotonic time it was seen so."""
        deadline = time.monotonic() + timeout
        while True:
            alive()
            if self.stable(group):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(f"consumer group {group} not stable within {timeout:.0f}s")
            time.sleep(0.1)

    def wait_committed(self, group: str, topic: str, targets: dict[int, int], timeout: float,
                       alive: Callable[[], None], progress=None,
                       interval: float = 0.2) -> float:
        """Block until ``group`` committed ``targets`` (partition -> next offset) on ``topic``;
        returns the monotonic time of the first poll that saw it (within ``interval``)."""
        total = sum(targets.values())
        deadline = time.monotonic() + timeout
        while True:
            alive()
            committed = self.committed(group, topic, targets)
            done = sum(min(committed.get(p, 0), end) for p, end in targets.items())
            if progress is not None:
                progress(done, total)
            if done >= total:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(f"{group}: committed {done:,} of {total:,} within "
                                 f"{timeout:.0f}s")
            time.sleep(interval)

    def close(self) -> None:
        self.admin = None


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds of this process and everything it started: itself, the children it has
    waited for (with theirs), and every live descendant (with the children they waited for)."""
    root = root or os.getpid()
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        # utime stime cutime cstime: fields 14-17 of stat, 11-14 after the command
        times[pid] = sum(int(x) for x in fields[11:15]) / _TICK
    for pid in times:
        p = parent.get(pid)
        while p and p != root:
            p = parent.get(p)
        if p == root and pid != root:
            total += times[pid]
    return total


class Load:
    """How busy the machine was during a phase, and how much of that was someone else."""

    def __init__(self):
        self.cores = len(os.sched_getaffinity(0))
        self.started = time.monotonic()
        self.busy = machine_busy_s()
        self.mine = tree_cpu_s()

    def done(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-6)
        busy = machine_busy_s() - self.busy
        mine = tree_cpu_s() - self.mine
        capacity = self.cores * wall
        return {"bench_cpu_share": round(min(1.0, mine / capacity), 2),
                "others_cpu_share": round(max(0.0, min(1.0, (busy - mine) / capacity)), 2),
                "load_1m": round(os.getloadavg()[0], 2)}
