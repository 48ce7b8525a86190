"""``cxledger up``: the single-machine stack as a service, until Ctrl-C or SIGTERM.

What runs, in start order (stopped in the reverse order):
  1. the local Tansu broker (unless Kafka is configured) and the topics;
  2. the embedded store (chDB), and, when the broker started empty, the restore: the ledger in
     the store is folded again (the replay path), every derived table is made equal to that
     fold, the fold's state is written to the processors' changelog, and the sinks continue the
     stored positions (see sinks.kafka_sink and processors.changelog);
  3. the ledger and derived sinks (threads: this process owns the store);
  4. the query endpoint: ClickHouse's HTTP interface on the store (cxledger.query_endpoint);
  5. the processors (``cxledger process`` children, live clock on) and the gateway
     (``cxledger gateway`` child);
then the stack record (cxledger.stack) says it is ready, and a status line is refreshed every
second: on the terminal, and as ``status.json`` for ``cxledger status``.

Health and metrics: this process serves /healthz, /readyz and /metrics (cxledger.health) on
127.0.0.1:9108 (``CXLEDGER_METRICS_HOST``/``CXLEDGER_METRICS_PORT``; when the port is not
configured and 9108 is taken, a free port, printed and in ``status.json``). Its /metrics holds
the sinks' and the query endpoint's metrics and, fetched at each scrape, those of every worker
and of the gateway, with a ``child`` label (``worker-0``, ..., ``gateway``): one scrape target
for the stack. Each worker also serves its own on a free loopback port. /readyz: Kafka and the
store answer, the sinks have partitions, and at least one worker is ready.

Acknowledgements: the local broker keeps topics in memory only, so on this stack a publish is
acknowledged once the ledger sink has written it to the store (``acks_wait_for_store``); a
kill -9 of everything then loses nothing acknowledged, and the restart derives again whatever
the processors had not finished.

Keys: with none configured, ``up`` makes the query endpoint's password, a gateway API key and
the seal key its SDK users share with its sinks and workers (schemas.seal: what the SDK checked
is not checked again); all three are kept in ``stack.json`` (mode 0600), where the commands on
the stack find them (``attach`` takes the endpoint's DSN and the seal key from it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import structlog

from cxledger.config import Settings, redact_dsn
from cxledger.logs import configure_logging
from cxledger.pipeline import Child, Pipeline, PipelineError, stop_children
from cxledger.schema_ids import SchemaIdError
from cxledger.stack import (LOGS, STATUS, StackRecord, StackRunning, StoreLock, find_stack,
                            read_record, read_status, remove_record, running_message, store_path,
                            write_json_private, write_record)
from sinks.derived_sink import DERIVED_GROUP
from sinks.ledger_sink import LEDGER_GROUP

log = structlog.get_logger("cxledger.up")

READY_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0  # Ctrl-C stops everything within this


class UpError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports(settings: Settings) -> None:
    wanted = [("gateway", settings.gateway_host, settings.gateway_port, "CXLEDGER_GATEWAY_PORT")]
    if settings.embedded_store:
        wanted.append(("query endpoint", settings.query_host, settings.query_port,
                       "CXLEDGER_QUERY_PORT"))
    if not settings.kafka_bootstrap and settings.broker_port:
        wanted.append(("local broker", settings.broker_host, settings.broker_port,
                       "CXLEDGER_BROKER_PORT"))
    if settings.metrics_port:  # configured: it must be free (the default may move, see above)
        wanted.append(("health and metrics", *settings.metrics_address("127.0.0.1"),
                       "CXLEDGER_METRICS_PORT"))
    for what, host, port, variable in wanted:
        if not _port_free(host, port):
            raise UpError(f"the {what}'s port {host}:{port} is in use; stop what holds it or "
                          f"set {variable} to another port")


class Stack:
    """Everything ``cxledger up`` runs; ``start`` then ``serve(stop)`` then ``stop``."""

    def __init__(self, settings: Settings, workers: int = 1, *, out: TextIO = sys.stdout):
        self.settings = settings
        self.workers = workers
        self.out = out
        self.store = store_path(settings.store)
        self.logs = self.store / LOGS
        self.pipe: Pipeline | None = None
        self.endpoint = None
        self.gateway: Child | None = None
        self.record: StackRecord | None = None
        self.monitor: StackMonitor | None = None
        self.generated_password = False
        self.gateway_key: str | None = None  # the plaintext of a key generated at start
        self.health_server = None  # cxledger.health.HealthServer: /healthz, /readyz, /metrics

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        settings = self.settings
        if settings.embedded_store and settings.query_password is None:
            settings = settings.with_(query_password=secrets.token_urlsafe(18))
            self.generated_password = True
        if not settings.gateway_keys:  # no anonymous publishing either: a key for this stack
            from producers.api_keys import new_api_key

            self.gateway_key, entry = new_api_key("up")
            settings = settings.with_(gateway_keys=(entry,))
        if not settings.seal_key:  # the stack's SDK seals what it checked (schemas.seal)
            settings = settings.with_(seal_key=secrets.token_urlsafe(32))
        pipe = Pipeline(settings, broker_log=self.logs / "broker.log", supervised=True,
                        config_dir=self.store / "run")
        pipe.__enter__()
        self.pipe = pipe  # from here on, ``stop`` undoes whatever has started
        self._start(pipe)

    def _start(self, pipe: Pipeline) -> None:
        where = (redact_dsn(pipe.settings.dsn) if not pipe.settings.embedded_store
                 else str(self.store))
        self.say(f"store {where}; kafka {pipe.settings.kafka_bootstrap}"
                 + (" (local broker, started empty)" if pipe.local_broker else ""))
        offset_base = self._restore(pipe) if pipe.local_broker else None
        pipe.settings = pipe.settings.with_(acks_wait_for_store=pipe.local_broker)
        pipe.start_sinks(offset_base)
        if pipe.settings.embedded_store:
            from cxledger.query_endpoint import QueryEndpoint

            s = pipe.settings
            self.endpoint = QueryEndpoint(self.store, {s.query_user: s.query_password},
                                          host=s.query_host, port=s.query_port,
                                          max_execution_time=s.query_max_execution_time,
                                          tls_cert=s.query_tls_cert, tls_key=s.query_tls_key)
            self.endpoint.start()
        self.health_server = self._serve_health(pipe)
        pipe.start_processors(self.workers, log_dir=self.logs)
        self.gateway = pipe.spawn("gateway", ["gateway", "--host", pipe.settings.gateway_host,
                                              "--port", str(pipe.settings.gateway_port)],
                                  self.logs / "gateway.log")
        pipe.wait_for_processor_group(timeout=180)
        self._wait_gateway()
        self.monitor = StackMonitor(pipe, self.endpoint, self.gateway)
        self.record = StackRecord(
            pid=os.getpid(), store=str(self.store),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            state="ready", bootstrap=pipe.settings.kafka_bootstrap,
            local_broker=pipe.local_broker,
            query=({"host": pipe.settings.query_host, "port": self.endpoint.port,
                    "user": pipe.settings.query_user, "password": pipe.settings.query_password,
                    "generated": self.generated_password,
                    # with TLS, clients verify the endpoint's certificate against this file
                    **({"tls_ca": str(Path(pipe.settings.query_tls_cert).resolve())}
                       if pipe.settings.query_tls_cert else {})}
                   if self.endpoint else {}),
            gateway={"host": pipe.settings.gateway_host, "port": pipe.settings.gateway_port,
                     **({"key": self.gateway_key} if self.gateway_key else {})},
            workers=self.workers, acks="store" if pipe.local_broker else "broker",
            seal_key=pipe.settings.seal_key)
        write_record(self.record)
        self._announce()

    def _serve_health(self, pipe: Pipeline):
        """/healthz, /readyz and /metrics of the stack (see the module docstring)."""
        from cxledger.health import MetricsPortError, child_metrics, child_ready, serve_health

        def children() -> list[tuple[str, str]]:
            out = [(c.name, c.metrics_url) for c in pipe.workers if c.metrics_url]
            if self.gateway is not None:
                s = pipe.settings
                host = "127.0.0.1" if s.gateway_host in ("0.0.0.0", "") else s.gateway_host
                out.append(("gateway", f"http://{host}:{s.gateway_port}"))
            return out

        def processors() -> tuple[bool, Any]:
            answers = {c.name: child_ready(c.metrics_url, timeout=1.0)
                       for c in pipe.workers if c.metrics_url}
            if any(ok for ok, _ in answers.values()):
                return True, {name: "ready" if ok else why for name, (ok, why) in answers.items()}
            return False, "; ".join(f"{name}: {why}" for name, (_, why) in answers.items()) \
                or "no worker started"

        health = pipe.sink_health(extra_ready={"processors": processors},
                                  extra_metrics=child_metrics(children, timeout=2.0))
        try:  # 9108, or a free port when that is taken and none is configured
            return serve_health(health, pipe.settings, "127.0.0.1")
        except MetricsPortError as exc:
            raise UpError(str(exc)) from None

    def _restore(self, pipe: Pipeline) -> dict[tuple[str, int], int]:
        """Fold the stored ledger; make the derived tables equal to it; hand the state to the
        processors; return where the sinks continue (see the module docstring)."""
        from processors.changelog import seed_state
        from processors.rules import load_rules
        from sinks.kafka_sink import positions_in_store
        from sinks.replay import REPLAY_DB, repair, replay

        client = pipe.client
        stored = client.query("SELECT count() FROM ledger_events").result_rows[0][0]
        if not stored:
            return {}
        started = time.monotonic()
        rules = load_rules(pipe.settings.rules_path)
        now_ms = int(time.time() * 1000) if pipe.settings.live_clock else None
        report = replay(client, rules, show_progress=self.out.isatty(), live_clock_ms=now_ms,
                        ledger_partitions=pipe.settings.topics.partitions)
        repaired = repair(client, report) if not report.equal else {}
        seeded = seed_state(pipe.settings, report.folds)
        client.command(f"DROP DATABASE IF EXISTS {REPLAY_DB}")
        base = positions_in_store(client, pipe.settings)
        log.info("restored from the store", events=report.events, derived=report.derived,
                 state_records=seeded, repaired=repaired,
                 seconds=round(time.monotonic() - started, 2))
        fixed = ("; repaired " + ", ".join(f"{t} (-{d} +{a})" for t, (d, a) in repaired.items())
                 if repaired else "; the derived tables equal it")
        self.say(f"restored: {report.events:,} ledger events folded again in "
                 f"{time.monotonic() - started:.1f}s{fixed}")
        return base

    def _wait_gateway(self, timeout: float = 60.0) -> None:
        """Until the gateway is ready: Kafka reachable, and (acks wait for the store) the
        ledger sink's group formed."""
        s = self.pipe.settings
        host = "127.0.0.1" if s.gateway_host in ("0.0.0.0", "") else s.gateway_host
        url = f"http://{host}:{s.gateway_port}/readyz"
        deadline = time.monotonic() + timeout
        while True:
            if self.gateway.proc.poll() is not None:
                raise UpError(f"the gateway exited with code {self.gateway.proc.returncode}; "
                              f"see {self.gateway.log}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise UpError(f"the gateway did not answer on {url} within {timeout:.0f}s; "
                              f"see {self.gateway.log}")
            time.sleep(0.2)

    def _announce(self) -> None:
        r = self.record
        lines = ["ready:"]
        if r.query:  # a password is shown only when up made it: a configured one is a secret
            lines.append(f"  query endpoint  {r.query_url}  user {r.query['user']}  "
                         + (f"password {r.query['password']}  (generated; kept in "
                            f"{self.store / 'stack.json'})" if self.generated_password
                            else "password from the settings"))
        lines.append(f"  gateway         {r.gateway_url}/v1/events"
                     + (f"  key {self.gateway_key}  (generated; kept in "
                        f"{self.store / 'stack.json'})" if self.gateway_key else ""))
        if self.health_server is not None:
            lines.append(f"  metrics         {self.health_server.url}/metrics  (/healthz, "
                         "/readyz; workers and gateway included)")
        lines += [
                  f"  kafka           {r.bootstrap}",
                  f"  logs            {self.logs}",
                  "Ctrl-C (or `cxledger down`) stops everything."]
        self.say("\n".join(lines))

    # -- run ------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set: restart a crashed worker or gateway, refresh the
        status; a stopped sink ends the stack (its error is in the log)."""
        tty = self.out.isatty()
        while not stop.wait(1.0):
            for child in [*self.pipe.workers, self.gateway]:
                if child.proc.poll() is not None:
                    if child.crash_looping():
                        raise UpError(f"{child.name} keeps exiting (code {child.proc.returncode},"
                                      f" 5 restarts within a minute); see {child.log}")
                    log.error("child exited; starting it again", child=child.name,
                              code=child.proc.returncode, log=str(child.log))
                    self.pipe.respawn(child)
            for name in self.pipe.dead_sinks():
                raise UpError(f"the sink {name} stopped; see {self.logs / 'up.log'}")
            status = self.monitor.sample()
            if self.health_server is not None:
                status["metrics"] = f"{self.health_server.url}/metrics"
            write_json_private(self.store / STATUS, status)
            if tty:
                print("\r\x1b[K" + status_line(status), end="", file=self.out, flush=True)
        if tty:
            print(file=self.out)

    # -- stop -----------------------------------------------------------------------------
    def stop(self, drain: bool = True) -> None:
        """Stop in reverse order: no new input first; then (``drain``) let the processors
        fold what is stored and the derived sink write what they derived, for up to
        DRAIN_TIMEOUT; then stop them; the sinks write what they hold before they return.
        Whatever a stop leaves undone, the next start derives again from the store."""
        if self.record is not None:
            self.record.state = "stopping"
            write_record(self.record)
        pipe, self.pipe = self.pipe, None
        endpoint, self.endpoint = self.endpoint, None
        monitor, self.monitor = self.monitor, None
        try:
            # At most 8 + 25 + 15 + 10 s, and the broker's 5: within STOP_TIMEOUT.
            if self.gateway is not None:
                stop_children([self.gateway], min(8.0, self.settings.gateway_shutdown_flush + 3))
            if pipe is not None and drain and pipe.workers:
                self._drain(pipe)
            if pipe is not None:
                pipe.stop_processors(15)
                pipe.stop_sinks(10)
            if endpoint is not None:
                endpoint.stop()
        finally:
            health_server, self.health_server = self.health_server, None
            if health_server is not None:
                health_server.stop()
            if monitor is not None:  # its Kafka clients go before the broker does
                monitor.close()
            if pipe is not None:
                pipe.__exit__(None, None, None)
            remove_record(self.store)


    @staticmethod
    def _drain(pipe: Pipeline, timeout: float = 25.0) -> None:
        deadline = time.monotonic() + timeout
        stored = {}
        for sink in pipe.sinks:
            if sink.name == LEDGER_GROUP:
                stored = dict(sink.stats.positions)
        try:
            pipe.wait_for_processors(stored, timeout=timeout, show_progress=False)
            derived_topics = list(dict.fromkeys(pipe.settings.topics.derived.values()))
            pipe.wait_for_sinks(pipe.fence(derived_topics), show_progress=False,
                                timeout=max(1.0, deadline - time.monotonic()))
            log.info("drained", stored=sum(stored.values()))
        except PipelineError as exc:
            log.warning("stopping without a full drain; the next start derives the rest "
                        "from the store", error=str(exc))


class StackMonitor:
    """The numbers of the status line: rates from the sinks, lag from Kafka."""

    def __init__(self, pipe: Pipeline, endpoint, gateway: Child):
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        self.pipe = pipe
        self.endpoint = endpoint
        self.gateway = gateway
        self.started = time.time()
        self._admin = AdminClient(pipe.settings.kafka_conf())
        self._watermarks = Consumer(pipe.settings.kafka_conf(**{
            "group.id": "cxledger-status", "enable.auto.commit": False}))
        self._last: tuple[float, int, int] | None = None
        self._lag: dict[str, int] = {}
        self._samples = 0

    def sample(self) -> dict[str, Any]:
        now = time.time()
        sinks = {sink.name: sink.stats for sink in self.pipe.sinks}
        ledger, derived = sinks.get(LEDGER_GROUP), sinks.get(DERIVED_GROUP)
        consumed_in = ledger.consumed if ledger else 0
        consumed_out = derived.consumed if derived else 0
        rate_in = rate_out = 0.0
        if self._last is not None:
            dt = max(now - self._last[0], 1e-3)
            rate_in = (consumed_in - self._last[1]) / dt
            rate_out = (consumed_out - self._last[2]) / dt
        self._last = (now, consumed_in, consumed_out)
        if self._samples % 2 == 0:
            self._admin.poll(0)  # serve their log lines (librdkafka logs through cxledger.logs)
            self._watermarks.poll(0)
            try:
                self._lag = self._consumer_lag()
            except Exception as exc:  # Kafka briefly unreachable: keep the last figures
                log.warning("lag not measured", error=str(exc))
        self._samples += 1
        writes = [s.last_write for s in sinks.values() if s.last_write]
        return {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "uptime_s": round(now - self.started),
            "events_in_per_s": round(rate_in, 1),
            "derived_per_s": round(rate_out, 1),
            "events_stored": consumed_in,
            "derived_stored": consumed_out,
            "lag": dict(self._lag),
            "last_flush_age_s": round(now - max(writes), 1) if writes else None,
            "dead_letters": sum(s.deadlettered for s in sinks.values()),
            "queries": self.endpoint.stats.queries if self.endpoint else None,
            "workers_alive": sum(c.proc.poll() is None for c in self.pipe.workers),
            "restarts": sum(c.restarts for c in [*self.pipe.workers, self.gateway]),
        }

    def _consumer_lag(self) -> dict[str, int]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        t = self.pipe.settings.topics
        groups = {"ledger-sink": (LEDGER_GROUP, [t.ledger]),
                  "processors": (t.processors_app, [t.ledger]),
                  "derived-sink": (DERIVED_GROUP, list(dict.fromkeys(t.derived.values())))}
        # Tansu reports a partition's end as its last batch's base offset + 1, short of the
        # true end by the rest of that batch; what the sinks have read is known to exist.
        ends: dict[tuple[str, int], int] = {}
        for sink in self.pipe.sinks:
            for tp, position in sink.stats.positions.items():
                ends[tp] = max(ends.get(tp, 0), position)
        lag, fetched = {}, set()
        for name, (group, topics) in groups.items():
            parts = [TopicPartition(topic, p) for topic in topics for p in range(t.partitions)]
            for tp in parts:
                key = (tp.topic, tp.partition)
                if key not in fetched:
                    high = self._watermarks.get_watermark_offsets(tp, timeout=2, cached=False)[1]
                    ends[key] = max(ends.get(key, 0), high)
                    fetched.add(key)
            request = [ConsumerGroupTopicPartitions(group, parts)]
            result = self._admin.list_consumer_group_offsets(request)[group].result(timeout=5)
            committed = {(tp.topic, tp.partition): max(tp.offset, 0)
                         for tp in result.topic_partitions}
            lag[name] = sum(max(0, ends[k] - committed.get(k, 0)) for k in ends
                            if k[0] in topics)
        return lag

    def close(self) -> None:
        self._watermarks.close()
        del self._admin


def status_line(status: dict[str, Any]) -> str:
    lag = ", ".join(f"{k} {v:,}" for k, v in status.get("lag", {}).items()) or "-"
    flush = status.get("last_flush_age_s")
    parts = [f"in {status['events_in_per_s']:,.0f} ev/s",
             f"derived {status['derived_per_s']:,.0f} ev/s",
             f"lag {lag}",
             f"flushed {flush:.1f}s ago" if flush is not None else "no flush yet",
             f"dead letters {status['dead_letters']}"]
    if status.get("queries") is not None:
        parts.append(f"queries {status['queries']}")
    return " | ".join(parts)


# -- the commands -------------------------------------------------------------------------

def run_up(settings: Settings, workers: int = 1, log_level: str = "info") -> int:
    """``cxledger up`` in the foreground; returns the exit code."""
    store = store_path(settings.store)
    lock = StoreLock(store)
    try:
        lock.acquire()
    except StackRunning as exc:
        print(f"cxledger: {exc}", file=sys.stderr)
        return 1
    remove_record(store)  # a record left by a stack that was killed
    stop = threading.Event()
    stack: Stack | None = None

    def on_signal(signum, frame) -> None:
        if stop.is_set():  # a second Ctrl-C: nothing acknowledged is lost by a hard stop
            print("\nstopping now", file=sys.stderr, flush=True)
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    logs = store / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    log_file = open(logs / "up.log", "a", encoding="utf-8", buffering=1)
    configure_logging("json", log_level, stream=log_file)
    code = 0
    try:
        _check_ports(settings)
        stack = Stack(settings, workers)
        stack.start()
        if not stop.is_set():
            stack.serve(stop)
    except (UpError, PipelineError, SchemaIdError) as exc:
        print(f"\ncxledger: {exc}", file=sys.stderr)
        log.error("stack failed", error=str(exc))
        code = 1
    except Exception as exc:
        log.exception("stack failed")
        print(f"\ncxledger: the stack failed: {exc}; see {logs / 'up.log'}", file=sys.stderr)
        code = 1
    finally:
        if stack is not None:
            print("stopping ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                stack.stop(drain=code == 0)
            finally:
                print(f"stopped in {time.monotonic() - started:.1f}s", file=sys.stderr,
                      flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
        log_file.close()
    return code


def run_detached(argv: list[str], settings: Settings) -> int:
    """``cxledger up --detach``: start ``up`` in a session of its own, wait until ready."""
    store = store_path(settings.store)
    if find_stack(store):
        print(f"cxledger: {running_message(store)}", file=sys.stderr)
        return 1
    (store / LOGS).mkdir(parents=True, exist_ok=True)
    out_path = store / LOGS / "up.out"
    command = [sys.executable, "-m", "cxledger.cli", *[a for a in argv if a != "--detach"]]
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = out_path.read_text(errors="replace").splitlines()[-15:]
            print("cxledger: the stack did not start:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
        record = read_record(store)
        if record and record.pid == proc.pid and record.state == "ready":
            print(f"stack running in the background (pid {proc.pid}) on {store}")
            if record.query:
                print(f"  query endpoint  {record.query_url}  user {record.query['user']}  "
                      + (f"password {record.query['password']}" if record.query.get("generated")
                         else "password from the settings"))
            print(f"  gateway         {record.gateway_url}/v1/events"
                  + (f"  key {record.gateway['key']}" if record.gateway.get("key") else "")
                  + "\n"
                  f"  kafka           {record.bootstrap}\n"
                  f"  logs            {store / LOGS}\n"
                  f"`cxledger status` reports on it; `cxledger down` stops it.")
            return 0
        time.sleep(0.3)
    print(f"cxledger: the stack is not ready after {READY_TIMEOUT:.0f}s; see {out_path} "
          "and `cxledger status`", file=sys.stderr)
    return 1


def show_status(settings: Settings, fmt: str = "text") -> int:
    """``cxledger status``: 0 when a stack runs on the store, 3 when none does."""
    store = store_path(settings.store)
    record = find_stack(store)
    if record is None:
        if fmt == "json":
            print('{"running": false}')
        else:
            print(f"no stack running on {store}")
        return 3
    status = read_status(store) or {}
    if fmt == "json":
        import json

        info = asdict(record)
        if info.get("query"):
            info["query"] = {k: v for k, v in info["query"].items() if k != "password"}
        info["gateway"] = {k: v for k, v in info["gateway"].items() if k != "key"}
        info.pop("seal_key", None)
        print(json.dumps({"running": True, "stack": info, "status": status}, indent=2))
        return 0
    print(f"stack {record.state} on {store} (pid {record.pid}, since {record.started_at})")
    if record.query:
        print(f"  query endpoint  {record.query_url}  user {record.query['user']}  "
              f"(password in {store / 'stack.json'})")
    print(f"  gateway         {record.gateway_url}/v1/events"
          + (f"  (key in {store / 'stack.json'})" if record.gateway.get("key") else ""))
    print(f"  kafka           {record.bootstrap}  (acknowledged = "
          f"{'in the store' if record.acks == 'store' else 'on the broker'})")
    if status.get("metrics"):
        print(f"  metrics         {status['metrics']}")
    if status:
        print(f"  {status_line(status)}")
        print(f"  workers alive {status.get('workers_alive')}/{record.workers}, "
              f"restarts {status.get('restarts')}, up {status.get('uptime_s')}s")
    return 0


def stop_stack(settings: Settings, timeout: float = STOP_TIMEOUT) -> int:
    """``cxledger down``: SIGTERM the stack, wait for it to release the store."""
    store = store_path(settings.store)
    record = find_stack(store)
    if record is None:
        print(f"no stack running on {store}")
        return 0
    os.kill(record.pid, signal.SIGTERM)
    print(f"stopping the stack (pid {record.pid}) ...", end="", flush=True)
    deadline = time.monotonic() + timeout
    while find_stack(store) is not None or _alive(record.pid):
        if time.monotonic() > deadline:
            print(f"\ncxledger: still running after {timeout:.0f}s; killing it", file=sys.stderr)
            try:
                os.killpg(record.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(record.pid, signal.SIGKILL)
            return 1
        time.sleep(0.3)
    print(" stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
