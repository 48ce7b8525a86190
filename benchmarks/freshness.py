"""Freshness: from publish until a derived row is visible, on a running ``cxledger up``.

The stack is ``cxledger up --workers N`` (``--freshness-workers``, default 1) on an empty store
in a temporary directory (its own local broker, sinks, query endpoint, the faust workers with
the live clock, the gateway), run as users run it. Traffic:
``producers.simulator.simulate_live`` at ``rate`` events/s, simulated before the clock starts
(so the generator does not take the stack's cores), paced on each event's ``occurred_at`` (event
time is wall time), published with the SDK (``LedgerProducer``: validation, Avro, librdkafka,
not waiting for acknowledgements in between). After ``warmup`` seconds of traffic, the probes
start: ``probe_rate`` times a second
one of the simulated events is replaced by a ``survey.responded`` of a simulated customer with
a survey id of our own, stamped now, so the total rate stays ``rate``.

Before that, on the same stack, the same measurement at ``floor_rate`` (default 1,000
events/s, which the stack sustains): the latency of the path itself, without a backlog
(``details.freshness.floor``).

Visible means: the probe's ``satisfaction.scored`` row comes back, by its survey id, from
``satisfaction_scores`` queried through the stack's ClickHouse HTTP interface (what Grafana
and clickhouse-connect read). A poller sends that query every ``poll_s`` seconds; a probe's
freshness is the time from just before its ``publish`` call to the arrival of the first
answer that holds it: an upper bound, by at most one poll interval plus one query. Probes not
visible ``grace`` seconds after the traffic stopped count as that long (and are reported).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.dashboards import percentile
from cxledger.pipeline import is_worker_command
from benchmarks.procs import (BenchError, children_of, command_of, peak_rss_mb, python_module,
                              spawn, stop, tail)


def _free_port() -> int:
    from cxledger.localstack import free_port

    return free_port()


def _wait_ready(proc, store: Path, log: Path, timeout: float = 240.0):
    from cxledger.stack import find_stack

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"cxledger up exited with code {proc.returncode}:\n{tail(log)}")
        record = find_stack(store)
        if record is not None and record.state == "ready" and record.pid == proc.pid:
            return record
        time.sleep(0.3)
    raise BenchError(f"cxledger up not ready within {timeout:.0f}s:\n{tail(log)}")


def _probe_template() -> dict[str, Any]:
    from producers.simulator import simulate

    return next(e for e in simulate(5_000, seed=11) if e["event_type"] == "survey.responded")


class _Poller(threading.Thread):
    """Sends the probe query every ``interval`` s; reads the stack's status (its consumer
    lags and rates, refreshed by ``up`` every second) once a second."""

    def __init__(self, dsn: str, prefix: str, interval: float, store: Path):
        super().__init__(name="freshness-poller", daemon=True)
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(dsn=dsn)
        self.prefix = prefix
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.polls = 0
        self.poll_ms: list[float] = []
        self.errors = 0
        self.store = store
        self.status: list[tuple[float, dict[str, Any]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from cxledger.stack import read_status

        next_status = 0.0
        while not self.stopping.is_set():
            sent = time.time()
            if sent >= next_status:
                status = read_status(self.store)
                if status and (not self.status or status.get("at") != self.status[-1][1].get("at")):
                    self.status.append((sent, status))
                next_status = sent + 1.0
            try:
                rows = self.client.query(
                    "SELECT survey_id FROM satisfaction_scores WHERE startsWith(survey_id, "
                    "{p:String})", parameters={"p": self.prefix}).result_rows
            except Exception:
                self.errors += 1
                rows = []
            arrived = time.time()
            self.polls += 1
            self.poll_ms.append((arrived - sent) * 1000)
            for (survey_id,) in rows:
                self.seen.setdefault(survey_id, arrived)
            self.stopping.wait(max(0.0, self.interval - (time.time() - sent)))


def measure(workdir: Path, *, rate: float = 5_000.0, seconds: float = 60.0,
            warmup: float = 5.0, floor_rate: float = 1_000.0, floor_seconds: float = 20.0,
            probe_rate: float = 20.0, poll_s: float = 0.1, grace: float = 30.0,
            workers: int = 1, say=print) -> dict[str, Any]:
    """Start the stack; run the floor traffic (a rate it sustains: the latency of the path
    itself), then the measured traffic; stop the stack."""
    store = workdir / "up-store"
    log = workdir / "up.out"
    query_port, gateway_port = _free_port(), _free_port()
    started = time.monotonic()
    proc = spawn(python_module("cxledger.cli", "up", "--store", str(store),
                               "--workers", str(workers), "--query-port", str(query_port),
                               "--gateway-port", str(gateway_port)), log, cwd=workdir)
    try:
        record = _wait_ready(proc, store, log)
        ready_s = time.monotonic() - started
        say(f"  cxledger up ready in {ready_s:.1f}s")
        floor = None
        if floor_seconds > 0:
            say(f"  floor: {floor_rate:,.0f} events/s for {warmup:.0f}+{floor_seconds:.0f}s")
            floor = _traffic(record, store, floor_rate, floor_seconds, warmup, probe_rate,
                             poll_s, grace, seed=22)
            say(f"  floor: p50 {floor['p50_s']}s, p99 {floor['p99_s']}s")
        say(f"  {rate:,.0f} events/s for {warmup:.0f}+{seconds:.0f}s")
        out = _traffic(record, store, rate, seconds, warmup, probe_rate, poll_s, grace, seed=21)
        out["stack_ready_s"] = round(ready_s, 1)
        out["stack"] = (f"cxledger up --workers {workers} (local broker, sinks, query endpoint, "
                        f"{workers} faust worker(s) with the live clock, gateway) on an empty "
                        "store")
        out["workers"] = workers
        out["floor"] = floor
        out["peak_rss_mb"] = _stack_rss(proc.pid)
        return out
    finally:
        stopping_at = time.monotonic()
        code = stop(proc, timeout=90)
        say(f"  cxledger up stopped in {time.monotonic() - stopping_at:.1f}s (exit {code})")


def _simulation_seconds(rate: float, seconds: float, seed: int) -> float:
    """How long simulating ``seconds`` of traffic at ``rate`` takes here (timed on one second
    of it, with a margin), plus one second."""
    from producers.simulator import simulate_live

    started = time.perf_counter()
    sum(1 for _ in simulate_live(rate, 1.0, seed=seed + 1))
    return 1.0 + 1.5 * seconds * (time.perf_counter() - started)


def _traffic(record, store: Path, rate: float, seconds: float, warmup: float,
             probe_rate: float, poll_s: float, grace: float, seed: int) -> dict[str, Any]:
    from cxledger.config import load_settings
    from producers.sdk import LedgerProducer
    from producers.simulator import simulate_live

    # the stack's seal key, as every SDK user attached to the stack has it (cxledger.stack)
    settings = load_settings(environ={}).with_(kafka_bootstrap=record.bootstrap,
                                               seal_key=record.seal_key)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    poller = _Poller(record.dsn, prefix, poll_s, store)
    poller.start()
    try:
        template = _probe_template()
        published: dict[str, float] = {}
        counter = itertools.count(1)
        sent = 0
        last_customer = (template["customer_id"], template["city"])
        total = warmup + seconds
        probe_every = 1.0 / probe_rate
        # The traffic is simulated before it is sent, stamped from a start time just after the
        # simulation will have finished: the load generator's own work then does not compete
        # with the stack for these cores while it is measured (only the SDK's publishing does,
        # as a channel's would).
        t0 = time.time() + _simulation_seconds(rate, total, seed)
        traffic = list(simulate_live(rate, total, seed=seed, now=lambda: t0))
        with LedgerProducer(settings) as producer:
            time.sleep(max(0.0, t0 - time.time()))
            probe_from = t0 + warmup
            next_probe = probe_from
            end = t0 + total
            for event in traffic:
                due = datetime.fromisoformat(event["occurred_at"]).timestamp()
                now = time.time()
                if due - now > 0.002:
                    time.sleep(due - now)
                    now = time.time()
                if now >= end:
                    break
                if now >= next_probe:
                    customer_id, city = last_customer
                    survey_id = f"{prefix}{next(counter):06d}"
                    probe = dict(template, event_id=str(uuid.uuid4()), survey_id=survey_id,
                                 customer_id=customer_id, city=city,
                                 occurred_at=int(now * 1000))
                    published[survey_id] = time.time()
                    producer.publish(probe)
                    sent += 1
                    next_probe += probe_every
                    continue  # the probe takes this event's place
                producer.publish(event)
                sent += 1
                if "customer_id" in event:  # operational events (halls, incidents) have none
                    last_customer = (event["customer_id"], event["city"])
            stopped = time.time()
        measured_rate = sent / max(stopped - t0, 1e-9)
        deadline = time.time() + grace
        while time.time() < deadline and len(poller.seen.keys() & published.keys()) < len(published):
            time.sleep(0.2)
    finally:
        poller.stopping.set()
        poller.join(timeout=10)
    latencies, missing = [], 0
    for survey_id, at in published.items():
        seen = poller.seen.get(survey_id)
        if seen is None:
            missing += 1
            latencies.append(grace + (stopped - at))
        else:
            latencies.append(max(0.0, seen - at))
    if not latencies:
        raise BenchError("no probe was published")
    # the median per 10 s of the measured window: a lag that grows is not a steady state
    slices: dict[int, list[float]] = {}
    for (survey_id, at), latency in zip(published.items(), latencies):
        k = min(int((at - probe_from) // 10), max(0, int((seconds - 1e-9) // 10)))
        slices.setdefault(k, []).append(latency)
    by_slice = {f"{10 * k}-{10 * k + 10}s": round(percentile(v, 0.5), 3)
                for k, v in sorted(slices.items())}
    return {
        "p50_s": round(percentile(latencies, 0.50), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
        "mean_s": round(sum(latencies) / len(latencies), 3),
        "probes": len(published), "probes_not_visible": missing,
        "events_published": sent, "rate_target_eps": rate,
        "rate_published_eps": round(measured_rate), "warmup_s": warmup,
        "measured_s": seconds, "poll_interval_s": poll_s,
        "poll_ms_median": round(percentile(poller.poll_ms, 0.5), 1) if poller.poll_ms else None,
        "poll_errors": poller.errors, "p50_s_per_10s": by_slice,
        "stack_status": _stack_status(poller.status, probe_from, stopped),
    }


def _stack_status(samples: list[tuple[float, dict[str, Any]]], start: float,
                  stopped: float) -> dict[str, Any]:
    """From ``up``'s status samples: consumer lags (events behind) at the end of the traffic
    and their maximum while it ran, and the mean rates in and derived."""
    during = [st for at, st in samples if start <= at <= stopped]
    if not during:
        return {}
    groups = sorted({g for st in during for g in st.get("lag", {})})
    return {
        "lag_at_end": during[-1].get("lag", {}),
        "lag_max": {g: max(st.get("lag", {}).get(g, 0) for st in during) for g in groups},
        "events_in_per_s_mean": round(sum(st.get("events_in_per_s", 0) for st in during)
                                      / len(during)),
        "derived_per_s_mean": round(sum(st.get("derived_per_s", 0) for st in during)
                                    / len(during)),
        "samples": len(during),
    }


def _stack_rss(pid: int) -> dict[str, float | None]:
    """Peak RSS of ``cxledger up`` and each of its children, by what they are."""
    out: dict[str, float | None] = {"up": peak_rss_mb(pid)}
    for child in children_of(pid):
        cmd = command_of(child)
        if "tansu" in cmd:
            name = "broker"
        elif is_worker_command(cmd):
            name = "worker"
        elif " gateway" in cmd:
            name = "gateway"
        else:
            name = f"pid {child}"
        out[name] = peak_rss_mb(child)
    return out
