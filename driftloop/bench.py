"""On-machine speed of an ONNX graph: single-row latency and large-batch throughput, one thread.

Used by the `gate` stage (per-candidate figures for its latency and cost rules) and by `bench/` (ratios).
Wall-clock figures are noisy on shared machines: compare candidates measured in one run only.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def make_session(model: bytes | str, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (inter-op 1)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def take_rows(feeds: dict[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    """Rows `[start, start + count)` of every feed (wrapping around the end)."""
    n = len(next(iter(feeds.values())))
    idx = (np.arange(count) + start) % n
    return {k: v[idx] for k, v in feeds.items()}


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
"""Latency clocks: wall time, or the calling thread's CPU time. With one intra-op thread ONNX
Runtime computes on the calling thread (no pool), so the thread's CPU time is the call's work;
unlike wall time it does not count the time the thread waited for a core on a loaded machine."""


def measure(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, latency_runs: int, batch: int, batch_runs: int,
    clock: str = "wall",
) -> dict[str, float]:  # fmt: skip
    """Time single-row calls and full-batch calls.

    Args:
        clock: the single-row calls' clock, a key of `CLOCKS` ("cpu" needs a one-thread session).

    Returns:
        `p50_ms`, `p99_ms` (batch 1, over `latency_runs` distinct rows, after 20 warm-up calls, on
        `clock`) and `rows_per_s` (batch `batch`, wall time, best of `batch_runs` calls: the best
        run is the least disturbed).
    """
    timer = CLOCKS[clock]
    rows = [take_rows(feeds, i, 1) for i in range(latency_runs)]
    for r in rows[:20]:
        session.run(None, r)
    times = np.empty(latency_runs)
    for i, r in enumerate(rows):
        t0 = timer()
        session.run(None, r)
        times[i] = timer() - t0
    big = take_rows(feeds, 0, batch)
    session.run(None, big)
    best = min(_timed(session, big) for _ in range(batch_runs))
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "rows_per_s": float(batch / best),
    }


def _timed(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - t0
