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
import gc
import logging
import math
import threading
import time
import weakref
from typing import Any

import numpy as np

from driftloop import __version__
from serving.batcher import MicroBatcher
from serving.config import ServeSettings
from serving.metrics import ServerMetrics
from serving.predlog import PredictionLog
from serving.repository import LoadRefused, ModelNotFound, ModelRepository, ModelVersion
from serving.stats import InferenceStats
from serving.validation import Limits, RequestError, records_feeds

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["model_repository", "traffic", "binary_tensor_data", "statistics", "model_configuration"]
TRAFFIC_SUM_TOLERANCE = 0.01  # percent; the release plane re-sends the server's own float percentages
# Triton's data_type names for the signature's datatypes (model_config.proto).
_TRITON_TYPE = {"BYTES": "TYPE_STRING", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64"}


def observe_scores(metrics: ServerMetrics, mv: ModelVersion, scores: np.ndarray) -> None:
    """Add every score to the score histogram (one bulk observation: `serving.metrics.BulkHistogram`)."""
    metrics.version_children(mv.name, mv.version)[4].observe_many(scores)


def _no_trace() -> None:
    """Tracing off: no request is sampled."""
    return None


def _request_trace():
    """`serving.tracing.current` (imported only when tracing is on)."""
    from serving.tracing import current

    return current


class DataPlane:
    """Everything a route handler needs, created once per app.

    Args:
        settings: the server's settings.
        repository: an existing registry (tests, the release plane); default one over
            `settings.repository`.
    """

    def __init__(
        self, settings: ServeSettings, repository: ModelRepository | None = None, span_exporter: Any = None
    ) -> None:
        self.settings = settings
        self.tracing = None
        if settings.tracing or span_exporter is not None:  # off by default: serving/tracing.py
            from serving.tracing import Tracing

            self.tracing = Tracing(span_exporter)
        self.tracer = None if self.tracing is None else self.tracing.tracer
        self._trace = _no_trace if self.tracing is None else _request_trace()
        self.metrics = ServerMetrics(settings.metrics_textfile_dir)
        self.metrics.queue_capacity.set(settings.max_queue_rows)
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
        self.stats = InferenceStats()
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_rows=settings.max_queue_rows,
            on_batch=self._on_batch,
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
        self._cpu_start = time.process_time()
        self._explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ModelVersion -> Explainer
        self._explain_lock = threading.Lock()

    def _on_batch(self, mv: ModelVersion, rows: int, run_s: float, cpu_s: float) -> None:
        self.metrics.record_batch(mv.name, mv.version, rows, run_s, cpu_s)
        self.stats.batch(mv.name, mv.version, rows, run_s)

    def redact(self, message: str) -> str:
        """`message` with the repository's absolute path cut, so errors name `model/version` only."""
        root = str(self.repository.root.resolve())
        for prefix in {root, str(self.repository.root)}:
            message = message.replace(prefix + "/", "").replace(prefix, "<repository>")
        return message

    def _on_change(self) -> None:
        loaded = self.repository.loaded()
        traffic = {}
        for name in loaded:
            try:
                traffic[name] = self.repository.traffic(name)
            except ModelNotFound:  # unloaded meanwhile; the next change sets it
                continue
        self.metrics.set_loaded({name: len(vs) for name, vs in loaded.items()}, traffic)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the prediction log and the batcher; load the configured models (or all on disk)."""
        if self.predlog is not None:
            self.predlog.start()
        await self.batcher.start()
        if not self.repository.loaded():
            await asyncio.to_thread(self.repository.load_all, self.settings.models)
        self._on_change()
        # Everything allocated so far (libraries, sessions) lives as long as the server: move it out
        # of the collector's generations, so a full collection no longer walks it on a request's time.
        gc.collect()
        gc.freeze()
        self._cpu_start = time.process_time()  # cost: CPU from here on is serving (loading and warm-up are not)
        log.info("serving %s", {n: [mv.version for mv in vs] for n, vs in self.repository.loaded().items()})

    async def stop(self) -> None:
        """Drain the queue and flush the prediction log."""
        gc.unfreeze()
        await self.batcher.stop()
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.provider.shutdown)  # flushes the batch exporter
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

    def model_config(self, name: str, version: str | None = None) -> tuple[ModelVersion, dict[str, Any]]:
        """Triton's model configuration (JSON form of `config.pbtxt`) of a loaded model.

        Inputs and outputs are per row: with `max_batch_size` > 0 Triton leaves the batch
        dimension out of `dims`, so `[n, 1]` tensors are `dims: [1]`. The version policy lists the
        loaded versions (integer folder names, as Triton's repository has them).

        Raises:
            ModelNotFound: not loaded.
        """
        mv = self.repository.get(name, version)
        sig = mv.signature
        loaded = [v.version for v in self.repository.loaded().get(name, [])]
        numeric = [int(v) for v in loaded if v.isdigit()]
        return mv, {
            "name": mv.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": self.settings.max_rows,
            "version_policy": {"specific": {"versions": numeric}} if numeric else {"latest": {"num_versions": 1}},
            "input": [
                {
                    "name": s.name,
                    "data_type": _TRITON_TYPE[s.datatype],
                    "dims": [1],
                    **({"optional": True} if s.nullable else {}),
                }
                for s in sig.inputs
            ],
            "output": [{"name": s.name, "data_type": _TRITON_TYPE[s.datatype], "dims": [1]} for s in sig.outputs],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(self.settings.max_queue_delay_ms * 1000),
                "preferred_batch_size": [self.settings.max_batch_size],
            },
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            "parameters": {"lineage_id": {"string_value": mv.lineage_id}},
        }

    def model_statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics body for one model (every loaded version, or `version`), or all.

        Raises:
            ModelNotFound: `name` (or `version`) is not loaded.
        """
        loaded = self.repository.loaded()
        if name is None:
            bodies = [self.stats.model_stats(n, [mv.version for mv in vs]) for n, vs in loaded.items()]
            return {"model_stats": [s for b in bodies for s in b["model_stats"]]}
        mv = self.repository.get(name, version)
        versions = [version] if version is not None else [v.version for v in loaded.get(name, [])]
        return self.stats.model_stats(mv.name, versions)

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
        rt = self._trace()  # a sampled request's span data (serving/tracing.py), else None
        if rt is None:
            return self.repository.route(name, request_id, version)
        rt.parsed = time.perf_counter()  # routed right after decoding: parse ends here
        rt.request_id = request_id
        rt.version = mv = self.repository.route(name, request_id, version)  # its span's attributes
        return mv

    async def score(
        self, mv: ModelVersion, feeds: dict[str, np.ndarray], rows: int, request_id: str, start: float
    ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Score validated feeds on `mv` through the batcher; record metrics and the prediction log.

        Args:
            mv: the routed version.
            feeds: one `[rows, 1]` array per input, dtypes per the signature.
            rows: the row count.
            request_id: logged with the rows.
            start: `time.perf_counter()` when the request arrived (for the logged latency).

        Returns:
            (float32 `[rows, 1]` probabilities, (compute_input, queue, compute_infer) seconds for
            `scored`).
        """
        queued = time.perf_counter()
        timing: dict[str, float] = {}
        try:
            scores = await self.batcher.submit(mv, feeds, rows, timing)
        except Exception:
            self.stats.fail(mv.name, mv.version, time.perf_counter() - start)
            raise
        observe_scores(self.metrics, mv, scores)
        rt = self._trace()  # a sampled request's span data, else None
        log_start = log_end = None
        if self.predlog is not None:
            log_start = time.perf_counter()
            self.predlog.append(
                model=mv.name,
                version=mv.version,
                request_id=request_id,
                feeds=feeds,
                scores=scores,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                service_ms=timing.get("run_s", float("nan")) * 1000.0,
            )
            log_end = time.perf_counter() if rt is not None else None
        if rt is not None:
            rt.phases = (queued, timing.get("queue_s", 0.0), timing.get("run_s", 0.0), log_start, log_end)
            rt.rows = rows
        return scores, (queued - start, timing.get("queue_s", 0.0), timing.get("run_s", 0.0))

    def scored(self, mv: ModelVersion, rows: int, start: float, encoded: float, timing: tuple[float, float, float]) -> None:
        """Record a request's phases in the statistics once its response is encoded.

        Args:
            mv: the version that answered.
            rows: rows scored.
            start: `perf_counter()` at arrival; `encoded`: after the response was encoded.
            timing: (compute_input, queue, compute_infer) seconds, as `score` returned them.
        """
        end = time.perf_counter()
        self.stats.request(mv.name, mv.version, rows, end - start, *timing, end - encoded)

    def failed(self, mv: ModelVersion, start: float) -> None:
        """Record a request that reached `mv` and then failed (bad input, queue full)."""
        self.stats.fail(mv.name, mv.version, time.perf_counter() - start)

    async def explain(
        self, name: str, request_id: str, instances: list[dict[str, Any]], raw: bytes
    ) -> tuple[ModelVersion, dict[str, Any]]:
        """Per-row SHAP attributions of the version that would answer `request_id` (serving/explain.py).

        Not a prediction: nothing is queued, logged or counted as scored.

        Raises:
            RequestError: 400 (does not fit the signature), 422 (more than `EXPLAIN_MAX_ROWS` rows: the
                request model's limit),
                501 (SHAP not installed).
            ModelNotFound: not loaded.
        """
        from serving.explain import EXPLAIN_MAX_ROWS, ExplainUnavailable

        mv = self.route(name, request_id)
        feeds, rows = records_feeds(instances, mv.signature, self.limits, body=raw)
        if rows > EXPLAIN_MAX_ROWS:
            raise RequestError(422, f"instances: {rows} rows; an explanation takes at most {EXPLAIN_MAX_ROWS}")
        try:
            explainer = await asyncio.to_thread(self._explainer, mv)
        except ExplainUnavailable as exc:
            raise RequestError(501, str(exc)) from None
        explanations = await asyncio.to_thread(explainer.explain, feeds)
        return mv, {"explanations": explanations, "method": "kernel_shap", "nsamples": explainer.nsamples,
                    "background_rows": len(explainer.background)}  # fmt: skip

    def _explainer(self, mv: ModelVersion):
        """The version's `Explainer`, built once (on a worker thread: SHAP imports in seconds)."""
        import pandas as pd

        from serving.explain import Explainer

        with self._explain_lock:
            explainer = self._explainers.get(mv)
            if explainer is None:
                reference = pd.read_parquet(mv.folder / "reference.parquet")
                explainer = self._explainers[mv] = Explainer(mv.run, mv.signature, reference)
            return explainer

    # ------------------------------------------------------------------ repository extension
    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model version on disk or loaded, with state (READY / UNAVAILABLE) and reason."""
        rows = self.repository.index()
        for row in rows:
            if row.get("reason"):
                row["reason"] = self.redact(row["reason"])
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return rows

    async def load(self, name: str, version: str | None) -> tuple[ModelVersion, dict[str, Any]]:
        """Load (or hot-swap) a version off the event loop; None = the latest on disk.

        Raises:
            LoadRefused: with the repository path cut from the message (it names model/version).
        """
        def timed_load() -> ModelVersion:  # loading and warm-up are not serving: kept out of the cost
            c0 = time.thread_time()
            try:
                return self.repository.load(name, version)
            finally:
                self._cpu_start += time.thread_time() - c0

        try:
            mv = await asyncio.to_thread(timed_load)
        except LoadRefused as exc:
            raise type(exc)(self.redact(str(exc))) from None  # PackageMissing (404) stays itself
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
        """Set the traffic split in percent; None = the latest loaded version takes 100%.

        Args:
            name: a loaded model.
            weights: {version: percent}, each finite and >= 0, summing to 100 (within
                `TRAFFIC_SUM_TOLERANCE`); versions left out get 0. `{"1": 50}` is refused rather
                than read as 100%.

        Raises:
            RequestError: 400 on a percentage that is negative or not finite, or a sum other than 100.
            ModelNotFound: the model, or a version named, is not loaded.
        """
        if weights is not None:
            bad = sorted(v for v, w in weights.items() if not math.isfinite(w) or w < 0)
            if bad:
                raise RequestError(
                    400, f"weights: version(s) {', '.join(bad)} of model {name!r}: a percentage must be finite and >= 0"
                )
            total = sum(weights.values())  # inf for {"1": 1e308, "2": 1e308}: refused below
            if not abs(total - 100.0) <= TRAFFIC_SUM_TOLERANCE:
                raise RequestError(
                    400,
                    f"weights: the percentages for model {name!r} sum to {total:g}; they must sum to 100 "
                    '(e.g. {"1": 90, "2": 10}; a version left out gets 0)',
                )
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
        self.metrics.set_cost(time.process_time() - self._cpu_start)
        return self.metrics.exposition()
