"""The HTTP gateway: how channels that are not Python publish to the ledger.

    POST /events   body: one JSON event, a JSON array of events, or JSON Lines
                   (Content-Type: application/x-ndjson)
    GET  /healthz  200 while the gateway can reach Kafka

Every event is validated like the SDK does; the valid ones are published and acknowledged by
Kafka (acks=all) before the response, so ``202`` means durably in the ledger (on the
single-machine stack, whose broker keeps nothing across a restart, only once they are in the
store: see ``LedgerProducer.flush``). Invalid ones are
reported by index with the field and reason (``422``, the valid ones still published); a retry
of the whole request is safe as long as the channel sets ``event_id`` (ids are reused, and
every table downstream deduplicates by id).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from cxledger.config import Settings
from producers.sdk import DeliveryError, LedgerProducer
from schemas.validation import EventValidationError

log = structlog.get_logger("cxledger.gateway")

MAX_BODY = 10 * 1024 * 1024


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """The events of a request body; ValueError with a reason for a malformed body."""
    text = body.decode("utf-8")
    if "ndjson" in content_type or "jsonl" in content_type:
        events = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number}: not valid JSON: {exc.msg}") from None
        return events
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return parsed if isinstance(parsed, list) else [parsed]


class Gateway:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8080):
        self.producer = LedgerProducer(settings)
        self._lock = threading.Lock()  # one request hands its events to the producer at a time
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "cxledger-gateway"

            def log_message(self, fmt: str, *args: Any) -> None:  # structured log instead
                log.debug("http", client=self.client_address[0], request=fmt % args)

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(200, {"status": "ok"})
                else:
                    self._reply(404, {"error": f"no such path {self.path}; POST /events"})

            def do_POST(self) -> None:
                if self.path != "/events":
                    self._reply(404, {"error": f"no such path {self.path}; POST /events"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(413, {"error": f"body over {MAX_BODY} bytes; split the batch"})
                    return
                try:
                    events = parse_body(self.rfile.read(length),
                                        self.headers.get("Content-Type", ""))
                except (ValueError, UnicodeDecodeError) as exc:
                    self._reply(400, {"error": str(exc)})
                    return
                status, payload = gateway.publish(events)
                self._reply(status, payload)

        self.server = ThreadingHTTPServer((host, port), Handler)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def publish(self, events: list[Any]) -> tuple[int, dict[str, Any]]:
        accepted, rejected = [], []
        try:
            with self._lock:
                for index, event in enumerate(events):
                    try:
                        accepted.append(self.producer.publish(event))
                    except EventValidationError as exc:
                        rejected.append({"index": index, "field": exc.field, "error": str(exc)})
            # Outside the lock: concurrent requests wait for their acknowledgements together.
            self.producer.flush(30)
        except DeliveryError as exc:
            log.error("delivery failed", error=str(exc))
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": str(exc), "retry": "send the same request again"}
        status = HTTPStatus.ACCEPTED if not rejected else HTTPStatus.UNPROCESSABLE_ENTITY
        return status, {"published": len(accepted), "event_ids": accepted, "rejected": rejected}

    def serve_forever(self) -> None:
        log.info("gateway listening", address=self.server.server_address)
        self.server.serve_forever()

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.producer.close()
