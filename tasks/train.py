"""Stage `train`: a HistGradientBoosting pipeline and a PyTorch MLP, seeded, on the train split.

- `hgb`: `ColumnTransformer(OrdinalEncoder on strings, passthrough numbers) -> HistGradientBoostingClassifier`.
  Categories are ordinal-encoded before the model (unknown -> -1), not passed as native
  categorical features: skl2onnx converts native categorical splits without error but wrongly.
- `mlp`: `ColumnTransformer(one-hot strings, median-impute + standardize numbers)` fitted on the
  train split only, then the `driftloop.mlp.MLP` trained with early selection on the valid split.

The fitted scikit-learn objects are kept with joblib between `train` and `export` only; the
serving side never sees a pickle, only the ONNX graphs that `export` builds.

Outputs: `hgb.joblib`, `mlp_preprocess.joblib`, `mlp.pt` in the models folder; metrics JSON;
curves CSV (`dvc plots`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from driftloop.config import TrainParams, load_section
from driftloop.io import atomic_path, write_json
from driftloop.mlp import MLP, fit_mlp, predict_mlp, save_mlp, seed_everything
from driftloop.schema import CATEGORICAL, FEATURES, FLOAT, INTEGER, LABEL
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def make_hgb(params: TrainParams) -> Pipeline:
    """The unfitted tree pipeline: raw `FEATURES` frame in, `predict_proba` out."""
    encode = ColumnTransformer(
        [
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), list(CATEGORICAL)),
            ("num", "passthrough", list(INTEGER + FLOAT)),
        ]
    )
    hp = params.hgb
    model = HistGradientBoostingClassifier(
        max_iter=hp.max_iter,
        learning_rate=hp.learning_rate,
        max_leaf_nodes=hp.max_leaf_nodes,
        min_samples_leaf=hp.min_samples_leaf,
        l2_regularization=hp.l2_regularization,
        early_stopping=False,
        random_state=params.seed,
    )
    return Pipeline([("encode", encode), ("model", model)])


def make_mlp_preprocess() -> ColumnTransformer:
    """The unfitted MLP preprocessing: one-hot strings (unknown -> all zeros), scale integers,
    median-impute + scale floats (integers are never null; skl2onnx's imputer needs one input type)."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32), list(CATEGORICAL)),
            ("int", StandardScaler(), list(INTEGER)),
            ("float", numeric, list(FLOAT)),
        ]
    )


def train_hgb(train: pd.DataFrame, valid: pd.DataFrame, params: TrainParams) -> tuple[Pipeline, list[dict]]:
    """Fit the tree pipeline; curves = validation log loss / ROC AUC per boosting iteration (every 10th)."""
    pipe = make_hgb(params).fit(train[list(FEATURES)], train[LABEL].to_numpy())
    curves = []
    xv = pipe.named_steps["encode"].transform(valid[list(FEATURES)])
    for i, proba in enumerate(pipe.named_steps["model"].staged_predict_proba(xv), 1):
        if i % 10 == 0 or i == params.hgb.max_iter:
            p = proba[:, 1]
            curves.append(
                {"iteration": i, "valid_log_loss": log_loss(valid[LABEL], p, labels=[0, 1]),
                 "valid_roc_auc": roc_auc_score(valid[LABEL], p)}
            )  # fmt: skip
    return pipe, curves


def train_mlp(
    train: pd.DataFrame, valid: pd.DataFrame, params: TrainParams
) -> tuple[ColumnTransformer, MLP, list[dict]]:
    """Fit preprocessing on train only, then the MLP; returns (preprocess, model, curves)."""
    seed_everything(params.seed)
    pre = make_mlp_preprocess().fit(train[list(FEATURES)])
    xt = pre.transform(train[list(FEATURES)]).astype(np.float32)
    xv = pre.transform(valid[list(FEATURES)]).astype(np.float32)
    mp = params.mlp
    model = MLP(xt.shape[1], mp.hidden)
    fit = fit_mlp(
        model, xt, train[LABEL].to_numpy(), xv, valid[LABEL].to_numpy(),
        epochs=mp.epochs, batch_size=mp.batch_size, learning_rate=mp.learning_rate,
        weight_decay=mp.weight_decay, seed=params.seed,
    )  # fmt: skip
    return pre, model, fit.curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path, help="output folder for the fitted models")
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--curves", required=True, type=Path, help="output folder for the curve CSVs")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "train", TrainParams)
        torch.set_num_threads(1)
        train = pd.read_parquet(args.features / "train.parquet")
        valid = pd.read_parquet(args.features / "valid.parquet")
        hgb, hgb_curves = train_hgb(train, valid, params)
        pre, mlp, mlp_curves = train_mlp(train, valid, params)
        xv = pre.transform(valid[list(FEATURES)]).astype(np.float32)
        metrics = {
            "hgb": {"valid_roc_auc": roc_auc_score(valid[LABEL], hgb.predict_proba(valid[list(FEATURES)])[:, 1])},
            "mlp": {"valid_roc_auc": roc_auc_score(valid[LABEL], predict_mlp(mlp, xv)), "n_inputs": mlp.n_inputs},
            "rows": {"train": len(train), "valid": len(valid)},
        }
        with atomic_path(args.models) as tmp:
            tmp.mkdir()
            joblib.dump(hgb, tmp / "hgb.joblib")
            joblib.dump(pre, tmp / "mlp_preprocess.joblib")
            save_mlp(mlp, tmp / "mlp.pt")
        with atomic_path(args.curves) as tmp:
            tmp.mkdir()
            pd.DataFrame(hgb_curves).to_csv(tmp / "hgb.csv", index=False)
            pd.DataFrame(mlp_curves).to_csv(tmp / "mlp.csv", index=False)
        write_json(args.metrics, metrics)
        log.info("train: hgb valid AUC %.4f, mlp valid AUC %.4f", metrics["hgb"]["valid_roc_auc"], metrics["mlp"]["valid_roc_auc"])

    run_stage("train", body)


if __name__ == "__main__":
    main()
