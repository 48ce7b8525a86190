"""The gateway's Prometheus metrics (``GET /metrics``), in a registry of its own.

    cxledger_gateway_events_total{event_type, key, outcome}   outcome: accepted | rejected |
                                                               unacknowledged | forbidden
    cxledger_gateway_requests_total{route, status}
    cxledger_gateway_request_duration_seconds{route}          histogram
    cxledger_gateway_publishes_in_flight                       requests waiting for Kafka
    cxledger_gateway_events_in_flight                          events sent, not yet acknowledged
    process_*  (resident memory, CPU, open fds: the default process collector)

Label values are bounded: ``event_type`` is a type of the contract or "other" (a client's
typo must not make a new series), ``key`` a configured key name, ``route`` a route of the
gateway or "other".
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)

from schemas.catalogue import default_catalogue

ROUTES = ("/v1/events", "/v1/events:batch", "/events", "/healthz", "/readyz", "/metrics",
          "/openapi.json")


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, events_in_flight: Callable[[], float]):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._types = frozenset(default_catalogue().event_types)
        self.events = Counter("cxledger_gateway_events", "Events by type, key and outcome",
                              ["event_type", "key", "outcome"], registry=self.registry)
        self.requests = Counter("cxledger_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("cxledger_gateway_request_duration_seconds",
                                 "Time from request to response, by route", ["route"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.publishes_in_flight = Gauge("cxledger_gateway_publishes_in_flight",
                                         "Publish requests waiting for acknowledgements",
                                         registry=self.registry)
        gauge = Gauge("cxledger_gateway_events_in_flight",
                      "Events sent to Kafka and not yet acknowledged", registry=self.registry)
        gauge.set_function(events_in_flight)

    def route(self, path: str) -> str:
        return path if path in ROUTES else "other"

    def request(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def event(self, event_type: object, key: str, outcome: str) -> None:
        label = event_type if isinstance(event_type, str) and event_type in self._types else "other"
        self.events.labels(label, key, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
