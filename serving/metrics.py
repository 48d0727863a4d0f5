"""Prometheus metrics of one server, on a per-app `CollectorRegistry` (tests create several apps).

Names (all prefixed `driftloop_`):
    requests_total{endpoint, status}              counter   endpoint = the route template
    request_latency_seconds{endpoint}             histogram seconds, whole request in the app
    batch_rows{model, version}                    histogram rows per session.run
    queue_rows                                    gauge     rows waiting for the batcher
    loaded_versions{model}                        gauge     versions loaded per model
    score{model, version}                         histogram predicted probabilities (a batch per observation: `BulkHistogram`)
    prediction_log_rows_pending                   gauge     rows buffered, not yet on disk
    queue_capacity_rows                           gauge     `max_queue_rows`: the queue's bound (429 past it)
    traffic_percent{model, version}               gauge     effective traffic split, percent (0 = loaded, no traffic)
    inference_seconds{model, version}             histogram seconds inside session.run per batch (service time)
    predictions_total{model, version}             counter   rows scored
    inference_cpu_seconds_total{model, version}   counter   CPU seconds of the inference thread inside session.run
    cpu_seconds_per_1k_predictions{model, version, part}
                                                  gauge     CPU seconds per 1,000 predictions since start (below)
    process_cpu_seconds_total, process_*          the standard process collector (Linux /proc)

Cost (`cpu_seconds_per_1k_predictions`): `part="inference"` is 1000 x the version's inference CPU /
its predictions, where inference CPU is `time.thread_time()` around `session.run` on the inference
thread: the version's own cost, exact with `intra_op_threads` 1 (the default; ONNX Runtime then
computes on the calling thread). `part="total"` adds an equal share per prediction of everything
else the process spent since it started serving (process CPU - all inference CPU: HTTP, parsing,
validation, encoding, the prediction log; and ONNX Runtime's pool threads when `intra_op_threads`
is not 1), so the totals of all versions add up to the process's CPU. Parsing and encoding cost the
same per row whichever version answers, hence shared rather than timed per request (a request's
coroutine interleaves with others on the event loop, so its own CPU cannot be read off a clock).
Over a window: `1000 * rate(driftloop_inference_cpu_seconds_total[5m]) / rate(driftloop_predictions_total[5m])`.

Plus, when the server is given `metrics_textfile_dir`, every `*.prom` file there (Prometheus text
format, node_exporter's textfile-collector convention) is re-exposed at each scrape: that is how the
drift check's gauges (`flows/monitoring.py`: `driftloop_drift_share`, `driftloop_roc_auc_drop_bound`,
...) reach Prometheus without a Pushgateway. The alert rules reading all of these are in
`deploy/prometheus/alerts.yml`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))
TEXTFILE_MAX_BYTES = 1 << 20
"""A `*.prom` file larger than this is skipped (a scrape must stay cheap), bytes."""


class TextfileCollector:
    """Re-expose the metrics of every `*.prom` file of a folder at each scrape.

    The format and the folder convention are node_exporter's textfile collector: writers replace
    their file atomically (write a temp file, then rename; `prometheus_client.write_to_textfile`
    does), so a scrape never sees half a file. A file that is missing, too large or does not parse
    is skipped with one WARNING; the scrape goes on. Files are read in name order.

    Args:
        folder: the folder; it may not exist yet (nothing is exposed then).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def describe(self) -> list[Metric]:
        """Nothing: the files change between scrapes, so the registry must not pin their names."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families of every readable `*.prom` file."""
        try:
            files = sorted(self.folder.glob("*.prom"))
        except OSError:
            return
        for path in files:
            try:
                if path.stat().st_size > TEXTFILE_MAX_BYTES:
                    raise ValueError(f"larger than {TEXTFILE_MAX_BYTES} bytes")
                families = list(text_string_to_metric_families(path.read_text()))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                log.warning("metrics textfile %s skipped: %s", path, exc)
                continue
            yield from families


