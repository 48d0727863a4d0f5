"""Benchmark: request decoding and checks, and the prediction log's flush, per request, with an A/B.

The parts of a scoring request that grow with its rows, measured alone in one process: parse +
check of a 1,000-row body (v2 binary, v2 JSON, records) and of a single row (v2 JSON, records),
and the prediction log's flush per 1,000 rows (JSON feeds: `str` objects; binary feeds: a
unicode array). Process CPU time, minimum and median over interleaved rounds, `gc.freeze()`d as
the server is after start-up.

With `--base DIR` (a tree of another commit, e.g. `git archive ca17859 | tar -x -C /tmp/base`) the
same cases also run on that tree's `serving` package, imported under another name in this
process, interleaved round by round: the A/B is immune to the machine's load changing between
runs, which on a shared machine moves whole-run figures by +-30%.

Run: .venv/bin/python bench/serve_decode.py [--rounds 7] [--null-fraction 0.05] [--base /tmp/base]
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from serve_common import MODEL, scratch_dir  # noqa: E402

from driftloop.schema import feeds_for  # noqa: E402
from serving.repository import ModelRepository  # noqa: E402
from serving.testing import (
    TEST_INPUTS,  # noqa: E402
    build_test_package,
    records_payload,
    synthetic_rows,
    v2_binary_payload,
    v2_payload,
)


def _import_base(tree: Path):
    """`serving.validation` and `serving.predlog` of another tree, as package `serving_base`."""
    folder = scratch_dir("serve_decode_base_")
    shutil.copytree(tree / "serving", folder / "serving_base")
    for path in (folder / "serving_base").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\b(from|import) serving\.", r"\1 serving_base.", text))
    sys.path.insert(0, str(folder))
    import serving_base.predlog as predlog  # type: ignore[import-not-found]
    import serving_base.validation as validation  # type: ignore[import-not-found]

    return validation, predlog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--null-fraction", type=float, default=0.05, help="nulls in the nullable columns")
    parser.add_argument("--base", type=Path, help="another tree to compare with (its serving/ package)")
    opts = parser.parse_args()

    import serving.predlog as predlog
    import serving.validation as validation

    trees = {"this tree": (validation, predlog)}
    if opts.base is not None:
        trees = {"base": _import_base(opts.base), **trees}

    tmp = scratch_dir("serve_decode_")
    build_test_package(tmp / "repo" / MODEL / "1", model_name=MODEL)
    signature = ModelRepository(tmp / "repo").load(MODEL, "1").signature
    rows = synthetic_rows(1000, seed=2, null_fraction=opts.null_fraction)
    one = synthetic_rows(1, seed=1, null_fraction=opts.null_fraction)
    binary, header_length = v2_binary_payload(rows)
    bodies = {
        "v2": orjson.dumps(v2_payload(rows)),
        "records": orjson.dumps(records_payload(rows)),
        "v2 1": orjson.dumps(v2_payload(one)),
        "records 1": orjson.dumps(records_payload(one)),
    }
    feeds = feeds_for(rows, TEST_INPUTS)
    feeds_unicode = {k: (v.astype("U3") if v.dtype == object else v) for k, v in feeds.items()}
    scores = np.full((1000, 1), 0.5, np.float32)

    def v2(mod, body, header):
        request, parsed, tail = mod.parse_v2(body, header)
        return mod.v2_feeds(request, signature, mod.Limits(), body=body, parsed=parsed, binary=tail)

    def records(mod, body):
        return mod.records_feeds(mod.parse_records(body), signature, mod.Limits(), body=body)

    def flush(log_module, batch):
        log = log_module.PredictionLog(tempfile.mkdtemp(dir=tmp))
        for i in range(20):
            log.append(model=MODEL, version="1", request_id=f"r{i}", feeds=batch, scores=scores, latency_ms=1.0)
        log.flush()

    cases = {  # name: (function of (validation module, predlog module), calls per round, rows per call)
        "v2 binary, 1,000 rows": (lambda v, p: v2(v, binary, str(header_length)), 200, 1),
        "v2 JSON, 1,000 rows": (lambda v, p: v2(v, bodies["v2"], None), 50, 1),
        "records, 1,000 rows": (lambda v, p: records(v, bodies["records"]), 30, 1),
        "v2 JSON, 1 row": (lambda v, p: v2(v, bodies["v2 1"], None), 2000, 1),
        "records, 1 row": (lambda v, p: records(v, bodies["records 1"]), 2000, 1),
        "log flush per 1,000 rows, JSON feeds": (lambda v, p: flush(p, feeds), 2, 20),
        "log flush per 1,000 rows, binary feeds": (lambda v, p: flush(p, feeds_unicode), 2, 20),
    }
    gc.collect()
    gc.freeze()
    results = {case: {tree: [] for tree in trees} for case in cases}
    for _ in range(opts.rounds):
        for case, (fn, calls, per_call) in cases.items():
            for tree, modules in trees.items():
                start = time.process_time()
                for _ in range(calls):
                    fn(*modules)
                results[case][tree].append((time.process_time() - start) / calls / per_call * 1e6)

    print(f"process CPU us per request (per 1,000 rows for the flush), min (median) of {opts.rounds} rounds; "
          f"null fraction {opts.null_fraction}")  # fmt: skip
    header = f"{'case':40s}" + "".join(f"{tree:>20s}" for tree in trees)
    print(header + ("   base/this (min)" if len(trees) == 2 else ""))
    for case, by_tree in results.items():
        line = f"{case:40s}" + "".join(f"{min(v):11,.0f} ({statistics.median(v):6,.0f})" for v in by_tree.values())
        if len(trees) == 2:
            base, this = (min(v) for v in by_tree.values())
            line += f"   {base / this:6.2f}x"
        print(line)


if __name__ == "__main__":
    main()
