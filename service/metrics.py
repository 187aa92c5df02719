"""Every Prometheus metric of the service, declared once, with its buckets.

Conventions: base units (``_seconds``), ``_total`` counters, low-cardinality labels only (a stage,
a status code, a provider: never a user or an item). Each app owns a ``Metrics`` with its own
registry, so that several apps in one process (the tests) never share counts.

Feature-store counters (round trips, item-cache hits and misses) are read from the store's own
counters at scrape time by a collector instead of being mirrored on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.features import StoreStats

#: Latency buckets in seconds: sub-millisecond resolution where a warm request lives, up to the
#: seconds where only failures do.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: Batch sizes in candidates and in requests.
CANDIDATE_BUCKETS = (1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
STAGES = ("redis", "queue", "model", "total")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The service's metrics in one registry; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        # No ``*_created`` series (one per counter and histogram child, the time it was made):
        # nothing here reads them and they double the counters' lines. A process-wide switch of
        # prometheus_client, set before any metric of the service is made.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qin_requests", "Scoring requests answered, by HTTP status.", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "qin_request_duration_seconds",
            "Time to answer a /score request, from arrival to the response, any status.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "qin_stage_duration_seconds",
            "Time a scored request spent per stage: redis (features), queue (waiting for the "
            "model), model (its batch's inference), total.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # labelled children looked up once: they are observed on every request
        self.stages = {stage: self.stage_seconds.labels(stage=stage) for stage in STAGES}
        self.batch_candidates = Histogram(
            "qin_batch_candidates",
            "Candidates per model batch (before padding).",
            buckets=CANDIDATE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "qin_batch_requests", "Requests per model batch.", buckets=REQUEST_BUCKETS, registry=r
        )
        self.batch_failures = Counter(
            "qin_batch_failures",
            "Model batches that failed (each request in one answered 500).",
            registry=r,
        )
        self.candidates = Counter(
            "qin_candidates_scored", "Candidates scored by the model.", registry=r
        )
        self.queue_requests = Gauge(
            "qin_queue_depth", "Requests waiting for the model.", registry=r
        )
        self.queue_candidates = Gauge(
            "qin_queue_candidates", "Candidates waiting for the model.", registry=r
        )
        self.in_flight = Gauge(
            "qin_in_flight", "/score requests between arrival and answer.", registry=r
        )
        self.in_flight_limit = Gauge(
            "qin_in_flight_limit",
            "/score requests allowed in flight: MAX_IN_FLIGHT, or the adaptive limit when "
            "ADMISSION_LATENCY_MS is set.",
            registry=r,
        )
        self.shed = Counter(
            "qin_shed_requests",
            "Requests refused with 429: the queue was full or too many were in flight.",
            registry=r,
        )
        self.deadline_exceeded = Counter(
            "qin_deadline_exceeded",
            "Requests that passed their deadline before being scored (504), by stage.",
            ["stage"],
            registry=r,
        )
        self.feature_errors = Counter(
            "qin_feature_store_errors",
            "Feature-store failures while serving, by kind.",
            ["kind"],
            registry=r,
        )
        self.degraded = Counter(
            "qin_degraded_requests",
            "Requests scored without Redis (DEGRADED_MODE=empty_history): empty history, cached "
            "item features.",
            registry=r,
        )
        self.model_info = Gauge(
            "qin_model_info",
            "The model being served (value 1): its version, graph and execution provider.",
            ["version", "graph", "provider"],
            registry=r,
        )
        self.reloads = Counter(
            "qin_model_reloads",
            "Model hot reloads, by outcome: swapped, or refused (the old model kept serving).",
            ["outcome"],
            registry=r,
        )
        self.ready = Gauge("qin_ready", "1 when /readyz answers 200, else 0.", registry=r)

    def observe_store(self, stats: Callable[[], StoreStats | None]) -> None:
        """Export the feature store's counters, read when scraped."""
        self.registry.register(_StoreCollector(stats))

    def set_model(self, version: str, graph: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, graph=graph, provider=provider).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    def __init__(self, stats: Callable[[], StoreStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        counters = {
            "qin_redis_round_trips": ("Network round trips to Redis.", stats.round_trips),
            "qin_item_cache_hits": ("Item features served from the cache.", stats.item_cache_hits),
            "qin_item_cache_misses": ("Item features read from Redis.", stats.item_cache_misses),
            "qin_feature_version_changes": (
                "Live feature versions seen change (item cache dropped).",
                stats.version_changes,
            ),
            "qin_unknown_users": ("Requests of users with no stored history.", stats.unknown_users),
            "qin_unknown_items": ("Items scored or read as unseen (padding).", stats.unknown_items),
            "qin_history_appends": ("Online history appends.", stats.appends),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "qin_item_cache_items", "Items held in the item cache.", value=stats.cached_items
        )