class _BulkChild:
    """One label set of a `BulkHistogram`: counts per bucket (numpy) and the sum, behind one lock."""

    __slots__ = ("_bounds", "_bounds32", "_bound_list", "_counts", "_sum", "_created", "_lock")

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        # Each bound's float32 floor (the largest float32 not above it): for a float32 value,
        # `value <= bound` exactly when `value <= floor`, so float32 scores need no float64 copy.
        below = bounds.astype(np.float32)
        self._bounds32 = np.where(below > bounds, np.nextafter(below, np.float32(-np.inf)), below)
        self._bound_list = bounds.tolist()
        self._counts = np.zeros(len(bounds) + 1, dtype=np.float64)  # per bucket, not cumulative; then NaN
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Observe one value (`prometheus_client.Histogram.observe`: the first bucket with `value <= le`).

        NaN (no bucket: it compares False with every bound, +Inf included) adds to the sum only.
        """
        value = float(value)
        i = bisect_left(self._bound_list, value) if value == value else len(self._bound_list)
        with self._lock:
            if i < len(self._bound_list):
                self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of an array, as `observe` once per value would.

        The bucket index of every value at once, compared in float64 as `observe` compares Python
        floats (`searchsorted(side="left")` is `bisect_left`), NaN past the last bucket.
        """
        values = np.asarray(values).reshape(-1)
        if len(values) == 1:  # a single row: cheaper without the array steps
            self.observe(values.item())
            return
        if values.dtype == np.float32:  # no float64 copy: a float32 is <= a bound iff <= its float32 floor
            index = np.searchsorted(self._bounds32, values, side="left")
            total = float(values.sum(dtype=np.float64))
        else:
            wide = values.astype(np.float64, copy=False)
            index = np.searchsorted(self._bounds, wide, side="left")
            total = float(wide.sum())
        counts = np.bincount(index, minlength=len(self._bounds) + 1)
        with self._lock:
            self._counts += counts  # one slot past the last bucket: NaN's (never exposed)
            self._sum += total

    def samples(self) -> tuple[list[float], float, float]:
        """(cumulative count per bucket, sum, creation time), read under the lock."""
        with self._lock:
            return np.cumsum(self._counts[:-1]).tolist(), self._sum, self._created


