"""Stage `evaluate`: every candidate, its FP32 parent and the champion, on the same test split.

The parents are the exported families (`models/onnx/families.json`), never a list written here.

Per model: ROC AUC, PR AUC (average precision), log loss, Brier score, expected calibration error
(ECE, equal-width bins; Naeini et al. 2015); ROC AUC per value of each `dataset.slices` column (slices under
`min_slice_rows` rows, or with one class only, are flagged, not scored); batch invariance (rows
scored alone vs inside a batch of `invariance_batch`: max |difference|); for candidates, the shift
of each row's score from its parent's (max and p99 of |p - p_parent|).

Outputs: `evaluation.json` (`dvc metrics`), and a plots folder with ROC, PR and calibration
curves per model as CSV (`dvc plots`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from driftloop.bench import make_session, take_rows
from driftloop.config import EvaluateParams, load_section
from driftloop.dataset import Dataset
from driftloop.families import FAMILIES_FILE
from driftloop.io import atomic_path, read_json, write_json
from driftloop.onnx_graph import graph_inputs
from driftloop.package import verify_package
from driftloop.schema import LABEL, OUTPUT, feeds_for
from driftloop.stage import run_stage

log = logging.getLogger(__name__)

CHAMPION = "champion"
HEADLINE = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "batch_invariance")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """ECE = sum_b (n_b / n) * |mean(y_b) - mean(p_b)| over `bins` equal-width bins of [0, 1].

    Returns:
        (ece, per-bin frame with `bin`, `rows`, `mean_predicted`, `observed_rate`).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    frame = pd.DataFrame({"bin": which, "p": p, "y": y}).groupby("bin").agg(
        rows=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean")
    ).reset_index()
    ece = float((frame["rows"] / len(y) * (frame["observed_rate"] - frame["mean_predicted"]).abs()).sum())
    return ece, frame


def slice_auc(frame: pd.DataFrame, scores: np.ndarray, column: str, min_rows: int) -> dict[str, dict]:
    """ROC AUC per value of `column`; `{"rows", "roc_auc" | None, "flag" | None}` per value."""
    out = {}
    for value, idx in frame.groupby(column).indices.items():
        y = frame[LABEL].to_numpy()[idx]
        if len(idx) < min_rows:
            out[str(value)] = {"rows": len(idx), "roc_auc": None, "flag": f"under {min_rows} rows"}
        elif y.min() == y.max():
            out[str(value)] = {"rows": len(idx), "roc_auc": None, "flag": "one class only"}
        else:
            out[str(value)] = {"rows": len(idx), "roc_auc": float(roc_auc_score(y, scores[idx])), "flag": None}
    return out


def batch_invariance(session, feeds: dict[str, np.ndarray], batch: int, rows: int = 128) -> float:
    """Max |score alone - score inside a batch of `batch` rows| over the first `rows` rows."""
    big = take_rows(feeds, 0, batch)
    in_batch = session.run([OUTPUT], big)[0].reshape(-1)[:rows]
    alone = np.array([session.run([OUTPUT], take_rows(feeds, i, 1))[0].item() for i in range(min(rows, batch))])
    return float(np.max(np.abs(alone - in_batch[: len(alone)])))


def evaluate_model(
    session, test: pd.DataFrame, feeds: dict[str, np.ndarray], params: EvaluateParams, slices: list[str]
) -> tuple[dict, np.ndarray, dict]:
    """Metrics of one graph on the test split, with a ROC AUC per value of each of `slices`
    (`dataset.slices`); returns (metrics, scores `[n]` float32, curves)."""
    p = session.run([OUTPUT], feeds)[0].reshape(-1)
    y = test[LABEL].to_numpy()
    ece, calib = expected_calibration_error(y, p.astype(np.float64), params.calibration_bins)
    metrics = {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": ece,
        "slices": {c: slice_auc(test, p, c, params.min_slice_rows) for c in slices},
        "batch_invariance": batch_invariance(session, feeds, params.invariance_batch),
    }
    fpr, tpr, _ = roc_curve(y, p)
    prec, rec, _ = precision_recall_curve(y, p)
    keep_roc = np.unique(np.linspace(0, len(fpr) - 1, min(200, len(fpr))).astype(int))
    keep_pr = np.unique(np.linspace(0, len(prec) - 1, min(200, len(prec))).astype(int))
    curves = {
        "roc": pd.DataFrame({"fpr": fpr[keep_roc], "tpr": tpr[keep_roc]}),
        "pr": pd.DataFrame({"recall": rec[keep_pr], "precision": prec[keep_pr]}),
        "calibration": calib[["mean_predicted", "observed_rate", "rows"]],
    }
    return metrics, p, curves


