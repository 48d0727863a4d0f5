"""Benchmark: INT8 and structurally pruned MLP candidates vs the FP32 MLP, measured side by side.

Needs a built pipeline (`dvc repro`): reads models/onnx, models/candidates and data/features.
Throughput is rows/s at batch 1,024 on one thread (median of interleaved rounds, so drift in the
machine's load hits every model alike), for the whole graph (raw columns in, preprocessing included)
and for the network alone (cut out of each candidate graph with `onnx.utils.extract_model`: the
part that quantization and pruning change; the preprocessing is a fixed cost they cannot touch).
ROC AUC on the test split.

Targets (issue 2): INT8 >= 1.5x FP32 rows/s with ROC AUC drop <= 0.002; pruned >= 1.8x with drop <= 0.01.
Usage: python bench/build_optimize.py [--rounds 15]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, figure, print_table, write_results  # noqa: E402

sys.path.insert(0, str(ROOT))
from driftloop.bench import make_session, take_rows  # noqa: E402
from driftloop.onnx_graph import graph_feeds  # noqa: E402
from driftloop.schema import OUTPUT  # noqa: E402

BATCH = 1024


def rows_per_s(sessions: dict, feeds: dict, rounds: int) -> dict[str, float]:
    """Median rows/s per session over `rounds` interleaved rounds of 5 calls each."""
    times = {n: [] for n in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(5):
                s.run(None, feeds)
            times[name].append((time.perf_counter() - t0) / 5)
    return {n: BATCH / float(np.median(t)) for n, t in times.items()}


def network_part(graph_path: Path, joint: str, out_dir: Path) -> bytes:
    """The network half of a merged candidate graph: from the preprocessing output `joint` to `probability`."""
    out = out_dir / f"net_{graph_path.name}"
    onnx.utils.extract_model(str(graph_path), str(out), [joint], [OUTPUT])
    return out.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    cand_dir, onnx_dir = ROOT / "models" / "candidates", ROOT / "models" / "onnx"
    if not (cand_dir / "candidates.json").is_file():
        sys.exit("run `dvc repro` first: models/candidates is missing")
    test = pd.read_parquet(ROOT / "data" / "features" / "test.parquet")
    names = [n for n in ("mlp_fp32", "mlp_int8", "mlp_pruned", "mlp_pruned_int8") if (cand_dir / f"{n}.onnx").is_file()]
    feeds = graph_feeds((cand_dir / f"{names[0]}.onnx").read_bytes(), test)
    sessions = {n: make_session((cand_dir / f"{n}.onnx").read_bytes()) for n in names}
    auc = {n: roc_auc_score(test["label"], s.run([OUTPUT], feeds)[0].ravel()) for n, s in sessions.items()}
    speed = rows_per_s(sessions, take_rows(feeds, 0, BATCH), args.rounds)
    pre_graph = onnx.load(str(onnx_dir / "mlp_preprocess.onnx"))
    joint = pre_graph.graph.output[0].name
    x = make_session(pre_graph.SerializeToString()).run(None, take_rows(feeds, 0, BATCH))[0].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        net_sessions = {n: make_session(network_part(cand_dir / f"{n}.onnx", joint, Path(tmp))) for n in names}
    net_speed = rows_per_s(net_sessions, {joint: x}, args.rounds)

    base = speed["mlp_fp32"]
    targets = {"mlp_int8": (1.5, 0.002), "mlp_pruned": (1.8, 0.01), "mlp_pruned_int8": (1.8, 0.01)}
    figures, points = [], []
    for name in names:
        points.append({"name": name, "rows_per_s": speed[name], "roc_auc": auc[name], "auc_drop": auc["mlp_fp32"] - auc[name]})
        if name in targets:
            t_speed, t_drop = targets[name]
            figures.append(figure(f"{name} rows/s (whole graph)", speed[name], "rows/s", "mlp_fp32", base, target=t_speed))
            drop = auc["mlp_fp32"] - auc[name]
            figures.append({**figure(f"{name} ROC AUC drop", drop, "AUC", "mlp_fp32", None), "target": f"<= {t_drop}",
                            "met": bool(drop <= t_drop)})  # fmt: skip
    for name in names:
        points[names.index(name)]["network_rows_per_s"] = net_speed[name]
        if name in targets:
            figures.append(figure(f"{name} rows/s (network alone)", net_speed[name], "rows/s", "mlp_fp32 network",
                                  net_speed["mlp_fp32"], target=targets[name][0]))  # fmt: skip
    print_table("MLP candidates at batch 1,024, one thread", points,
                ["name", "rows_per_s", "network_rows_per_s", "roc_auc", "auc_drop"])  # fmt: skip
    print_table("ratios", figures, ["name", "value", "baseline", "ratio", "target", "met"])
    write_results("build_optimize", figures, points, f"median of {args.rounds} interleaved rounds; test rows {len(test)}")


if __name__ == "__main__":
    main()
