"""Stage `optimize`: cheaper candidates of each exported family; every one is built, none is timed.

Every family in `models/onnx/families.json` makes its candidates (`Family.candidates`: e.g.
`hgb_fp32`; `mlp_fp32`, `mlp_int8`, `mlp_int8_dynamic`, `mlp_pruned`, `mlp_pruned_int8`; see each
family's module). The set never depends on this machine's speed, so the output's hash in dvc.lock
is the same on every machine: speed is measured by the `gate` stage (tasks/gate.py), whose report
is a metrics file, and its latency and cost rules and its ranking decide which candidate pays.

Outputs: one folder with `<candidate>.onnx` each, and `candidates.json`: per candidate its file,
family, parent, how it was made and size (bytes).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import onnx
import pandas as pd

from driftloop.bench import take_rows
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


def candidate_table(candidates: dict[str, Candidate]) -> dict[str, dict]:
    """candidates.json's table: name -> family, parent, how, file, size_bytes (no timing: see the gate)."""
    table = {}
    for name, cand in candidates.items():
        family = cand.parent  # a candidate's parent is its family's FP32 graph, named after the family
        table[name] = {"family": family, "parent": cand.parent, "how": cand.how, "file": f"{name}.onnx",
                       "size_bytes": len(cand.graph.SerializeToString())}  # fmt: skip
        log.info("optimize: %-17s %8d B  %s", name, table[name]["size_bytes"], cand.how)
    return table


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
        table = candidate_table(candidates)
        for name in table:  # every kept graph must still score the test rows
            run_graph(candidates[name].graph, take_rows(feeds, 0, 8))
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name in table:
                onnx.save_model(candidates[name].graph, tmp / f"{name}.onnx")
            write_json(
                tmp / "candidates.json",
{"candidates": table})

    run_stage("optimize", body)


if __name__ == "__main__":
    main()
