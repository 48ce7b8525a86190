"""Crash anywhere, lose nothing, double nothing: SIGKILL at seeded random moments while
traffic flows.

``run_chaos`` drives a real ``cxledger up --workers 2`` the way an operator's worst day would:
a publisher (the SDK, attached to the stack, retrying a chunk that was not acknowledged with the
same event ids) sends a simulated ledger while processor workers are killed (``up`` starts them
again), one of them during the rebalance that the restart of another causes, and the whole
stack is killed (kill -9 of its process group, sinks included) and started again. At the end the
stack is stopped cleanly and compared with a clean ``demo --input`` of the same events:
every published event is in ``ledger`` exactly once, ``ledger_events`` holds no physical
duplicate, and every derived table equals the clean run's row for row.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException

from cxledger.pipeline import is_worker_command
from tests.stack_driver import (DERIVED, Up, clean_env, cli, csv_rows, descendants, final_rows,
                                free_port, wait_gone, write_jsonl)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(up_pid: int) -> list[int]:
    return sorted(p for p in descendants(up_pid) if is_worker_command(cmdline(p)))


@dataclass(eq=False)
class Publisher(threading.Thread):
    """Publishes ``events`` in chunks through the SDK attached to the stack on ``store``; a
    chunk that is not acknowledged is sent again (same ids) once a stack runs again."""
    store: Path
    events: list[dict]
    chunk: int = 250
    pause: float = 0.5
    acknowledged: int = 0
    retries: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        try:
            for start in range(0, len(self.events), self.chunk):
                self._publish(self.events[start:start + self.chunk])
                time.sleep(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.done.set()

    def _publish(self, chunk: list[dict]) -> None:
        from cxledger.config import load_settings
        from cxledger.stack import attach, find_stack
        from producers.sdk import DeliveryError, LedgerProducer

        while True:
            record = find_stack(self.store)
            if record is None or record.state != "ready":
                time.sleep(0.5)
                continue
            settings = attach(load_settings(environ={}).with_(store=self.store), record)
            producer = LedgerProducer(settings, producer_conf={"message.timeout.ms": 10_000})
            try:
                for event in chunk:
                    producer.publish(event)
                producer.close()
                self.acknowledged += len(chunk)
                return
            except (DeliveryError, KafkaException, RuntimeError):
                self.retries += 1
                time.sleep(1.0)


KILLS_PER_SLOT_MINUTE = 3


class KillBudget:
    """SIGKILLs of workers, at most KILLS_PER_SLOT_MINUTE per worker slot in any 60 s. A slot
    is a worker's command line, which ``up`` reuses when it starts the worker again."""

    def __init__(self) -> None:
        self.kills: dict[str, list[float]] = {}

    def _recent(self, pid: int) -> list[float]:
        now = time.monotonic()
        times = [t for t in self.kills.get(cmdline(pid), []) if now - t < 60]
        self.kills[cmdline(pid)] = times
        return times

    def wait_for(self, pids: list[int], needed: int, timeout: float = 90) -> list[int]:
        """Wait until ``needed`` of ``pids`` may be killed now; returns those that may."""
        deadline = time.monotonic() + timeout
        while True:
            allowed = [p for p in pids if len(self._recent(p)) < KILLS_PER_SLOT_MINUTE]
            if len(allowed) >= needed:
                return allowed
            assert time.monotonic() < deadline, "no worker could be killed within budget"
            time.sleep(0.5)

    def kill(self, pid: int) -> None:
        slot = cmdline(pid)
        os.kill(pid, signal.SIGKILL)
        self.kills.setdefault(slot, []).append(time.monotonic())


def plan_kills(rng: random.Random, kills: int) -> list[str]:
    """At least one of each kind; a rebalance kill counts as two kills."""
    plan = ["worker", "rebalance", "stack"]
    while sum(2 if k == "rebalance" else 1 for k in plan) < kills:
        plan.append(rng.choice(["worker", "worker", "stack", "rebalance"]))
    rng.shuffle(plan)
    return plan


