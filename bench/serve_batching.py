"""Benchmark: micro-batching on vs off at concurrency 64, on a model whose inference matters.

The model is a wider MLP built with onnx.helper (16 -> WIDTH -> WIDTH -> 1, ReLU), served by this
server twice in a row: batching off (max_batch_size 1: one session.run per request) and on
(max_batch_size 64, max queue delay 0 and 2 ms). Also reports the share of a single request's cost
that inference takes (session.run at batch 1 / request latency at concurrency 1, batching off).

Run: .venv/bin/python bench/serve_batching.py [--seconds 3] [--width 2048]
Writes bench/results/serve_batching.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from serve_common import MODEL, figure, free_port, print_table, scratch_dir, server_args, write_results  # noqa: E402

from serving.loadgen import run_load, start_process, stop_process  # noqa: E402
from serving.testing import build_test_package, records_payload, synthetic_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, default=64)
    opts = parser.parse_args()
    repo = scratch_dir("serve_batching_") / "repo"
    build_test_package(repo / MODEL / "1", model_name=MODEL, mlp_width=opts.width)
    body = orjson.dumps(records_payload(synthetic_rows(1, seed=1)))

    import onnxruntime as ort

    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / MODEL / "1" / "model.onnx"), options)
    feeds = feeds_for(synthetic_rows(1, seed=1), TEST_INPUTS)
    for _ in range(20):
        session.run(None, feeds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        session.run(None, feeds)
        n += 1
    infer_ms = (time.perf_counter() - start) / n * 1000

    configs = {
        "off (max_batch_size=1)": {"max_batch_size": 1, "max_queue_delay_ms": 0},
        "on (64 rows, delay 0 ms)": {"max_batch_size": 64, "max_queue_delay_ms": 0},
        "on (64 rows, delay 2 ms)": {"max_batch_size": 64, "max_queue_delay_ms": 2},
    }
    points, results = [], {}
    for label, cfg in configs.items():
        port = free_port()
        proc = start_process(
            server_args("driftloop", repo, port, **cfg), f"http://127.0.0.1:{port}/v2/health/ready"
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
            concs = (1, opts.concurrency) if label.startswith("off") else (opts.concurrency,)
            for conc in concs:
                res = run_load(url, body, concurrency=conc, seconds=opts.seconds)
                results[(label, conc)] = res
                points.append(
                    {
                        "batching": label,
                        "conc": conc,
                        "req/s": res.rps,
                        "p50 ms": res.percentile(50),
                        "p99 ms": res.percentile(99),
                        "errors": res.errors,
                    }
                )
        finally:
            stop_process(proc)
    off1 = results[("off (max_batch_size=1)", 1)]
    share = infer_ms / off1.percentile(50)
    print_table(
        f"serve_batching (MLP 16-{opts.width}-{opts.width}-1; session.run batch 1 = {infer_ms:.3f} ms = {share:.0%} of a request at c1)",
        points,
        ["batching", "conc", "req/s", "p50 ms", "p99 ms", "errors"],
    )
    off = results[("off (max_batch_size=1)", opts.concurrency)]
    on = results[("on (64 rows, delay 0 ms)", opts.concurrency)]
    on2 = results[("on (64 rows, delay 2 ms)", opts.concurrency)]
    figures = [
        figure("inference_share_of_request_c1", share, "fraction", None, None, None),
        figure(f"req_per_s_c{opts.concurrency}_batching_on", on.rps, "req/s", "batching off", off.rps, 2.0),
        figure(
            f"p99_ms_c{opts.concurrency}_batching_on",
            on.percentile(99),
            "ms",
            "batching off",
            off.percentile(99),
            1.0,
            higher_is_better=False,
        ),
        figure(
            f"req_per_s_c{opts.concurrency}_batching_on_delay2ms",
            on2.rps,
            "req/s",
            "batching off",
            off.rps,
            2.0,
        ),
        figure(
            f"p99_ms_c{opts.concurrency}_batching_on_delay2ms",
            on2.percentile(99),
            "ms",
            "batching off",
            off.percentile(99),
            1.0,
            higher_is_better=False,
        ),
    ]
    path = write_results(
        "serve_batching",
        figures,
        points,
        f"MLP width {opts.width}; loopback; the load generator shares the cores.",
    )
    print()
    for f in figures[1:]:
        print(
            f"{f['name']}: {f['value']:,.1f} {f['unit']} = {f['ratio']:.2f}x {f['baseline']} (target {f['target']}: {'met' if f['met'] else 'NOT met'})"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