def evaluate_candidates(
    graphs: dict[str, bytes], parents: dict[str, str], test: pd.DataFrame, params: EvaluateParams,
    slices: list[str] | None = None,
) -> tuple[dict, dict]:
    """Evaluate every graph; `parents` maps a candidate to its parent's name (parents map to None).

    Each graph is fed its own inputs (`graph_inputs`: a champion built on other columns is fed those).

    Returns:
        ({name: metrics}, {name: curves}); candidates also get `score_shift_vs_parent` {max, p99}.
    """
    metrics, scores, curves = {}, {}, {}
    feeds_by_inputs: dict[tuple, dict[str, np.ndarray]] = {}
    for name, blob in graphs.items():
        inputs = graph_inputs(blob)
        key = tuple((s.name, s.datatype) for s in inputs)
        if key not in feeds_by_inputs:
            feeds_by_inputs[key] = feeds_for(test, inputs)
        metrics[name], scores[name], curves[name] = evaluate_model(
            make_session(blob, threads=1), test, feeds_by_inputs[key], params, list(slices or [])
        )
        log.info("evaluate: %-17s roc_auc %.4f  pr_auc %.4f  ece %.4f", name, metrics[name]["roc_auc"],
                 metrics[name]["pr_auc"], metrics[name]["ece"])  # fmt: skip
    for name, parent in parents.items():
        if parent is not None:
            shift = np.abs(scores[name].astype(np.float64) - scores[parent])
            metrics[name]["score_shift_vs_parent"] = {"max": float(shift.max()), "p99": float(np.percentile(shift, 99))}
    return metrics, curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--onnx", required=True, type=Path, help="folder written by export (the FP32 parents)")
    parser.add_argument("--candidates", required=True, type=Path, help="folder written by optimize")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--champion", type=Path, default=None, help="package folder of the production model, if any")
    parser.add_argument("--metrics", required=True, type=Path, help="full report: slices, invariance, shifts")
    parser.add_argument("--summary", required=True, type=Path, help="headline metrics per model (dvc metrics)")
    parser.add_argument("--plots", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "evaluate", EvaluateParams)
        slices = load_section(args.params, "dataset", Dataset).slices
        test = pd.read_parquet(args.features / "test.parquet")
        table = read_json(args.candidates / "candidates.json")["candidates"]
        families = list(read_json(args.onnx / FAMILIES_FILE))  # each family's FP32 graph is a parent
        graphs = {p: (args.onnx / f"{p}.onnx").read_bytes() for p in families}
        graphs |= {n: (args.candidates / c["file"]).read_bytes() for n, c in table.items()}
        parents = {p: None for p in families} | {n: c["parent"] for n, c in table.items()}
        champion = None
        if args.champion is not None and (args.champion / "model.onnx").is_file():
            champion = verify_package(args.champion)
            graphs[CHAMPION] = (args.champion / "model.onnx").read_bytes()
            parents[CHAMPION] = None
            onnx.checker.check_model(onnx.load_from_string(graphs[CHAMPION]))
        metrics, curves = evaluate_candidates(graphs, parents, test, params, slices)
        report = {
            "models": metrics,
            "test_rows": len(test),
            "champion": {"lineage_id": champion.lineage_id} if champion else None,
        }
        with atomic_path(args.plots) as tmp:
            for kind in ("roc", "pr", "calibration"):
                (tmp / kind).mkdir(parents=True)
                for name, c in curves.items():
                    c[kind].to_csv(tmp / kind / f"{name}.csv", index=False)
        write_json(args.metrics, report)
        write_json(args.summary, {n: {k: m[k] for k in HEADLINE} for n, m in metrics.items()})

    run_stage("evaluate", body)


if __name__ == "__main__":
    main()
