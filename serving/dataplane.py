"""The server's data plane: models, scoring, repository control and metrics, with no HTTP in sight.

One `DataPlane` per app holds the server state (repository, batcher, metrics, prediction log,
limits). The route modules under `serving/routes/` translate HTTP to calls on it, as KServe's
`protocol/rest/v2_endpoints.py` does over its `protocol/dataplane.py`; so a second transport
(gRPC, a test harness) would call the same methods.

Errors raised: `RequestError` (a client error with its status), `ModelNotFound`, `QueueFull`,
`BatcherClosed` and other `DriftloopError`s; `serving.http.guarded` maps them to statuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from driftloop import __version__
from serving.batcher import MicroBatcher
from serving.config import ServeSettings
from serving.metrics import ServerMetrics
from serving.predlog import PredictionLog
from serving.repository import ModelRepository, ModelVersion
from serving.validation import Limits, RequestError

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["model_repository", "traffic"]


def observe_scores(metrics: ServerMetrics, mv: ModelVersion, scores: np.ndarray) -> None:
    """Add every score to the score histogram (bulk, not one `observe` per row)."""
    child = metrics.score.labels(mv.name, mv.version)
    values = scores.reshape(-1)
    if len(values) == 1:
        child.observe(float(values[0]))
        return
    try:  # prometheus-client keeps per-bucket (non-cumulative) counters; bulk-add them.
        bounds = np.asarray(child._upper_bounds)
        index = np.searchsorted(bounds, values.astype(np.float64), side="left")
        for i, count in enumerate(np.bincount(index, minlength=len(bounds))):
            if count:
                child._buckets[i].inc(int(count))
        child._sum.inc(float(values.sum(dtype=np.float64)))
    except AttributeError:  # pragma: no cover - a future prometheus-client
        for v in values:
            child.observe(float(v))


class DataPlane:
    """Everything a route handler needs, created once per app.

    Args:
        settings: the server's settings.
        repository: an existing registry (tests, the release plane); default one over
            `settings.repository`.
    """

    def __init__(self, settings: ServeSettings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        if repository is None:
            repository = ModelRepository(
                settings.repository,
                intra_op_threads=settings.intra_op_threads,
                warmup_rows=settings.warmup_rows,
                on_change=self._on_change,
            )
        else:
            repository._on_change = self._on_change
        self.repository = repository
        metrics = self.metrics
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_rows=settings.max_queue_rows,
            on_batch=lambda mv, rows: metrics.batch_rows.labels(mv.name, mv.version).observe(rows),
        )
        self.predlog = (
            PredictionLog(
                settings.log_dir,
                flush_interval_s=settings.flush_interval_s,
                max_rows_per_file=settings.max_rows_per_file,
            )
            if settings.log_dir is not None
            else None
        )
        self.limits = Limits(max_rows=settings.max_rows, max_string_length=settings.max_string_length)

    def _on_change(self) -> None:
        self.metrics.set_loaded({name: len(vs) for name, vs in self.repository.loaded().items()})

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the prediction log and the batcher; load the configured models (or all on disk)."""
        if self.predlog is not None:
            self.predlog.start()
        await self.batcher.start()
        if not self.repository.loaded():
            await asyncio.to_thread(self.repository.load_all, self.settings.models)
        self._on_change()
        log.info("serving %s", {n: [mv.version for mv in vs] for n, vs in self.repository.loaded().items()})

    async def stop(self) -> None:
        """Drain the queue and flush the prediction log."""
        await self.batcher.stop()
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.close)
        log.info("server stopped")

    # ------------------------------------------------------------------ health & metadata
    def ready(self) -> bool:
        """True when at least one model version is loaded and warmed up."""
        return self.repository.ready()

    def server_metadata(self) -> dict[str, Any]:
        """Server metadata: name, version, protocol extensions."""
        return {"name": "driftloop", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> tuple[ModelVersion, dict[str, Any]]:
        """The v2 model metadata of a loaded version (None = the one taking most traffic).

        Raises:
            ModelNotFound: not loaded.
        """
        mv = self.repository.get(name, version)
        sig = mv.signature
        return mv, {
            "name": mv.name,
            "versions": [v.version for v in self.repository.loaded().get(name, [])],
            "platform": PLATFORM,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in sig.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in sig.outputs],
            "model_version": mv.version,
            "lineage_id": mv.lineage_id,
            "parameters": {
                "nullable_inputs": [s.name for s in sig.inputs if s.nullable],
                "traffic_pct": self.repository.traffic(name),
            },
        }

    def model_ready(self, name: str, version: str | None = None) -> tuple[ModelVersion, dict[str, Any]]:
        """Readiness of a loaded version.

        Raises:
            ModelNotFound: not loaded.
        """
        mv = self.repository.get(name, version)
        return mv, {"name": mv.name, "version": mv.version, "ready": True}

    # ------------------------------------------------------------------ scoring
    def route(self, name: str, request_id: str, version: str | None = None) -> ModelVersion:
        """The version that answers this request (sticky per request id under a traffic split)."""
        return self.repository.route(name, request_id, version)

    async def score(
        self, mv: ModelVersion, feeds: dict[str, np.ndarray], rows: int, request_id: str, start: float
    ) -> np.ndarray:
        """Score validated feeds on `mv` through the batcher; record metrics and the prediction log.

        Args:
            mv: the routed version.
            feeds: one `[rows, 1]` array per input, dtypes per the signature.
            rows: the row count.
            request_id: logged with the rows.
            start: `time.perf_counter()` when the request arrived (for the logged latency).

        Returns:
            float32 `[rows, 1]` probabilities.
        """
        scores = await self.batcher.submit(mv, feeds, rows)
        observe_scores(self.metrics, mv, scores)
        if self.predlog is not None:
            self.predlog.append(
                model=mv.name,
                version=mv.version,
                request_id=request_id,
                feeds=feeds,
                scores=scores,
                latency_ms=(time.perf_counter() - start) * 1000.0,
            )
        return scores

    # ------------------------------------------------------------------ repository extension
    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model version on disk or loaded, with state (READY / UNAVAILABLE) and reason."""
        rows = self.repository.index()
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return rows

    async def load(self, name: str, version: str | None) -> tuple[ModelVersion, dict[str, Any]]:
        """Load (or hot-swap) a version off the event loop; None = the latest on disk."""
        mv = await asyncio.to_thread(self.repository.load, name, version)
        return mv, {
            "name": mv.name,
            "version": mv.version,
            "lineage_id": mv.lineage_id,
            "state": "READY",
            "traffic_pct": self.repository.traffic(name),
        }

    def unload(self, name: str, version: str | None) -> dict[str, Any]:
        """Unload one version, or every version of `name` when `version` is None."""
        return {"name": name, "unloaded": self.repository.unload(name, version)}

    def traffic(self, name: str) -> dict[str, Any]:
        """The effective traffic split of `name` in percent."""
        return {"name": name, "traffic_pct": self.repository.traffic(name)}

    def set_traffic(self, name: str, weights: dict[str, float] | None) -> dict[str, Any]:
        """Set the traffic split; None = the latest loaded version takes 100%.

        Raises:
            RequestError: 400 on weights that are negative, not finite, or all zero.
        """
        try:
            pct = self.repository.set_traffic(name, weights)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        return {"name": name, "traffic_pct": pct}

    # ------------------------------------------------------------------ metrics
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (gauges refreshed first) and its content type."""
        self.metrics.queue_rows.set(self.batcher.queued_rows)
        if self.predlog is not None:
            self.metrics.log_pending.set(self.predlog.pending_rows)
        return self.metrics.exposition()
