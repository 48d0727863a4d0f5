"""Benchmark: one row's SHAP explanation (`POST /v1/models/{name}:explain`) on the trained, packaged graph.

The graph is `artifacts/model`, the package `driftloop serve` loads by default (`dvc checkout` or
`make repro` makes it; without it this stops with an error line: a test MLP would say nothing about
the served model). Rows explained: held-out rows of the package's reference sample (not in the
background), in the package's signature. Timed: `Explainer.explain` (serving/explain.py: Kernel SHAP,
20 seeded background rows of the reference sample, 2 x columns + 256 coalitions, one `session.run` per
row on one thread) after one warm-up call, and the whole route through the in-process ASGI app.
Checked per row: the attributions sum to score - base value within `ADDITIVITY_TOLERANCE`. Accuracy of
the coalition budget: the same rows explained with `--reference-nsamples` coalitions, and the largest
and mean absolute difference per attribution (probability units).
Target: one row in <= 100 ms (wall, median of the route) on this machine.

Run: .venv/bin/python bench/serve_explain.py [--rows 20 --reference-nsamples 4096]
Writes bench/results/serve_explain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
import pandas as pd  # noqa: E402
from serve_common import MODEL, ROOT, figure, print_table, scratch_dir, write_results  # noqa: E402
from serve_cpu import _call  # noqa: E402

from driftloop.schema import Signature, feeds_for  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.config import ServeSettings  # noqa: E402
from serving.explain import ADDITIVITY_TOLERANCE, Explainer  # noqa: E402
from serving.testing import records_payload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20, help="single rows explained (the median is reported)")
    parser.add_argument("--reference-nsamples", type=int, default=4096,
                        help="coalitions of the accuracy reference (0: skip the accuracy check)")  # fmt: skip
    opts = parser.parse_args()
    package = ROOT / "artifacts" / "model"
    if not (package / "model.onnx").is_file():
        sys.exit(f"error: {package / 'model.onnx'} is missing: run `dvc checkout` (or `make repro`) for the trained package")
    tmp = scratch_dir("serve_explain_")
    shutil.copytree(package, tmp / "repo" / MODEL / "1")
    card = json.loads((package / "model_card.json").read_text())
    signature = Signature.model_validate_json((package / "signature.json").read_text())
    reference = pd.read_parquet(package / "reference.parquet")
    app = create_app(ServeSettings(repository=tmp / "repo"))
    plane = app.state.driftloop
    path = f"/v1/models/{MODEL}:explain"

    async def run():
        direct, route, errors, drift = [], [], [], []
        async with app.router.lifespan_context(app):
            mv = plane.repository.get(MODEL)
            explainer = plane._explainer(mv)  # builds it (imports SHAP: seconds, once)
            held_out = reference.drop(index=reference.sample(n=len(explainer.background), random_state=explainer.seed).index)
            rows = held_out.sample(n=opts.rows + 1, random_state=1)[[s.name for s in signature.inputs]]
            explainer.explain(feeds_for(rows.iloc[:1], signature.inputs))  # warm-up
            accurate = (Explainer(mv.run, signature, reference, nsamples=opts.reference_nsamples)
                        if opts.reference_nsamples else None)  # fmt: skip
            for i in range(1, opts.rows + 1):
                feeds = feeds_for(rows.iloc[i : i + 1], signature.inputs)
                t0 = time.perf_counter()
                (e,) = explainer.explain(feeds)
                direct.append(time.perf_counter() - t0)
                errors.append(abs(sum(e["attributions"].values()) - (e["score"] - e["base_value"])))
                body = orjson.dumps(records_payload(rows.iloc[i : i + 1]))
                t0 = time.perf_counter()
                await _call(app, path, body, [])
                route.append(time.perf_counter() - t0)
                if accurate is not None and i <= 5:  # the accuracy reference costs ~16x: five rows
                    (ref,) = accurate.explain(feeds)
                    drift += [abs(e["attributions"][k] - v) for k, v in ref["attributions"].items()]
            return direct, route, errors, drift, explainer

    direct, route, errors, drift, explainer = asyncio.run(run())
    d, r = statistics.median(direct) * 1e3, statistics.median(route) * 1e3
    source = f"artifacts/model ({card.get('candidate', '?')}, {len(signature.inputs)} inputs)"
    points = [{"what": "Explainer.explain, 1 row", "median ms": d, "max ms": max(direct) * 1e3},
              {"what": "POST :explain (in-process ASGI), 1 row", "median ms": r, "max ms": max(route) * 1e3}]  # fmt: skip
    figures = [figure("explain_one_row_ms", r, "ms", "target", 100.0, 1.0, higher_is_better=False),
               figure("explain_additivity_max_error", max(errors), "probability", "tolerance", ADDITIVITY_TOLERANCE,
                      1.0, higher_is_better=False)]  # fmt: skip
    if drift:
        figures.append(figure(f"explain_attribution_abs_diff_vs_{opts.reference_nsamples}_coalitions_max", max(drift),
                              "probability"))  # fmt: skip
        figures.append(figure(f"explain_attribution_abs_diff_vs_{opts.reference_nsamples}_coalitions_mean",
                              statistics.mean(drift), "probability"))  # fmt: skip
    print_table(f"serve_explain ({source}; nsamples {explainer.nsamples}, {len(explainer.background)} background rows)",
                points, ["what", "median ms", "max ms"])  # fmt: skip
    out = write_results("serve_explain", figures, points,
                        f"graph: {source}; nsamples {explainer.nsamples}, {len(explainer.background)} background rows; "
                        f"wall time, median of {opts.rows} held-out reference rows.")  # fmt: skip
    print(f"\nexplain_one_row_ms: {r:.1f} ms (target <= 100 ms: {'met' if figures[0]['met'] else 'NOT met'})")
    print(f"additivity: max |sum(attributions) - (score - base)| = {max(errors):.2e} (tolerance {ADDITIVITY_TOLERANCE:g})")
    if drift:
        print(f"vs {opts.reference_nsamples} coalitions (5 rows x {len(signature.inputs)} attributions): "
              f"max |diff| {max(drift):.2e}, mean {statistics.mean(drift):.2e} (probability)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
