"""``/healthz``, ``/readyz`` and ``/metrics`` of the processors, the sinks and ``cxledger up``, on
the metrics port (``CXLEDGER_METRICS_PORT``, default 9108; the gateway serves its own on its port;
``serve_health``: a configured port must be free, the default gives way to a free port).

- ``/healthz``: 200 while the process runs and its work loop turns (a processor whose event loop
  has not ticked for ``stall_seconds``, or a sink thread that died, answer 503);
- ``/readyz``: 200 when connected to Kafka (a metadata request answers within 2 s), to ClickHouse
  (the sinks: ``/ping`` of a server DSN answers, and the store takes the batches), and partitions
  are assigned; else 503 with a JSON body whose ``reason`` says what is missing, e.g.
  ``{"ready": false, "reason": "kafka: no answer from kafka:9092 within 2s", "checks": {...}}``;
- ``/metrics``: Prometheus text (cxledger.metrics), plus, in ``cxledger up``, what its children
  serve (``extra``: each worker's and the gateway's metrics, with a ``child`` label).

A plain ``http.server`` in a daemon thread: it answers while faust's event loop or a sink thread
is busy, and costs nothing per event. Probe answers are cached for ``cache_seconds``, so a burst
of probes is not a burst of Kafka requests.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cxledger.config import Settings
from cxledger.metrics import Metrics

log = structlog.get_logger("cxledger.health")

# A check: () -> (ok, detail); detail says what is wrong (or "ok", or a count).
Check = Callable[[], tuple[bool, Any]]


class MetricsPortError(RuntimeError):
    """The metrics port cannot be bound."""


class Cached:
    """A check's answer, kept for ``seconds`` (the probe itself may block for its timeout)."""

    def __init__(self, check: Check, seconds: float = 2.0):
        self.check = check
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: tuple[float, bool, Any] | None = None

    def __call__(self) -> tuple[bool, Any]:
        with self._lock:
            if self._last and time.monotonic() - self._last[0] < self.seconds:
                return self._last[1], self._last[2]
            try:
                ok, detail = self.check()
            except Exception as exc:  # a probe that fails is a "no", with its reason
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            self._last = (time.monotonic(), ok, detail)
            return ok, detail


class KafkaProbe:
    """Kafka answers a metadata request for ``topic`` within ``timeout`` seconds."""

    def __init__(self, settings: Settings, topic: str | None = None, timeout: float = 2.0):
        self.settings = settings
        self.topic = topic or settings.topics.ledger
        self.timeout = timeout
        self._admin = None

    def __call__(self) -> tuple[bool, Any]:
        from confluent_kafka.admin import AdminClient

        if not self.settings.kafka_bootstrap:
            return False, "no Kafka bootstrap configured"
        if self._admin is None:
            self._admin = AdminClient(self.settings.kafka_conf())
        try:
            metadata = self._admin.list_topics(topic=self.topic, timeout=self.timeout)
        except Exception as exc:
            self._admin.poll(0)  # serve its log lines (cxledger.logs)
            return False, (f"no answer from {self.settings.kafka_bootstrap} within "
                           f"{self.timeout:g}s ({exc})")
        self._admin.poll(0)
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            return False, f"topic {self.topic} does not exist (cxledger topics create)"
        return True, "ok"


class ClickHouseProbe:
    """A ClickHouse server answers ``/ping`` (its own client, apart from the sinks'); for the
    embedded store, which only its owner can open, whether the sinks' writes go through."""

    def __init__(self, settings: Settings, sinks: Callable[[], Iterable[Any]] = lambda: ()):
        self.settings = settings
        self.sinks = sinks
        self._client = None

    def __call__(self) -> tuple[bool, Any]:
        for sink in self.sinks():
            if sink.stats.fault:
                return False, f"the store refuses {sink.name}'s batch: {sink.stats.fault}"
        if self.settings.embedded_store:
            return True, "ok"
        from sinks.clickhouse import connect

        try:
            if self._client is None:
                self._client = connect(self.settings.dsn)
            if self._client.ping():
                return True, "ok"
        except Exception as exc:
            self._client = None
            return False, f"no answer: {exc}"
        self._client = None
        return False, "no answer to /ping"


