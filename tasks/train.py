"""Stage `train`: every enabled model family of `driftloop.families.FAMILIES`, seeded, on the train split.

Each family fits its own preprocessing on the train split only (see its module: `hgb`, `mlp`,
`logreg`). The fitted objects are kept between `train` and `export` only (joblib / torch
tensors); the serving side never sees a pickle, only the ONNX graphs that `export` builds.

Outputs: the models folder (each family's files, plus `families.json`: the families fitted, in
order, which every later stage iterates); metrics JSON (validation ROC AUC per family); one
curves CSV per family that records curves (`dvc plots`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

from driftloop.config import TrainParams, load_section
from driftloop.dataset import Dataset
from driftloop.errors import ParamsError
from driftloop.families import FAMILIES, FAMILIES_FILE
from driftloop.io import atomic_path, write_json
from driftloop.schema import LABEL
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def enabled_families(params: TrainParams) -> list[str]:
    """Names of the families whose `train.<family>.enabled` is true, in registry order.

    Raises:
        ParamsError: none is enabled (nothing to train would pass every later stage vacuously).
    """
    names = [name for name in FAMILIES if getattr(params, name).enabled]
    if not names:
        raise ParamsError(
            f"train: every model family is disabled; set train.<family>.enabled: true for one of {', '.join(FAMILIES)}"
        )
    return names


def train_models(
    train: pd.DataFrame, valid: pd.DataFrame, params: TrainParams, dataset: Dataset
) -> dict[str, tuple[Any, list[dict]]]:
    """Fit every enabled family on `dataset`'s features; returns {family: (fitted, curve rows)}."""
    return {
        name: FAMILIES[name].fit(train, valid, getattr(params, name), params.seed, dataset)
        for name in enabled_families(params)
    }


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
        dataset = load_section(args.params, "dataset", Dataset)
        train = pd.read_parquet(args.features / "train.parquet")
        valid = pd.read_parquet(args.features / "valid.parquet")
        fitted = train_models(train, valid, params, dataset)
        metrics: dict[str, Any] = {
            name: {"valid_roc_auc": float(roc_auc_score(valid[LABEL], FAMILIES[name].predict(model, valid)))}
            for name, (model, _) in fitted.items()
        }
        metrics["rows"] = {"train": len(train), "valid": len(valid)}
        with atomic_path(args.models) as tmp:
            tmp.mkdir()
            for name, (model, _) in fitted.items():
                FAMILIES[name].save(model, tmp)
            write_json(tmp / FAMILIES_FILE, list(fitted))
        with atomic_path(args.curves) as tmp:
            tmp.mkdir()
            for name, (_, curves) in fitted.items():
                if curves:
                    pd.DataFrame(curves).to_csv(tmp / f"{name}.csv", index=False)
        write_json(args.metrics, metrics)
        log.info(
            "train: valid ROC AUC %s",
            {n: round(m["valid_roc_auc"], 4) for n, m in metrics.items() if n != "rows"},
        )

    run_stage("train", body)


if __name__ == "__main__":
    main()
