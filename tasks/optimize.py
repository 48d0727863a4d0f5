"""Stage `optimize`: cheaper candidates of each exported family, each measured on this machine.

Every family in `models/onnx/families.json` makes its candidates (`Family.candidates`: e.g.
`hgb_fp32`; `mlp_fp32`, `mlp_int8`, `mlp_int8_dynamic`, `mlp_pruned`, `mlp_pruned_int8`; see each
family's module), all are measured side by side in this process, then each family may drop the
ones that do not pay (`Family.review`, e.g. dynamic INT8 slower than static).

Outputs: one folder with `<candidate>.onnx` each, and `candidates.json`: per candidate its file,
family, parent, how it was made, size (bytes), p50/p99 latency at batch 1 (ms) and rows/s at
batch `throughput_batch`, one thread.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from driftloop.bench import make_session, measure, take_rows
from driftloop.config import ExportParams, OptimizeParams, TrainParams, load_section
from driftloop.families import FAMILIES, FAMILIES_FILE, Candidate, CandidateContext
from driftloop.io import atomic_path, read_json, write_json
from driftloop.onnx_graph import graph_feeds, run_graph
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def build_candidates(contexts: dict[str, CandidateContext]) -> dict[str, Candidate]:
    """Every family's candidates, in family order; returns {candidate name: Candidate}."""
    out: dict[str, Candidate] = {}
    for name, ctx in contexts.items():
        out |= FAMILIES[name].candidates(ctx)
    return out


def measure_candidates(
    candidates: dict[str, Candidate], feeds: dict[str, np.ndarray], params: OptimizeParams
) -> dict[str, dict]:
    """Size and speed of each candidate, one thread, measured side by side in this process."""
    table = {}
    for name, cand in candidates.items():
        blob = cand.graph.SerializeToString()
        speed = measure(
            make_session(blob, threads=1), feeds, latency_runs=params.latency_runs,
            batch=params.throughput_batch, batch_runs=params.throughput_runs, clock=params.latency_clock,
        )  # fmt: skip
        family = cand.parent  # a candidate's parent is its family's FP32 graph, named after the family
        table[name] = {"family": family, "parent": cand.parent, "how": cand.how, "file": f"{name}.onnx",
                       "size_bytes": len(blob), **speed, "latency_clock": params.latency_clock}  # fmt: skip
        log.info("optimize: %-17s %8d B  p50 %.3f ms  p99 %.3f ms  %9.0f rows/s", name, len(blob),
                 speed["p50_ms"], speed["p99_ms"], speed["rows_per_s"])  # fmt: skip
    return table


def review_candidates(table: dict[str, dict]) -> list[str]:
    """Let each family drop its candidates that do not pay; returns the notes."""
    notes = []
    for name in dict.fromkeys(c["family"] for c in table.values()):
        notes += FAMILIES[name].review(table)
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", required=True, type=Path, help="folder written by train")
    parser.add_argument("--onnx", required=True, type=Path, help="folder written by export")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for candidate graphs + candidates.json"
    )
    args = parser.parse_args(argv)

    def body() -> None:
        import torch

        params = load_section(args.params, "optimize", OptimizeParams)
        train_params = load_section(args.params, "train", TrainParams)
        opset = load_section(args.params, "export", ExportParams).opset
        torch.set_num_threads(1)
        train = pd.read_parquet(args.features / "train.parquet")
        valid = pd.read_parquet(args.features / "valid.parquet")
        test = pd.read_parquet(args.features / "test.parquet")
        contexts = {
            name: CandidateContext(
                fitted=FAMILIES[name].load(args.models),
                graphs={k: onnx.load(str(args.onnx / f"{k}.onnx")) for k in keys},
                train=train,
                valid=valid,
                optimize=params,
                params=getattr(train_params, name),
                seed=train_params.seed,
                opset=opset,
            )  # fmt: skip
            for name, keys in read_json(args.onnx / FAMILIES_FILE).items()
        }
        candidates = build_candidates(contexts)
        feeds = graph_feeds(next(iter(candidates.values())).graph, test)  # every candidate has the same inputs
        table = measure_candidates(candidates, feeds, params)
        notes = review_candidates(table)
        for name in table:  # every kept graph must still score the test rows
            run_graph(candidates[name].graph, take_rows(feeds, 0, 8))
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name in table:
                onnx.save_model(candidates[name].graph, tmp / f"{name}.onnx")
            write_json(
                tmp / "candidates.json",
                {
                    "candidates": table,
                    "notes": notes,
                    "threads": 1,
                    "throughput_batch": params.throughput_batch,
                },
            )
        for note in notes:
            log.info("optimize: %s", note)

    run_stage("optimize", body)


if __name__ == "__main__":
    main()
