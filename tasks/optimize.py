"""Stage `optimize`: cheaper candidates of each family, each measured on this machine.

Candidates (name: how it is made; parent is the FP32 graph it derives from):
    hgb_fp32            hgb.onnx with ONNX Runtime's extended graph optimizations saved (fusion)
    mlp_fp32            mlp.onnx, same
    mlp_int8            static INT8 QDQ of the network, calibrated on `calibration_rows` training
                        rows, merged behind the FP32 preprocessing
    mlp_int8_dynamic    dynamic INT8 of the network: kept only if faster than mlp_int8 at batch
                        `throughput_batch` (it scales activations per batch, so scores depend on
                        batch-mates: the gate's batch-invariance rule exists for it)
    mlp_pruned          hidden units physically removed (`prune_keep`), fine-tuned `finetune_epochs`
    mlp_pruned_int8     mlp_pruned, then static INT8 as above

Why quantize the network alone: the quantizer cannot infer shapes through the string ops of the
preprocessing graph; the network's float input is where INT8 pays anyway.

Outputs: one folder with `<candidate>.onnx` each, and `candidates.json`: per candidate its file,
family, parent, size (bytes), p50/p99 latency at batch 1 (ms) and rows/s at batch 1,024, one thread.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from driftloop.bench import make_session, measure, take_rows
from driftloop.config import ExportParams, OptimizeParams, TrainParams, load_section
from driftloop.io import atomic_path, write_json
from driftloop.mlp import fit_mlp, load_mlp, prune_mlp, seed_everything
from driftloop.onnx_graph import MLP_INPUT, merge_preprocess, run_graph, torch_mlp_to_onnx
from driftloop.schema import FEATURES, LABEL, to_onnx_feeds
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


class _Calibration(CalibrationDataReader):
    """Feeds the network's input, `[n, d]` float32, in chunks of 256 rows."""

    def __init__(self, x: np.ndarray, chunk: int = 256) -> None:
        self._batches = iter([{MLP_INPUT: x[i : i + chunk]} for i in range(0, len(x), chunk)])

    def get_next(self):
        return next(self._batches, None)


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply ONNX Runtime's extended graph optimizations offline and return the saved graph.

    EXTENDED, not ALL: ALL adds layout transforms tied to this CPU, which make a file unportable.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fused.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def quantize_network(network: onnx.ModelProto, calibration: np.ndarray | None) -> onnx.ModelProto:
    """INT8 the network graph: static QDQ when `calibration` (`[n, d]` float32) is given, else dynamic."""
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("net.onnx", "pre.onnx", "q.onnx"))
        onnx.save_model(network, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        if calibration is None:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(pre), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            )  # fmt: skip
        return onnx.load(str(out))


def build_candidates(
    graphs: dict[str, onnx.ModelProto],
    network_torch,
    preprocess,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    params: OptimizeParams,
    seed: int,
    opset: int,
    learning_rate: float,
    batch_size: int,
) -> dict[str, tuple[onnx.ModelProto, dict]]:
    """Make every candidate graph; returns {name: (graph, {"family", "parent", "how"})}."""
    pre_graph = graphs["mlp_preprocess"]
    rng = np.random.default_rng(seed)
    sample = train.iloc[rng.choice(len(train), size=min(params.calibration_rows, len(train)), replace=False)]
    calib = preprocess.transform(sample[list(FEATURES)]).astype(np.float32)

    out: dict[str, tuple[onnx.ModelProto, dict]] = {
        "hgb_fp32": (fuse(graphs["hgb"]), {"family": "hgb", "parent": "hgb", "how": "ORT extended fusion"}),
        "mlp_fp32": (fuse(graphs["mlp"]), {"family": "mlp", "parent": "mlp", "how": "ORT extended fusion"}),
    }
    static = quantize_network(graphs["mlp_network"], calib)
    out["mlp_int8"] = (merge_preprocess(pre_graph, static), {"family": "mlp", "parent": "mlp", "how": "static INT8 QDQ"})
    dynamic = quantize_network(graphs["mlp_network"], None)
    out["mlp_int8_dynamic"] = (merge_preprocess(pre_graph, dynamic), {"family": "mlp", "parent": "mlp", "how": "dynamic INT8"})

    seed_everything(seed)
    pruned = prune_mlp(network_torch, params.prune_keep)
    if params.finetune_epochs:
        xt = preprocess.transform(train[list(FEATURES)]).astype(np.float32)
        xv = preprocess.transform(valid[list(FEATURES)]).astype(np.float32)
        fit_mlp(
            pruned, xt, train[LABEL].to_numpy(), xv, valid[LABEL].to_numpy(), epochs=params.finetune_epochs,
            batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.0, seed=seed,
        )  # fmt: skip
    pruned_net = torch_mlp_to_onnx(pruned, pruned.n_inputs, opset)
    how = f"structured pruning keep={params.prune_keep} hidden={pruned.hidden}, fine-tuned {params.finetune_epochs} epochs"
    out["mlp_pruned"] = (fuse(merge_preprocess(pre_graph, pruned_net)), {"family": "mlp", "parent": "mlp", "how": how})
    out["mlp_pruned_int8"] = (
        merge_preprocess(pre_graph, quantize_network(pruned_net, calib)),
        {"family": "mlp", "parent": "mlp", "how": how + " + static INT8 QDQ"},
    )
    return out


