"""Load: a steady rate through a real `cxledger up` for a while, sampling the memory of every
process; afterwards the lag must return to zero and the counts must match.

``run_soak`` starts the stack, publishes with ``cxledger simulate --rate R --duration S`` (a
process of its own, as a channel would be), samples every process of the stack every few seconds
(RSS from /proc), and once the traffic stops waits until every consumer group has caught up.
The figures it returns are what the README's bound is checked against.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from cxledger.pipeline import is_worker_command
from tests.reliability.chaos import cmdline
from tests.stack_driver import Up, clean_env, cli, csv_rows, descendants, free_port


def role(pid: int, up_pid: int) -> str:
    line = cmdline(pid)
    if pid == up_pid:
        return "up (sinks, query endpoint)"
    if "tansu" in line:
        return "broker"
    if is_worker_command(line):
        return "worker"
    if " gateway " in line or line.rstrip().endswith("gateway") or "--port" in line:
        return "gateway"
    return line[:40]


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


class Sampler(threading.Thread):
    def __init__(self, up_pid: int, every: float = 5.0):
        super().__init__(daemon=True)
        self.up_pid = up_pid
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            by_role: dict[str, float] = {}
            for pid in [self.up_pid, *descendants(self.up_pid)]:
                name = role(pid, self.up_pid)
                by_role[name] = max(by_role.get(name, 0.0), rss_mb(pid))
            self.samples.append((round(time.monotonic() - started, 1), by_role))
            self.stop.wait(self.every)


def caught_up(store: Path, timeout: float) -> float:
    """Seconds until every consumer group's lag has read zero three samples running."""
    from cxledger.stack import read_status

    started, zeros, last = time.monotonic(), 0, None
    while time.monotonic() - started < timeout:
        status = read_status(store) or {}
        if status.get("at") != last and status.get("lag"):
            last = status["at"]
            zeros = zeros + 1 if not any(status["lag"].values()) else 0
            if zeros >= 3:
                return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    raise AssertionError(f"lag did not return to zero within {timeout:.0f}s: {status}")


# The memory bound the README states: every process of the stack but the broker (whose
# topics live in its memory on the single-machine stack, so it holds what was published)
# stays below this RSS through the soak and its catch-up.
RSS_BOUND_MB = 1024
UNBOUNDED = ("broker",)


def within_bound(peak_rss_mb: dict[str, float]) -> bool:
    return all(mb < RSS_BOUND_MB for name, mb in peak_rss_mb.items() if name not in UNBOUNDED)


def run_soak(work: Path, rate: float, seconds: float, *, workers: int = 1) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = clean_env(CXLEDGER_QUERY_PORT=str(free_port()), CXLEDGER_GATEWAY_PORT=str(free_port()))
    with Up(work, env, "--workers", str(workers)) as up:
        up.wait_ready()
        sampler = Sampler(up.proc.pid, every=max(1.0, min(5.0, seconds / 60)))
        sampler.start()
        started = time.monotonic()
        published = cli("simulate", "--rate", str(rate), "--duration", str(seconds), "--seed",
                        "5", cwd=work, env=env, timeout=seconds * 4 + 300)
        assert published.returncode == 0, published.stderr[-2000:]
        soak_s = round(time.monotonic() - started, 1)
        sent = int(re.search(r"(\d+) events published", published.stdout).group(1))
        lag_zero_after_s = caught_up(up.store, timeout=max(300.0, seconds * 2))
        sampler.stop.set()
        sampler.join()
        written = int(csv_rows(cli("sql", "SELECT count() FROM ledger", "--format", "csv",
                                   cwd=work, env=env))[0])
        up.interrupt()
    return {"rate": rate, "seconds": seconds, "soak_s": soak_s, "sent": sent,
            "written": written, "lag_zero_after_s": lag_zero_after_s,
            "peak_rss_mb": peak(sampler.samples), "rss_growth": growth(sampler.samples),
            "rss_bound_mb": RSS_BOUND_MB,
            "within_bound": within_bound(peak(sampler.samples)),
            "samples": len(sampler.samples)}


def peak(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, by_role in samples:
        for name, mb in by_role.items():
            out[name] = round(max(out.get(name, 0.0), mb), 1)
    return out


def growth(samples: list[tuple[float, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per process: RSS at the end of the first third of the run, and at the end."""
    if len(samples) < 3:
        return {}
    early = samples[len(samples) // 3][1]
    late = samples[-1][1]
    return {name: {"after_first_third_mb": round(early.get(name, 0.0), 1),
                   "at_end_mb": round(mb, 1)} for name, mb in late.items()}
