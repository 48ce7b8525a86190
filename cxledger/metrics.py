"""The Prometheus metrics of the processors, the sinks and the query endpoint (the gateway has
its own: producers.gateway_metrics). One ``Metrics`` per process (``process_metrics()``), in a
registry of its own, served on ``/metrics`` by cxledger.health.

    cxledger_events_in_total{consumer, topic}        messages consumed (consumer: the group)
    cxledger_events_out_total{producer, topic}       messages produced: derived events, dead
                                                      letters, the processors' state changelog
    cxledger_sink_rows_written_total{sink, table}    rows a sink wrote into ClickHouse
    cxledger_sink_batch_messages{sink}               histogram: messages per written batch
    cxledger_sink_write_seconds{sink}                histogram: a batch into ClickHouse, retries
                                                      included, until it was taken
    cxledger_sink_store_retries_total{sink}          batches written again after a store fault
    cxledger_sink_store_fault{sink}                  1 while the store refuses the batch held
    cxledger_sink_last_write_timestamp_seconds{sink} when the sink last wrote a batch
    cxledger_consumer_lag{group, topic, partition}   messages behind the partition's end, for
                                                      the partitions this process is assigned
    cxledger_consumer_assigned_partitions{group}     partitions this process is assigned
    cxledger_dead_letters_total{reason, consumer}    reason: decode | schema | key | value |
                                                      conflict | store-refused (dead_letter_reason)
    cxledger_processor_batch_seconds                 histogram: fold, send and persist a batch
    cxledger_fold_customers{partition}               customers held in the fold state
    cxledger_fold_window_partials{partition}         open satisfaction window partials
    cxledger_fold_ids_remembered{partition}          event ids held to skip duplicates
                                                      (processors.folded_ids)
    cxledger_fold_duplicates{partition}              events skipped as folded before, since
                                                      this process took the partition
    cxledger_query_duration_seconds{outcome, format} histogram: the query endpoint's requests;
                                                      outcome ok | client_error | server_error
    cxledger_queries_in_flight                       queries running on the query endpoint
    process_*                                        RSS, CPU, open files (process collector)

Label values are bounded: topics, groups, tables and partitions are the configured ones, a
dead letter's reason is a category (the free text is in the log and ``deadletter_events``), a
query's format is one of ClickHouse's format names or "other".

Gauges whose series come and go with partition assignments (lag, fold state) are computed at
scrape time from ``sources`` (callables that return the current values), so a partition moved to
another worker leaves no stale series behind.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily

# (group, topic, partition) -> lag
LagSource = Callable[[], Iterable[tuple[str, str, int, int]]]

DEAD_LETTER_REASONS = ("decode", "schema", "key", "value", "conflict", "store-refused")

_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
_WRITE_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
_QUERY_BUCKETS = (.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)


def dead_letter_reason(reason: str) -> str:
    """The bounded category of a dead letter's reason (the texts of schemas.codec,
    schemas.validation, sinks.ledger_sink and sinks.kafka_sink)."""
    text = reason.lstrip()
    if text.startswith(("unknown schema id", "schema ids disagree")):
        return "schema"
    if text.startswith(("message too short", "bad magic byte")) or (
            text.startswith("schema id") and ("does not decode" in text
                                              or "trailing bytes" in text)):
        return "decode"
    if text.startswith(("no message key", "message key ")):
        return "key"
    if text.startswith("event_id conflict"):
        return "conflict"
    if text.startswith("refused by "):
        return "store-refused"
    return "value"


class Metrics:
    """The metric families of one process (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.events_in = Counter("cxledger_events_in", "Messages consumed, by consumer group "
                                 "and topic", ["consumer", "topic"], registry=r)
        self.events_out = Counter("cxledger_events_out", "Messages produced, by producer and "
                                  "topic", ["producer", "topic"], registry=r)
        self.rows_written = Counter("cxledger_sink_rows_written", "Rows written into "
                                    "ClickHouse, by sink and table", ["sink", "table"],
                                    registry=r)
        self.batch_messages = Histogram("cxledger_sink_batch_messages", "Messages per batch a "
                                        "sink wrote", ["sink"], buckets=_BATCH_BUCKETS,
                                        registry=r)
        self.write_seconds = Histogram("cxledger_sink_write_seconds", "Time to write a batch "
                                       "into ClickHouse, store retries included", ["sink"],
                                       buckets=_WRITE_BUCKETS, registry=r)
        self.store_retries = Counter("cxledger_sink_store_retries", "Batches written again after "
                                     "a store fault", ["sink"], registry=r)
        self.dead_letters = Counter("cxledger_dead_letters", "Messages dead-lettered, by reason "
                                    "category and consumer", ["reason", "consumer"], registry=r)
        self.processor_batch_seconds = Histogram(
            "cxledger_processor_batch_seconds", "Time to fold a batch, send its derived events "
            "and persist its state, until acknowledged", buckets=_WRITE_BUCKETS, registry=r)
        self.query_seconds = Histogram("cxledger_query_duration_seconds", "Query endpoint "
                                       "requests, by outcome and output format",
                                       ["outcome", "format"], buckets=_QUERY_BUCKETS,
                                       registry=r)
        self.queries_in_flight = Gauge("cxledger_queries_in_flight", "Queries running on the "
                                       "query endpoint", registry=r)
        self._lock = threading.Lock()
        self._lag: dict[int, LagSource] = {}
        self._assigned: dict[int, Callable[[], Iterable[tuple[str, int]]]] = {}
        self._folds: dict[int, Callable[[], Iterable[tuple[int, int, int, int, int]]]] = {}
        self._sinks: dict[int, Callable[[], Iterable[tuple[str, float | None, bool]]]] = {}
        r.register(_SourceCollector(self))

    # -- scrape-time sources ----------------------------------------------------------------
    def add_source(self, owner: object, *, lag: LagSource | None = None,
                   assigned: Callable[[], Iterable[tuple[str, int]]] | None = None,
                   folds: Callable[[], Iterable[tuple[int, int, int, int, int]]] | None = None,
                   sink: Callable[[], Iterable[tuple[str, float | None, bool]]] | None = None
                   ) -> None:
        """Register what ``owner`` reports at scrape time: ``lag`` (group, topic, partition,
        lag), ``assigned`` (group, partitions), ``folds`` (partition, customers, window
        partials, ids remembered, duplicates skipped), ``sink`` (name, last write time, store
        fault now)."""
        with self._lock:
            for table, source in ((self._lag, lag), (self._assigned, assigned),
                                  (self._folds, folds), (self._sinks, sink)):
                if source is not None:
                    table[id(owner)] = source

    def remove_source(self, owner: object) -> None:
        with self._lock:
            for table in (self._lag, self._assigned, self._folds, self._sinks):
                table.pop(id(owner), None)

    def _sources(self):
        with self._lock:
            return (list(self._lag.values()), list(self._assigned.values()),
                    list(self._folds.values()), list(self._sinks.values()))

    # -- recording ----------------------------------------------------------------------------
    def dead_letter(self, reason: str, consumer: str) -> None:
        self.dead_letters.labels(dead_letter_reason(reason), consumer).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SourceCollector:
    """The scrape-time gauges of ``Metrics`` (lag, assignments, fold state, sink freshness)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # computed at scrape time: nothing to check at registration

    def collect(self):
        lag_sources, assigned_sources, fold_sources, sink_sources = self.metrics._sources()
        lag = GaugeMetricFamily("cxledger_consumer_lag", "Messages between a consumer's "
                                "position and the end of the partition, for the partitions "
                                "assigned to this process", labels=["group", "topic",
                                                                    "partition"])
        seen: set[tuple[str, str, str]] = set()
        for source in lag_sources:
            for group, topic, partition, value in _safely(source):
                key = (group, topic, str(partition))
                if key not in seen:
                    seen.add(key)
                    lag.add_metric(list(key), max(0, value))
        yield lag
        assigned = GaugeMetricFamily("cxledger_consumer_assigned_partitions", "Partitions "
                                     "assigned to this process, by consumer group",
                                     labels=["group"])
        totals: dict[str, int] = {}
        for source in assigned_sources:
            for group, count in _safely(source):
                totals[group] = totals.get(group, 0) + count
        for group, count in sorted(totals.items()):
            assigned.add_metric([group], count)
        yield assigned
        customers = GaugeMetricFamily("cxledger_fold_customers", "Customers held in the "
                                      "processors' fold state, by ledger partition",
                                      labels=["partition"])
        partials = GaugeMetricFamily("cxledger_fold_window_partials", "Open satisfaction "
                                     "window partials in the fold state, by ledger partition",
                                     labels=["partition"])
        ids = GaugeMetricFamily("cxledger_fold_ids_remembered", "Event ids the processors hold "
                                "to skip an event folded before, by ledger partition",
                                labels=["partition"])
        duplicates = GaugeMetricFamily("cxledger_fold_duplicates", "Events skipped because "
                                       "their id was folded before, since this process took "
                                       "the ledger partition", labels=["partition"])
        for source in fold_sources:
            for partition, n_customers, n_partials, n_ids, n_duplicates in _safely(source):
                customers.add_metric([str(partition)], n_customers)
                partials.add_metric([str(partition)], n_partials)
                ids.add_metric([str(partition)], n_ids)
                duplicates.add_metric([str(partition)], n_duplicates)
        yield customers
        yield partials
        yield ids
        yield duplicates
        last = GaugeMetricFamily("cxledger_sink_last_write_timestamp_seconds", "When the sink "
                                 "last wrote a batch into ClickHouse (Unix time)",
                                 labels=["sink"])
        fault = GaugeMetricFamily("cxledger_sink_store_fault", "1 while the store refuses the "
                                  "batch the sink holds (it is retried)", labels=["sink"])
        for source in sink_sources:
            for name, last_write, failing in _safely(source):
                if last_write is not None:
                    last.add_metric([name], last_write)
                fault.add_metric([name], 1.0 if failing else 0.0)
        yield last
        yield fault


def _safely(source: Callable[[], Iterable]) -> list:
    """A source's values; none when it fails (a scrape must not fail because a consumer is
    closing)."""
    try:
        return list(source())
    except Exception:
        return []


_process_metrics: Metrics | None = None
_process_lock = threading.Lock()


def process_metrics() -> Metrics:
    """This process's metrics (created on first use)."""
    global _process_metrics
    with _process_lock:
        if _process_metrics is None:
            _process_metrics = Metrics()
        return _process_metrics