def measure_candidates(
    candidates: dict[str, tuple[onnx.ModelProto, dict]], feeds: dict[str, np.ndarray], params: OptimizeParams
) -> dict[str, dict]:
    """Size and speed of each candidate, one thread, measured side by side in this process."""
    table = {}
    for name, (graph, meta) in candidates.items():
        blob = graph.SerializeToString()
        speed = measure(
            make_session(blob, threads=1), feeds, latency_runs=params.latency_runs,
            batch=params.throughput_batch, batch_runs=params.throughput_runs,
        )  # fmt: skip
        table[name] = {**meta, "file": f"{name}.onnx", "size_bytes": len(blob), **speed}
        log.info("optimize: %-17s %8d B  p50 %.3f ms  p99 %.3f ms  %9.0f rows/s", name, len(blob),
                 speed["p50_ms"], speed["p99_ms"], speed["rows_per_s"])  # fmt: skip
    return table


def drop_unhelpful_dynamic(table: dict[str, dict]) -> str | None:
    """Dynamic INT8 stays only if it beats static INT8 on rows/s; returns the reason when dropped."""
    if "mlp_int8_dynamic" in table and table["mlp_int8_dynamic"]["rows_per_s"] <= table["mlp_int8"]["rows_per_s"]:
        dyn, sta = table.pop("mlp_int8_dynamic")["rows_per_s"], table["mlp_int8"]["rows_per_s"]
        return f"mlp_int8_dynamic dropped: {dyn:.0f} rows/s <= static INT8's {sta:.0f}"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", required=True, type=Path, help="folder written by train")
    parser.add_argument("--onnx", required=True, type=Path, help="folder written by export")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for candidate graphs + candidates.json")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "optimize", OptimizeParams)
        train_params = load_section(args.params, "train", TrainParams)
        opset = load_section(args.params, "export", ExportParams).opset
        torch.set_num_threads(1)
        train = pd.read_parquet(args.features / "train.parquet")
        valid = pd.read_parquet(args.features / "valid.parquet")
        test = pd.read_parquet(args.features / "test.parquet")
        graphs = {n: onnx.load(str(args.onnx / f"{n}.onnx")) for n in ("hgb", "mlp", "mlp_preprocess", "mlp_network")}
        candidates = build_candidates(
            graphs, load_mlp(args.models / "mlp.pt"), joblib.load(args.models / "mlp_preprocess.joblib"),
            train, valid, params, train_params.seed, opset,
            learning_rate=train_params.mlp.learning_rate / 2, batch_size=train_params.mlp.batch_size,
        )  # fmt: skip
        feeds = to_onnx_feeds(test)
        table = measure_candidates(candidates, feeds, params)
        note = drop_unhelpful_dynamic(table)
        for name in table:  # every kept graph must still score the test rows
            run_graph(candidates[name][0], take_rows(feeds, 0, 8))
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name in table:
                onnx.save_model(candidates[name][0], tmp / f"{name}.onnx")
            write_json(tmp / "candidates.json", {"candidates": table, "notes": [note] if note else [],
                                                  "threads": 1, "throughput_batch": params.throughput_batch})
        if note:
            log.info("optimize: %s", note)

    run_stage("optimize", body)


if __name__ == "__main__":
    main()
