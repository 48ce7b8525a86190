"""The HTTP ingest gateway: how channels that are not Python publish to the ledger.

A Starlette app served by uvicorn (``cxledger gateway [--host H] [--port P]``, and a child of
``cxledger up``):

    POST /v1/events         one JSON event or a JSON array of events
    POST /v1/events:batch   NDJSON, one event per line (Content-Type: application/x-ndjson)
    POST /events            the same as /v1/events, NDJSON too by its Content-Type (older clients)
    GET  /openapi.json      the API, generated from the Avro contract (producers.openapi)
    GET  /healthz           200 while the process runs
    GET  /readyz            200 when Kafka answers (and, on the single-machine stack, the
                            ledger sink runs), else 503 with the reason (producers.readiness)
    GET  /metrics           Prometheus text (producers.gateway_metrics)

A publish needs an API key (producers.api_keys) and answers per event, in order,
``{"index", "status": "accepted", "event_id"}`` or ``{"index", "status": "rejected", "field",
"reason"}``, validated exactly as the SDK validates (``LedgerProducer.publish``). A 2xx comes
only after Kafka (acks=all, and with ``acks_wait_for_store`` the store) acknowledged every
accepted event; each request waits only for its own events (producers.acks). Statuses:

    202  all accepted          207  some accepted, some rejected    422  all rejected
    400  not JSON / no event   401  no or unknown key               403  outside the key's scope
    413  body over max_body_bytes, or more events than max_events or the key's burst
    415  not JSON (NDJSON)     429  over the key's rate (Retry-After)
    503  not acknowledged within ack_timeout (Retry-After; results name the event ids to reuse)

403 is per request: when any event is outside the key's channels or event types, nothing is
published and the results name those events. A retry with the same event ids is idempotent:
every table downstream keeps one row per event_id.

Each request leaves one access-log line (method, path, status, duration, key name, event
counts, body size): never a payload, never a key (successful probes and scrapes: at debug).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxledger.config import Settings
from producers.acks import Batch, KafkaUnavailable, Publisher
from producers.api_keys import ApiKey, KeyRing
from producers.gateway_metrics import GatewayMetrics
from producers.openapi import openapi_document
from producers.rate_limit import RateLimiter
from producers.readiness import Readiness
from producers.request_body import (BodyTooLarge, MalformedBody, is_json, is_ndjson, media_type,
                                    parse_events, read_limited)

log = structlog.get_logger("cxledger.gateway")
access_log = structlog.get_logger("cxledger.gateway.access")

RETRY_AFTER_UNAVAILABLE = 5  # seconds a client waits before resending after a 503
PARSE_IN_THREAD = 64 * 1024  # bodies larger than this are parsed off the event loop
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # logged at debug level when they succeed
NO_KEYS_HINT = ("create one with `cxledger gateway key --name NAME --channels phone,ivr "
                "--event-types '*'` and put the entry it prints in the config file (or in the "
                "file named by CXLEDGER_GATEWAY_KEYS_FILE)")


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class GatewayApp:
    """The routes and what they share: keys, rate limits, the publisher, metrics."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = KeyRing(settings)
        self.limiter = RateLimiter()
        self.publisher = Publisher(settings)
        self.readiness = Readiness(settings)
        self.metrics = GatewayMetrics(lambda: self.publisher.acks.in_flight_total)
        self._openapi = json.dumps(openapi_document(), ensure_ascii=False).encode()
        routes = [
            Route("/v1/events", self.publish_json, methods=["POST"]),
            Route("/v1/events:batch", self.publish_ndjson, methods=["POST"]),
            Route("/events", self.publish_legacy, methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]
        starlette = Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_error, Exception: self._server_error})
        self.asgi: ASGIApp = AccessLog(starlette, self.metrics)

    # -- probes and documents ------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready, details = await run_in_threadpool(self.readiness.check)
        return JSONResponse({"status": "ready" if ready else "not ready", **details},
                            status_code=200 if ready else 503)

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    # -- publishing ----------------------------------------------------------------------
    async def publish_json(self, request: Request) -> Response:
        return await self._publish(request, "json")

    async def publish_ndjson(self, request: Request) -> Response:
        return await self._publish(request, "ndjson")

    async def publish_legacy(self, request: Request) -> Response:
        return await self._publish(request, "either")

    @staticmethod
    def _body_form(content_type: str | None, route: str) -> bool | Response:
        """True for NDJSON, False for JSON, or the 415 for a content type the route does
        not take (/v1/events: JSON; /v1/events:batch: NDJSON, or none; /events: either)."""
        kind = media_type(content_type)
        if route == "ndjson":
            if kind and not is_ndjson(content_type):
                return _error(415, f"Content-Type {kind!r} is not NDJSON: send "
                                   "application/x-ndjson, one event per line (a JSON array goes "
                                   "to /v1/events)")
            return True
        if is_json(content_type):
            return False
        if route == "either" and is_ndjson(content_type):
            return True
        hint = "; send NDJSON to /v1/events:batch" if is_ndjson(content_type) else ""
        return _error(415, f"Content-Type {kind!r} is not JSON: send application/json{hint}")

    async def _publish(self, request: Request, route: str) -> Response:
        access = request.scope.setdefault("cxledger.access", {})
        key = self.keys.authenticate(request.headers)
        if key is None:
            return self._unauthorized(request)
        access["key"] = key.name
        ndjson = self._body_form(request.headers.get("content-type"), route)
        if isinstance(ndjson, Response):
            return ndjson
        wait = self.limiter.wait(key.name, key.rate, key.burst)
        if wait:
            return self._too_many(key, wait)
        limit = self.settings.gateway_max_body_bytes
        try:
            body = await read_limited(request.stream(), limit, request.headers.get("content-length"))
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except ClientDisconnect:
            access["disconnected"] = True
            return _error(400, "the client went away before sending the whole body")
        access["bytes"] = len(body)
        try:
            events = (await run_in_threadpool(parse_events, body, ndjson)
                      if len(body) > PARSE_IN_THREAD else parse_events(body, ndjson))
        except MalformedBody as exc:
            return _error(400, str(exc))
        access["events"] = len(events)
        refused = self._refuse_batch(key, events)
        if refused is not None:
            return refused
        wait = self.limiter.take(key.name, key.rate, key.burst, len(events))
        if wait:
            return self._too_many(key, wait)
        return await self._send(key, events, access)

    def _refuse_batch(self, key: ApiKey, events: list[Any]) -> Response | None:
        """400 / 413 / 403 for a batch that is empty, too large, or outside the key's scope."""
        if not events:
            return _error(400, "the body holds no event: send one JSON object, an array of "
                               "them, or NDJSON lines")
        most = min(self.settings.gateway_max_events, key.burst)
        if len(events) > most:
            why = ("a request" if most == self.settings.gateway_max_events
                   else f"key {key.name!r} (its burst)")
            return _error(413, f"{len(events)} events in one request; {why} may send at most "
                               f"{most}: split the batch")
        forbidden = []
        for index, event in enumerate(events):
            refusal = key.refusal(event)
            if refusal:
                forbidden.append({"index": index, "status": "forbidden", "field": refusal[0],
                                  "reason": refusal[1]})
                self.metrics.event(event.get("event_type"), key.name, "forbidden")
        if forbidden:
            return _error(403, f"{len(forbidden)} of {len(events)} events are outside what key "
                               f"{key.name!r} may publish; nothing was published: send them with "
                               "a key for their channel and type", results=forbidden)
        return None

    async def _send(self, key: ApiKey, events: list[Any], access: dict[str, Any]) -> Response:
        batch = Batch(asyncio.get_running_loop())
        self.metrics.publishes_in_flight.inc()
        try:
            results = await run_in_threadpool(self.publisher.submit, batch, events)
            outcome = await self.publisher.settle(batch, self.settings.gateway_ack_timeout)
        except KafkaUnavailable as exc:
            log.error("publish refused", error=str(exc), key=key.name)
            return _error(503, f"{exc}; send the request again in a moment (the same event ids "
                               "make it safe)", headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)})
        finally:
            self.metrics.publishes_in_flight.dec()
        counts = {"accepted": 0, "rejected": 0, "unacknowledged": 0}
        for result, event in zip(results, events):
            if result["status"] == "accepted":
                reason = outcome.reason(result["event_id"])
                if reason:
                    result.update(status="unacknowledged", reason=reason)
            counts[result["status"]] += 1
            event_type = event.get("event_type") if isinstance(event, dict) else None
            self.metrics.event(event_type, key.name, result["status"])
        access.update(counts)
        body = {"accepted": counts["accepted"], "rejected": counts["rejected"], "results": results}
        if counts["unacknowledged"]:
            log.warning("events not acknowledged in time", key=key.name,
                        unacknowledged=counts["unacknowledged"],
                        event_ids=[r["event_id"] for r in results
                                   if r["status"] == "unacknowledged"][:20])
            return JSONResponse(
                {"error": f"{counts['unacknowledged']} event(s) not acknowledged within "
                          f"{self.settings.gateway_ack_timeout:g}s; send the request again "
                          f"after {RETRY_AFTER_UNAVAILABLE}s with the same event ids (results "
                          "has them): the ledger keeps one event per id",
                 "unacknowledged": counts["unacknowledged"], **body},
                status_code=503, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)})
        if not counts["accepted"]:
            return JSONResponse(body, status_code=422)
        return JSONResponse(body, status_code=207 if counts["rejected"] else 202)

    def _unauthorized(self, request: Request) -> Response:
        if not len(self.keys):
            message = f"this gateway has no API keys configured, so it publishes nothing: {NO_KEYS_HINT}"
        elif request.headers.get("authorization") or request.headers.get("x-api-key"):
            message = "unknown API key; check the key, or ask for one for your channel"
        else:
            message = "no API key: send Authorization: Bearer <key> (or X-API-Key: <key>)"
        return _error(401, message, headers={"WWW-Authenticate": 'Bearer realm="cxledger"'})

    def _too_many(self, key: ApiKey, wait: int) -> Response:
        return _error(429, f"key {key.name!r} is over its rate of {key.rate:g} events/s (burst "
                           f"{key.burst}); send again in {wait}s",
                      headers={"Retry-After": str(wait)})

    # -- errors ----------------------------------------------------------------------------
    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = (f"no such path {request.url.path[:200]}; publish with POST /v1/events, "
                       "the API is at /openapi.json")
        elif exc.status_code == 405:
            message = f"{request.method} is not served on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers=exc.headers)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        log.error("request failed", path=request.url.path[:200], error=repr(exc)[:500])
        return _error(500, "the gateway failed on this request; its log has the details")

    def close(self) -> None:
        self.readiness.close()
        self.publisher.close()