def run_chaos(work: Path, events: list[dict], *, seed: int, kills: int = 5,
              workers: int = 2) -> dict:
    rng = random.Random(seed)
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    env = clean_env(CXLEDGER_QUERY_PORT=str(free_port()), CXLEDGER_GATEWAY_PORT=str(free_port()))
    whole = write_jsonl(work / "whole.jsonl", events)
    reference = work / "reference" / "store"
    demo = cli("demo", "--input", str(whole), "--store", str(reference), cwd=work, env=env,
               timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]

    service = work / "service"
    service.mkdir()
    up = Up(service, env, "--workers", str(workers))
    try:
        up.wait_ready()
        plan = plan_kills(rng, kills)
        # ``up`` gives up on a worker restarted 5 times within a minute (a crash loop), so no
        # worker slot is killed more than KILLS_PER_SLOT_MINUTE times a minute: many kills
        # take longer, and the traffic is paced to outlast them.
        per_kill = 3.5 if kills <= KILLS_PER_SLOT_MINUTE * workers else 62 / (
            KILLS_PER_SLOT_MINUTE * workers) + 1
        pause = max(0.2, per_kill * len(plan) / max(1, len(events) / 250))
        budget = KillBudget()
        publisher = Publisher(up.store, events, pause=pause)
        publisher.start()
        done: list[dict] = []
        for kind in plan:
            time.sleep(rng.uniform(1.0, 4.0))
            at = round(time.monotonic() - started, 1)
            if kind == "stack":
                children = descendants(up.proc.pid)
                up.kill()
                assert wait_gone(children, timeout=20) == [], "kill -9 of the stack left processes"
                up = Up(service, env, "--workers", str(workers))
                up.wait_ready()
                done.append({"at_s": at, "what": "stack (sinks, broker, workers, gateway)"})
                continue
            pids = _wait_for_workers(up.proc.pid, workers)
            victim = rng.choice(budget.wait_for(pids, 2 if kind == "rebalance" else 1))
            budget.kill(victim)
            done.append({"at_s": at, "what": "worker"})
            if kind == "rebalance":  # the other worker, while the group takes the restarted one in
                _wait_for_workers(up.proc.pid, workers, without=victim)
                survivor = next(p for p in pids if p != victim)
                budget.kill(survivor)
                done.append({"at_s": round(time.monotonic() - started, 1),
                             "what": "worker during a rebalance"})
        publisher.done.wait(timeout=900)
        assert publisher.error is None, publisher.error
        caught_up = wait_until_replay_equals_live(service, env)
        up.interrupt()  # a clean stop
    finally:
        up.__exit__(None, None, None)  # whichever stack runs at the end: never left behind
    store = up.store
    query = "SELECT toString(event_id) FROM ledger"
    ids = [r.strip('"') for r in csv_rows(cli("sql", "--store", str(store), "--format", "csv",
                                              query, cwd=work, env=env))]
    physical = int(csv_rows(cli("sql", "--store", str(store), "--format", "csv",
                                "SELECT count() FROM ledger_events", cwd=work, env=env))[0])
    sent = {e["event_id"] for e in events}
    got, expected = final_rows(work, env, store), final_rows(work, env, reference)
    tables = {t: got[t] == expected[t] for t in DERIVED}
    return {
        "kills": len(done), "kill_log": done, "sent": len(sent), "written": len(set(ids)),
        "missing": len(sent - set(ids)), "duplicates": len(ids) - len(set(ids)),
        "physical_duplicates": physical - len(set(ids)), "publisher_retries": publisher.retries,
        "derived_equal": tables, "caught_up_s": caught_up,
        "seconds": round(time.monotonic() - started, 1),
    }


def wait_until_replay_equals_live(cwd: Path, env: dict, timeout: float = 240.0) -> float:
    """Seconds until the running stack's derived tables equal a replay of its ledger (the
    processors and the derived sink have caught up); fails with the last comparison."""
    started = time.monotonic()
    while True:
        replayed = cli("replay", cwd=cwd, env=env, timeout=300)
        if replayed.returncode == 0:
            return round(time.monotonic() - started, 1)
        if time.monotonic() - started > timeout:
            raise AssertionError("the stack's derived tables never equalled a replay of its "
                                 f"ledger:\n{replayed.stdout}{replayed.stderr[-2000:]}")
        time.sleep(3)


def _wait_for_workers(up_pid: int, count: int, without: int | None = None,
                      timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in worker_pids(up_pid) if p != without]
        if len(pids) >= count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"the stack did not have {count} workers within {timeout:.0f}s")
