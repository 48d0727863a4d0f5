"""Prometheus metrics of one server, on a per-app `CollectorRegistry` (tests create several apps).

Names (all prefixed `driftloop_`):
    requests_total{endpoint, status}              counter   endpoint = the route template
    request_latency_seconds{endpoint}             histogram seconds, whole request in the app
    batch_rows{model, version}                    histogram rows per session.run
    queue_rows                                    gauge     rows waiting for the batcher
    loaded_versions{model}                        gauge     versions loaded per model
    score{model, version}                         histogram predicted probabilities
    prediction_log_rows_pending                   gauge     rows buffered, not yet on disk
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))


class ServerMetrics:
    """The server's collectors, registered on a fresh registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "driftloop_requests_total", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "driftloop_request_latency_seconds",
            "request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "driftloop_batch_rows",
            "rows per session.run",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge("driftloop_queue_rows", "rows waiting for the batcher", registry=r)
        self.loaded_versions = Gauge("driftloop_loaded_versions", "loaded versions", ["model"], registry=r)
        self.score = Histogram(
            "driftloop_score",
            "predicted probability",
            ["model", "version"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.log_pending = Gauge("driftloop_prediction_log_rows_pending", "rows not yet on disk", registry=r)
        self._known_models: set[str] = set()

    def set_loaded(self, loaded: dict[str, int]) -> None:
        """Set `loaded_versions` from {model: count}; models gone drop to 0."""
        for name in self._known_models - set(loaded):
            self.loaded_versions.labels(name).set(0)
        for name, count in loaded.items():
            self.loaded_versions.labels(name).set(count)
        self._known_models |= set(loaded)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