class AccessLog:
    """ASGI middleware: one log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = scope.setdefault("cxledger.access", {})
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            self.metrics.request(path, status, seconds)
            client = scope.get("client")
            # probes and scrapes come every few seconds: only their failures are worth a line
            emit = access_log.debug if path in QUIET_PATHS and status < 400 else access_log.info
            emit("request", method=scope["method"], path=path[:200], status=status,
                 duration_ms=round(seconds * 1000, 1), client=client[0] if client else None,
                 **info)


class Gateway:
    """The gateway on a socket: ``start()`` serves in a background thread, ``stop()`` ends it
    within shutdown_flush (+ about 1) seconds, whatever Kafka does."""

    def __init__(self, settings: Settings, host: str | None = None, port: int | None = None):
        self.settings = settings
        self.host = settings.gateway_host if host is None else host
        self.socket = _listen(self.host, settings.gateway_port if port is None else port)
        try:
            self.app = GatewayApp(settings)
        except BaseException:
            self.socket.close()
            raise
        self.publisher = self.app.publisher
        config = uvicorn.Config(self.app.asgi, log_config=None, access_log=False,
                                lifespan="off", server_header=False,
                                timeout_graceful_shutdown=math.ceil(
                                    settings.gateway_shutdown_flush) + 2)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> "Gateway":
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="cxledger-gateway-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.app.close()
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        keys = self.app.keys.names
        log.info("gateway listening", url=self.url, keys=keys,
                 acks="store" if self.settings.acks_wait_for_store else "kafka",
                 kafka=self.settings.kafka_bootstrap)
        if not keys:
            log.warning(f"no API keys configured: every publish answers 401; {NO_KEYS_HINT}")
        return self

    def stop(self) -> None:
        """Stop taking requests; give the ones in flight up to shutdown_flush seconds to be
        acknowledged, answer the rest 503 (send again), drop what Kafka has not taken and log
        its event ids. Takes shutdown_flush + about 1 s, whatever Kafka does: within a
        Kubernetes grace period (30 s) with the default 5 s."""
        started = time.monotonic()
        self.server.should_exit = True
        self.publisher.drain(self.settings.gateway_shutdown_flush)
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning("requests still running at shutdown are cut off")
        self.socket.close()
        self.app.close()
        log.info("gateway stopped", seconds=round(time.monotonic() - started, 1))

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError says which address."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
