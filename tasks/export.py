"""Stage `export`: each model family becomes ONE ONNX graph, raw columns in, probability out.

Preprocessing lives inside the graph, so serving cannot skew from training. Parity is checked on
the whole test split: max |p_onnx - p_native| must be <= `export.parity_tolerance` (1e-4), else
the stage fails and writes nothing.

Outputs (one folder): `hgb.onnx`, `mlp.onnx` (the merged graphs), `mlp_preprocess.onnx` and
`mlp_network.onnx` (the two halves, which `optimize` quantizes and re-merges); a parity report.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import joblib
import numpy as np
import onnx
import pandas as pd
import torch

from driftloop.config import ExportParams, load_section
from driftloop.errors import ParityError
from driftloop.io import atomic_path, write_json
from driftloop.mlp import MLP, load_mlp, predict_mlp
from driftloop.onnx_graph import (
    keep_positive_class,
    merge_preprocess,
    run_graph,
    sklearn_to_onnx,
    torch_mlp_to_onnx,
)
from driftloop.schema import FEATURES, to_onnx_feeds
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def export_hgb(pipeline, opset: int) -> onnx.ModelProto:
    """The tree pipeline as one graph (`probability` FP32 `[n, 1]`)."""
    return keep_positive_class(sklearn_to_onnx(pipeline, opset, name="hgb", zipmap_off=pipeline.steps[-1][1]))


def export_mlp(preprocess, network: MLP, opset: int) -> dict[str, onnx.ModelProto]:
    """The MLP as its two halves and their merge: `{"mlp_preprocess", "mlp_network", "mlp"}`."""
    pre = sklearn_to_onnx(preprocess, opset, name="mlp_preprocess")
    net = torch_mlp_to_onnx(network, network.n_inputs, opset)
    return {"mlp_preprocess": pre, "mlp_network": net, "mlp": merge_preprocess(pre, net)}


def check_parity(name: str, p_onnx: np.ndarray, p_native: np.ndarray, tolerance: float) -> dict:
    """Compare ONNX and native probabilities row by row.

    Returns:
        {"max_abs_diff", "rows", "tolerance", "passed"}.

    Raises:
        ParityError: max |p_onnx - p_native| > tolerance, naming the model and the worst row.
    """
    diff = np.abs(p_onnx.astype(np.float64) - p_native.astype(np.float64))
    worst = int(np.argmax(diff))
    result = {"max_abs_diff": float(diff[worst]), "rows": len(diff), "tolerance": tolerance, "passed": bool(diff[worst] <= tolerance)}
    if not result["passed"]:
        raise ParityError(
            f"{name}: ONNX and native scores differ by {diff[worst]:.3g} at test row {worst} (tolerance {tolerance:g}); "
            "the converter mishandles this model: check categorical encoding and dtypes"
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", required=True, type=Path, help="folder written by the train stage")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for the ONNX graphs")
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "export", ExportParams)
        torch.set_num_threads(1)
        test = pd.read_parquet(args.features / "test.parquet")
        feeds = to_onnx_feeds(test)
        hgb = joblib.load(args.models / "hgb.joblib")
        pre = joblib.load(args.models / "mlp_preprocess.joblib")
        net = load_mlp(args.models / "mlp.pt")
        graphs = {"hgb": export_hgb(hgb, params.opset), **export_mlp(pre, net, params.opset)}
        native = {
            "hgb": hgb.predict_proba(test[list(FEATURES)])[:, 1],
            "mlp": predict_mlp(net, pre.transform(test[list(FEATURES)]).astype(np.float32)),
        }
        report = {
            name: check_parity(name, run_graph(graphs[name], feeds), native[name], params.parity_tolerance)
            for name in ("hgb", "mlp")
        }
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name, graph in graphs.items():
                onnx.save_model(graph, tmp / f"{name}.onnx")
        write_json(args.report, report)
        log.info("export: parity %s", {k: f"{v['max_abs_diff']:.2e}" for k, v in report.items()})

    run_stage("export", body)


if __name__ == "__main__":
    main()