class BulkHistogram:
    """A labelled Prometheus histogram that also takes a whole array in one call (`observe_many`).

    prometheus-client (0.26) has no bulk observe: a `Histogram` child takes `observe(value)` per
    value (a lock and a counter update each: 1,000 of them for one 1,000-row request), and its
    per-bucket counters are private. This keeps each label set's counts in numpy (bucket indices
    by `np.searchsorted`, counts by `np.bincount`: a few array operations and one lock per call)
    and exposes them through the library's documented custom-collector API
    (`HistogramMetricFamily`), with the samples a `Histogram` of the same name, labels and buckets
    exposes (`_bucket{le}` cumulative, `_count`, `_sum`, `_created`).

    Args:
        name, documentation, labelnames, buckets: as `prometheus_client.Histogram` (+Inf is added).
        registry: registered there.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._le = [floatToGoString(b) for b in bounds]
        self._children: dict[tuple[str, ...], _BulkChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _BulkChild:
        """The child of these label values (created on first use, as `Histogram.labels`)."""
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(key)}")
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, _BulkChild(self._bounds))
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            cumulative, total, created = child.samples()
            family.add_metric(list(key), list(zip(self._le, cumulative, strict=True)), total)
            family.samples.append(Sample(self.name + "_created", dict(zip(self.labelnames, key, strict=True)), created))
        yield family


class ServerMetrics:
    """The server's collectors, registered on a fresh registry."""

    def __init__(self, textfile_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "driftloop_requests_total", "HTTP requests", ["endpoint", "status"], registry=r
        )
        # The histograms observed on every request or batch are `BulkHistogram`s: the same samples as
        # prometheus-client's `Histogram`, one lock and a bisection per observation instead of two
        # locks and a Python loop over the buckets.
        self.latency = BulkHistogram(
            "driftloop_request_latency_seconds", "request latency", ["endpoint"], LATENCY_BUCKETS, r
        )
        self.batch_rows = BulkHistogram(
            "driftloop_batch_rows", "rows per session.run", ["model", "version"], BATCH_BUCKETS, r
        )
        self.queue_rows = Gauge("driftloop_queue_rows", "rows waiting for the batcher", registry=r)
        self.loaded_versions = Gauge("driftloop_loaded_versions", "loaded versions", ["model"], registry=r)
        self.score = BulkHistogram(  # observed a whole batch at a time (`observe_many`)
            "driftloop_score", "predicted probability", ["model", "version"], SCORE_BUCKETS, r
        )
        self.log_pending = Gauge("driftloop_prediction_log_rows_pending", "rows not yet on disk", registry=r)
        self.queue_capacity = Gauge(
            "driftloop_queue_capacity_rows", "rows the queue holds before 429 (max_queue_rows)", registry=r
        )
        self.traffic = Gauge(
            "driftloop_traffic_percent", "effective traffic split, percent", ["model", "version"], registry=r
        )
        self.inference = BulkHistogram(
            "driftloop_inference_seconds", "seconds inside session.run per batch", ["model", "version"], LATENCY_BUCKETS, r
        )
        self.predictions = Counter(
            "driftloop_predictions", "rows scored", ["model", "version"], registry=r
        )
        self.inference_cpu = Counter(
            "driftloop_inference_cpu_seconds",
            "CPU seconds of the inference thread inside session.run",
            ["model", "version"],
            registry=r,
        )
        self.cost = Gauge(
            "driftloop_cpu_seconds_per_1k_predictions",
            "CPU seconds per 1,000 predictions since start; part=inference (own session.run) or total",
            ["model", "version", "part"],
            registry=r,
        )
        ProcessCollector(registry=r)
        self._totals: dict[tuple[str, str], list[float]] = {}  # (model, version) -> [rows, inference CPU s]
        if textfile_dir is not None:
            r.register(TextfileCollector(textfile_dir))
        self._known_models: set[str] = set()
        self._known_versions: set[tuple[str, str]] = set()
        self._children: dict[tuple[str, str], tuple] = {}
        self._request_children: dict[tuple[str, int], tuple] = {}

    def set_loaded(self, loaded: dict[str, int], traffic: dict[str, dict[str, float]] | None = None) -> None:
        """Set `loaded_versions` from {model: count} and `traffic_percent` from {model: {version: pct}}.

        Models gone drop to 0 loaded versions; versions gone (or taking no traffic) drop to 0 percent.
        """
        for name in self._known_models - set(loaded):
            self.loaded_versions.labels(name).set(0)
        for name, count in loaded.items():
            self.loaded_versions.labels(name).set(count)
        self._known_models |= set(loaded)
        now = {(m, v): pct for m, split in (traffic or {}).items() for v, pct in split.items()}
        for key in self._known_versions - set(now):
            self.traffic.labels(*key).set(0)
        for key, pct in now.items():
            self.traffic.labels(*key).set(pct)
        self._known_versions |= set(now)

    def version_children(self, model: str, version: str) -> tuple:
        """(batch_rows, inference, predictions, inference_cpu, score) children of one version.

        Looked up once per version: `labels()` takes a lock and hashes the label values each call.
        """
        children = self._children.get((model, version))
        if children is None:
            children = self._children[(model, version)] = tuple(
                m.labels(model, version)
                for m in (self.batch_rows, self.inference, self.predictions, self.inference_cpu, self.score)
            )
        return children

    def request_children(self, endpoint: str, status: int) -> tuple:
        """(requests_total, request_latency_seconds) children of one endpoint and status, looked up once."""
        children = self._request_children.get((endpoint, status))
        if children is None:
            children = self._request_children[(endpoint, status)] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        return children

    def record_batch(self, model: str, version: str, rows: int, run_s: float, cpu_s: float) -> None:
        """One batch of `rows` rows: `run_s` wall seconds and `cpu_s` inference-thread CPU seconds in session.run."""
        batch_rows, inference, predictions, inference_cpu, _ = self.version_children(model, version)
        batch_rows.observe(rows)
        inference.observe(run_s)
        predictions.inc(rows)
        inference_cpu.inc(cpu_s)
        totals = self._totals.setdefault((model, version), [0.0, 0.0])
        totals[0] += rows
        totals[1] += cpu_s

    def set_cost(self, process_cpu_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        """Refresh `cpu_seconds_per_1k_predictions` (see the module docstring).

        Args:
            process_cpu_s: the process's CPU seconds since it started serving (`time.process_time()` delta).

        Returns:
            {(model, version): (inference, total) CPU seconds per 1,000 predictions}, versions with predictions.
        """
        rows = sum(t[0] for t in self._totals.values())
        if not rows:
            return {}
        shared = max(0.0, process_cpu_s - sum(t[1] for t in self._totals.values())) / rows
        out = {}
        for (model, version), (n, cpu) in self._totals.items():
            if n:
                own = 1000.0 * cpu / n
                out[(model, version)] = (own, own + 1000.0 * shared)
                self.cost.labels(model, version, "inference").set(own)
                self.cost.labels(model, version, "total").set(own + 1000.0 * shared)
        return out

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