class Health:
    """What the endpoints answer: ``alive`` checks for /healthz, ``ready`` checks for /readyz
    (name -> check), ``metrics`` for /metrics."""

    def __init__(self, metrics: Metrics, *, alive: dict[str, Check] | None = None,
                 ready: dict[str, Check] | None = None,
                 extra: Callable[[], Iterable[Any]] | None = None):
        self.metrics = metrics
        self.alive_checks = dict(alive or {})
        self.ready_checks = dict(ready or {})
        self.extra = extra  # more metric families at scrape time (up: its children's)

    def _run(self, checks: dict[str, Check]) -> tuple[bool, dict[str, Any], str]:
        results, reasons = {}, []
        for name, check in checks.items():
            try:
                ok, detail = check()
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results[name] = detail if ok else {"ok": False, "reason": detail}
            if not ok:
                reasons.append(f"{name}: {detail}")
        return not reasons, results, "; ".join(reasons)

    def alive(self) -> tuple[bool, dict[str, Any]]:
        ok, results, reason = self._run(self.alive_checks)
        return ok, {"alive": ok, **({"reason": reason} if reason else {}), "checks": results}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, results, reason = self._run(self.ready_checks)
        return ok, {"ready": ok, **({"reason": reason} if reason else {}), "checks": results}

    def render_metrics(self) -> bytes:
        if self.extra is None:
            return self.metrics.render()
        return generate_latest(_Merged(self.metrics.registry, self.extra))


class _Merged:
    """A registry's families and more, merged by name (one HELP/TYPE per family)."""

    def __init__(self, registry, extra: Callable[[], Iterable[Any]]):
        self.registry, self.extra = registry, extra

    def collect(self):
        families: dict[str, Any] = {}
        for family in [*self.registry.collect(), *_safe(self.extra)]:
            have = families.get(family.name)
            if have is None:
                families[family.name] = family
            elif have.type == family.type:
                have.samples.extend(family.samples)
        return list(families.values())


def _safe(extra: Callable[[], Iterable[Any]]) -> list:
    try:
        return list(extra())
    except Exception as exc:
        log.warning("metrics of the children not collected", error=str(exc))
        return []


def child_metrics(children: Callable[[], Iterable[tuple[str, str]]], timeout: float = 2.0
                  ) -> Callable[[], list[Any]]:
    """``extra`` for Health: the families each (name, url) child serves at url/metrics, every
    sample labelled ``child=name``. A child that does not answer is left out of that scrape."""
    def collect() -> list[Any]:
        out = []
        for name, url in children():
            try:
                with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
                    text = response.read().decode("utf-8")
            except (OSError, urllib.error.URLError):
                continue
            for family in text_string_to_metric_families(text):
                family.samples = [s._replace(labels={**s.labels, "child": name})
                                  for s in family.samples]
                out.append(family)
        return out

    return collect


def child_ready(url: str, timeout: float = 2.0) -> tuple[bool, Any]:
    """A child's /readyz: (ready, its reason)."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as response:
            return response.status == 200, "ok"
    except urllib.error.HTTPError as exc:
        try:
            return False, json.loads(exc.read()).get("reason", f"HTTP {exc.code}")
        except (ValueError, AttributeError):
            return False, f"HTTP {exc.code}"
    except OSError as exc:
        return False, f"no answer ({exc})"


def serve_health(health: Health, settings: Settings, default_host: str = "0.0.0.0"
                 ) -> "HealthServer":
    """Serve ``health`` on the settings' metrics address. A port that is configured
    (CXLEDGER_METRICS_PORT, [metrics] port, --metrics-port) must be free: MetricsPortError
    otherwise. The default, 9108, may be taken on a machine that runs more than one of these
    (two workers, a worker and a sink): then a free port, logged."""
    host, port = settings.metrics_address(default_host)
    try:
        return HealthServer(health, host, port).start()
    except MetricsPortError:
        if settings.metrics_port is not None:
            raise
        server = HealthServer(health, host, 0).start()
        log.warning("the default metrics port is taken; serving on another", port=port,
                    url=server.url)
        return server


class HealthServer:
    """The endpoints on ``host:port`` from a daemon thread; ``start`` raises MetricsPortError
    when the port is taken. Port 0 picks a free one (``port`` says which, after ``start``)."""

    def __init__(self, health: Health, host: str = "0.0.0.0", port: int = 9108):
        self.health = health
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "HealthServer":
        health = self.health

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, health.render_metrics(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, body = health.alive() if path == "/healthz" else health.ready()
                    self._send(200 if ok else 503, json.dumps(body).encode() + b"\n",
                               "application/json")
                else:
                    self._send(404, b'{"error": "not found: /healthz, /readyz, /metrics"}\n',
                               "application/json")

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes are not news
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = (__import__("socket").AF_INET6 if ":" in self.host
                              else __import__("socket").AF_INET)

        try:
            self._server = Server((self.host, self.port), Handler)
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve /healthz, /readyz and /metrics on {self.host}:{self.port}: "
                f"{exc.strerror or exc}; stop what listens there or set CXLEDGER_METRICS_PORT "
                "to another port") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="cxledger-health", daemon=True)
        self._thread.start()
        log.info("health and metrics listening", url=self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
