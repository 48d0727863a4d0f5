"""Benchmark: single-row and 1,000-row requests against the model server, on loopback.

(a) this server (records endpoint, and v2 JSON), (b) a no-op endpoint on the same app and HTTP
stack (the ceiling), (c) a naive FastAPI + pydantic server calling session.run per request; each
at concurrency 1, 16, 64 for SECONDS seconds. Then 1,000-row requests over the v2 binary tensor
extension, v2 JSON and records, each against raw session.run at batch 1,000 (same intra-op
threads) measured in the same run. Servers are subprocesses; the load generator
(serving.loadgen) shares the 2 cores with them, so absolute figures are lower bounds; ratios are
measured side by side in one run.

Run: .venv/bin/python bench/serve_http.py [--seconds 3]
Writes bench/results/serve_http.json.
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
from serving.testing import (  # noqa: E402
    build_test_package,
    records_payload,
    synthetic_rows,
    v2_binary_payload,
    v2_payload,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    opts = parser.parse_args()
    tmp = scratch_dir("serve_http_")
    repo = tmp / "repo"
    build_test_package(repo / MODEL / "1", model_name=MODEL)
    one = orjson.dumps(records_payload(synthetic_rows(1, seed=1)))
    one_v2 = orjson.dumps(v2_payload(synthetic_rows(1, seed=1)))
    bulk_frame = synthetic_rows(1000, seed=2)
    binary, header_length = v2_binary_payload(bulk_frame)
    bulk = {  # name: (path, body, extra headers)
        "v2 binary": (f"/v2/models/{MODEL}/infer", binary, {"inference-header-content-length": str(header_length)}),
        "v2 JSON": (f"/v2/models/{MODEL}/infer", orjson.dumps(v2_payload(bulk_frame)), {}),
        "records": (f"/v1/models/{MODEL}:predict", orjson.dumps(records_payload(bulk_frame)), {}),
    }

    points: list[dict] = []
    results: dict[tuple[str, int], object] = {}
    port_a, port_c = free_port(), free_port()
    proc_a = start_process(
        server_args("driftloop", repo, port_a), f"http://127.0.0.1:{port_a}/v2/health/ready"
    )
    proc_c = start_process(server_args("naive", repo, port_c), f"http://127.0.0.1:{port_c}/v2/health/ready")
    try:
        targets = {
            "a_server": (f"http://127.0.0.1:{port_a}/v1/models/{MODEL}:predict", one),
            "a_server_v2": (f"http://127.0.0.1:{port_a}/v2/models/{MODEL}/infer", one_v2),
            "b_noop": (f"http://127.0.0.1:{port_a}/v2/noop", one),
            "c_naive": (f"http://127.0.0.1:{port_c}/v1/models/{MODEL}:predict", one),
        }
        for conc in opts.concurrency:
            for name, (url, body) in targets.items():
                res = run_load(url, body, concurrency=conc, seconds=opts.seconds)
                results[(name, conc)] = res
                points.append(
                    {
                        "target": name,
                        "rows/req": 1,
                        "conc": conc,
                        "req/s": res.rps,
                        "p50 ms": res.percentile(50),
                        "p99 ms": res.percentile(99),
                        "errors": res.errors,
                    }
                )
        bulk_rps = {}
        for name, (path, body, headers) in bulk.items():
            res = run_load(
                f"http://127.0.0.1:{port_a}{path}", body, concurrency=4, seconds=opts.seconds, headers=headers
            )
            bulk_rps[name] = res.rps
            points.append(
                {
                    "target": f"a_server {name}",
                    "rows/req": 1000,
                    "conc": 4,
                    "req/s": res.rps,
                    "rows/s": res.rps * 1000,
                    "p50 ms": res.percentile(50),
                    "p99 ms": res.percentile(99),
                    "errors": res.errors,
                }
            )
    finally:
        stop_process(proc_a)
        stop_process(proc_c)

    # Raw session.run at batch 1,000, same session options as the server's default.
    import onnxruntime as ort

    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / MODEL / "1" / "model.onnx"), options)
    feeds = feeds_for(synthetic_rows(1000, seed=2), TEST_INPUTS)
    session.run(None, feeds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < opts.seconds:
        session.run(None, feeds)
        n += 1
    raw_rows = n * 1000 / (time.perf_counter() - start)
    points.append({"target": "raw session.run", "rows/req": 1000, "conc": 1, "rows/s": raw_rows})

    print_table(
        "serve_http", points, ["target", "rows/req", "conc", "req/s", "rows/s", "p50 ms", "p99 ms", "errors"]
    )
    figures = []
    for conc in opts.concurrency:
        a, b, c = (results[(k, conc)] for k in ("a_server", "b_noop", "c_naive"))
        target16 = conc == 16
        figures.append(
            figure(
                f"req_per_s_c{conc}_vs_noop",
                a.rps,
                "req/s",
                "no-op endpoint, same stack",
                b.rps,
                0.8 if target16 else None,
            )
        )
        figures.append(
            figure(
                f"req_per_s_c{conc}_vs_naive",
                a.rps,
                "req/s",
                "naive FastAPI + session.run",
                c.rps,
                1.5 if target16 else None,
            )
        )
        figures.append(
            figure(
                f"p99_ms_c{conc}_vs_naive",
                a.percentile(99),
                "ms",
                "naive FastAPI + session.run",
                c.percentile(99),
                None,
                higher_is_better=False,
            )
        )
    for conc in opts.concurrency:
        figures.append(
            figure(
                f"req_per_s_c{conc}_v2_vs_records",
                results[("a_server_v2", conc)].rps,
                "req/s",
                "records endpoint, one row",
                results[("a_server", conc)].rps,
                0.9 if conc == 16 else None,
            )
        )
    for name, target in (("v2 binary", 0.5), ("v2 JSON", None), ("records", None)):
        figures.append(
            figure(
                f"rows_per_s_1000_row_{name.replace(' ', '_').lower()}",
                bulk_rps[name] * 1000,
                "rows/s",
                "raw session.run, batch 1000",
                raw_rows,
                target,
            )
        )
    path = write_results(
        "serve_http",
        figures,
        points,
        "Loopback; load generator (raw asyncio HTTP/1.1, keep-alive) shares the cores with the servers.",
    )
    print()
    for f in figures:
        if f["target"]:
            print(
                f"{f['name']}: {f['value']:,.0f} {f['unit']} = {f['ratio']:.2f}x {f['baseline']} (target {f['target']}: {'met' if f['met'] else 'NOT met'})"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
