"""Benchmark: one row's SHAP explanation (`POST /v1/models/{name}:explain`) on the packaged graph.

Times `Explainer.explain` (serving/explain.py: Kernel SHAP, 20 background rows of the package's
reference sample, 2 x columns + 256 coalitions, one `session.run` per row on one thread) for single
rows, after one warm-up call; and the whole route through the in-process ASGI app for comparison.
The graph is `artifacts/model` when it exists (the trained package), else a test MLP package.
Target: one row in <= 100 ms (wall, median) on this machine.

Run: .venv/bin/python bench/serve_explain.py [--rows 20]
Writes bench/results/serve_explain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from serve_common import MODEL, ROOT, figure, print_table, write_results  # noqa: E402
from serve_cpu import _call  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.config import ServeSettings  # noqa: E402
from serving.testing import TEST_INPUTS, build_test_package, records_payload, synthetic_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20, help="single rows explained (the median is reported)")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve_explain_"))
    package = ROOT / "artifacts" / "model"
    folder = tmp / "repo" / MODEL / "1"
    if (package / "model.onnx").is_file():
        shutil.copytree(package, folder)
        source = "artifacts/model"
    else:
        build_test_package(folder, model_name=MODEL, mlp_width=64)
        source = "test MLP package (no artifacts/model: run `make repro` for the trained one)"
    app = create_app(ServeSettings(repository=tmp / "repo"))
    plane = app.state.driftloop
    rows = synthetic_rows(opts.rows + 1, seed=4)
    path = f"/v1/models/{MODEL}:explain"

    async def run() -> tuple[list[float], list[float]]:
        direct, route = [], []
        async with app.router.lifespan_context(app):
            mv = plane.repository.get(MODEL)
            from driftloop.schema import feeds_for

            explainer = plane._explainer(mv)  # builds it (imports SHAP: seconds, once)
            explainer.explain(feeds_for(rows.iloc[:1], TEST_INPUTS))  # warm-up
            for i in range(1, opts.rows + 1):
                feeds = feeds_for(rows.iloc[i : i + 1], TEST_INPUTS)
                t0 = time.perf_counter()
                explainer.explain(feeds)
                direct.append(time.perf_counter() - t0)
                body = orjson.dumps(records_payload(rows.iloc[i : i + 1]))
                t0 = time.perf_counter()
                await _call(app, path, body, [])
                route.append(time.perf_counter() - t0)
        return direct, route

    direct, route = asyncio.run(run())
    d, r = statistics.median(direct) * 1e3, statistics.median(route) * 1e3
    points = [{"what": "Explainer.explain, 1 row", "median ms": d, "max ms": max(direct) * 1e3},
              {"what": "POST :explain (in-process ASGI), 1 row", "median ms": r, "max ms": max(route) * 1e3}]  # fmt: skip
    figures = [figure("explain_one_row_ms", r, "ms", "target", 100.0, 1.0, higher_is_better=False)]
    print_table(f"serve_explain ({source})", points, ["what", "median ms", "max ms"])
    out = write_results("serve_explain", figures, points, f"graph: {source}; wall time, median of {opts.rows} rows.")
    f = figures[0]
    print(f"\n{f['name']}: {f['value']:.1f} ms (target <= 100 ms: {'met' if f['met'] else 'NOT met'})\nwrote {out}")


if __name__ == "__main__":
    main()
