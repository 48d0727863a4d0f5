"""Stage `export`: each fitted model family becomes ONE ONNX graph, raw columns in, probability out.

Preprocessing lives inside the graph, so serving cannot skew from training. Parity is checked on
the whole test split plus each family's extra rows (for trees: rows exactly at and next to every
split threshold): max |p_onnx - p_native| must be <= `export.parity_tolerance` (1e-4), else the
stage fails and writes nothing.

Outputs (one folder): `<key>.onnx` for every graph a family's `to_onnx` returns (the whole model
under the family's name, plus parts `optimize` reuses, e.g. `mlp_preprocess`, `mlp_network`),
`families.json` ({family: [graph keys]}); a parity report per family.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from driftloop.config import ExportParams, load_section
from driftloop.dataset import Dataset
from driftloop.errors import ParityError
from driftloop.families import FAMILIES, FAMILIES_FILE
from driftloop.io import atomic_path, read_json, write_json
from driftloop.onnx_graph import graph_feeds, run_graph
from driftloop.schema import TensorSpec
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def check_parity(name: str, p_onnx: np.ndarray, p_native: np.ndarray, tolerance: float) -> dict:
    """Compare ONNX and native probabilities row by row.

    Returns:
        {"max_abs_diff", "rows", "tolerance", "passed"}.

    Raises:
        ParityError: max |p_onnx - p_native| > tolerance, naming the model and the worst row.
    """
    diff = np.abs(p_onnx.astype(np.float64) - p_native.astype(np.float64))
    worst = int(np.argmax(diff))
    result = {
        "max_abs_diff": float(diff[worst]),
        "rows": len(diff),
        "tolerance": tolerance,
        "passed": bool(diff[worst] <= tolerance),
    }
    if not result["passed"]:
        raise ParityError(
            f"{name}: ONNX and native scores differ by {diff[worst]:.3g} at test row {worst} (tolerance {tolerance:g}); "
            "the converter mishandles this model: check categorical encoding and dtypes"
        )
    return result


def export_family(
    name: str, fitted: Any, test: pd.DataFrame, params: ExportParams, inputs: list[TensorSpec]
) -> tuple[dict[str, onnx.ModelProto], dict]:
    """Convert one family and check its parity on `test` plus the family's `parity_rows`.

    `inputs` are the graph's inputs (`Dataset.input_specs()`: the features in input order).

    Returns:
        ({graph key: graph}, parity result with `threshold_rows`: how many extra rows were checked).

    Raises:
        ParityError: see `check_parity`.
    """
    family = FAMILIES[name]
    graphs = family.to_onnx(fitted, params.opset, inputs)
    extra = family.parity_rows(fitted, test)
    rows = pd.concat([test, extra], ignore_index=True) if len(extra) else test
    result = check_parity(
        name,
        run_graph(graphs[name], graph_feeds(graphs[name], rows)),
        family.predict(fitted, rows),
        params.parity_tolerance,
    )
    return graphs, {**result, "extra_rows": len(extra)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", required=True, type=Path, help="folder written by the train stage")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for the ONNX graphs")
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        import torch

        params = load_section(args.params, "export", ExportParams)
        inputs = load_section(args.params, "dataset", Dataset).input_specs()
        torch.set_num_threads(1)
        test = pd.read_parquet(args.features / "test.parquet")
        graphs: dict[str, dict[str, onnx.ModelProto]] = {}
        report = {}
        for name in read_json(args.models / FAMILIES_FILE):
            graphs[name], report[name] = export_family(name, FAMILIES[name].load(args.models), test, params, inputs)
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for family_graphs in graphs.values():
                for key, graph in family_graphs.items():
                    onnx.save_model(graph, tmp / f"{key}.onnx")
            write_json(tmp / FAMILIES_FILE, {name: list(g) for name, g in graphs.items()})
        write_json(args.report, report)
        log.info("export: parity %s", {k: f"{v['max_abs_diff']:.2e}" for k, v in report.items()})

    run_stage("export", body)


if __name__ == "__main__":
    main()
