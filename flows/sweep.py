"""Hyperparameter sweep: trials as Prefect tasks on a Dask cluster, the best by validation ROC AUC.

A seeded random search over one model family's hyperparameters (default `hgb`): `trials`
configurations drawn from `SPACES[family]` around params.yaml's `train.<family>`, each fitted on the
train split and scored (ROC AUC) on the valid split that the `features` stage wrote. Every trial is
a Prefect task run by prefect-dask's `DaskTaskRunner`: a `distributed.LocalCluster` of worker
processes by default, or an existing cluster (`dask_address="tcp://scheduler:8786"`). The trials
read the splits by path (a shared folder or an `s3://` URL), so nothing large travels through the
scheduler. A trial is a pure function of (data, configuration, seed): when a worker dies, Dask runs
the trial again elsewhere and the result is the same.

The best configuration (highest AUC; ties to the earlier trial) is written into params.yaml's
`train.<family>` (comments kept); with `train_after`, the training flow then runs the normal
path (train -> export -> optimize -> evaluate -> gate -> package through DVC). The sweep is not a
DVC stage: `dvc repro` runs without Dask, on whatever params.yaml says.

Usage:
    python -m flows.sweep --trials 8                        # LocalCluster, 2 worker processes
    python -m flows.sweep --trials 32 --dask-address tcp://10.0.0.5:8786 --train-after
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from pydantic import BaseModel

log = logging.getLogger(__name__)

SPACES: dict[str, dict[str, tuple]] = {
    # name: ("log", low, high) | ("int_log", low, high) | ("choice", *values)
    "hgb": {
        "learning_rate": ("log", 0.03, 0.3),
        "max_leaf_nodes": ("choice", 15, 31, 63),
        "min_samples_leaf": ("int_log", 10, 200),
        "l2_regularization": ("choice", 0.0, 0.1, 1.0),
    },
    "mlp": {
        "learning_rate": ("log", 3e-4, 3e-3),
        "weight_decay": ("log", 1e-6, 1e-4),
        "batch_size": ("choice", 256, 512, 1024),
    },
}
"""The search space per family, in the family's own params names (scikit-learn's / torch's)."""


class Trial(BaseModel):
    """One trial: its index, the configuration (only the swept keys) and the validation ROC AUC."""

    index: int
    config: dict[str, Any]
    valid_roc_auc: float


class SweepResult(BaseModel):
    """What a sweep found: every trial in index order, and the best (highest AUC, earliest on ties)."""

    family: str
    trials: list[Trial]
    best: Trial


def sample_configs(family: str, trials: int, seed: int) -> list[dict[str, Any]]:
    """`trials` configurations drawn from `SPACES[family]` with `numpy.random.default_rng(seed)`.

    Raises:
        ValueError: no search space for `family`.
    """
    if family not in SPACES:
        raise ValueError(f"no search space for family {family!r}; known: {', '.join(SPACES)}")
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(trials):
        config: dict[str, Any] = {}
        for name, (kind, *args) in SPACES[family].items():
            if kind == "choice":
                config[name] = args[int(rng.integers(len(args)))]
            elif kind == "log":
                config[name] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            else:  # int_log
                config[name] = int(round(math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))))
        configs.append(config)
    return configs


def run_trial(features: str, family: str, base: dict[str, Any], config: dict[str, Any], seed: int,
              dataset: dict[str, Any]) -> float:
    """Fit `family` with `base` updated by `config` on `<features>/train.parquet`; ROC AUC on valid.

    Args:
        features: the `features` stage's output folder (or URL) holding train/valid Parquet.
        family: a key of `driftloop.families.FAMILIES`.
        base: the family's `train.<family>` params as a dict.
        config: the swept keys.
        seed: `train.seed`.
        dataset: params.yaml's `dataset` section as read (plain data, so it travels to a Dask worker).

    Returns:
        Validation ROC AUC (float in [0, 1]).
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from driftloop.config import parse_section
    from driftloop.dataset import Dataset
    from driftloop.families import FAMILIES
    from driftloop.schema import LABEL

    fam = FAMILIES[family]
    params = fam.params_model(**{**base, **config})
    train = pd.read_parquet(f"{features.rstrip('/')}/train.parquet")
    valid = pd.read_parquet(f"{features.rstrip('/')}/valid.parquet")
    fitted, _ = fam.fit(train, valid, params, seed, parse_section("dataset", dataset, Dataset))
    return float(roc_auc_score(valid[LABEL], fam.predict(fitted, valid)))


@task(name="sweep-trial", retries=1)
def trial_task(index: int, features: str, family: str, base: dict[str, Any], config: dict[str, Any], seed: int,
               dataset: dict[str, Any]) -> Trial:
    """Prefect task of one trial (see `run_trial`)."""
    return Trial(index=index, config=config, valid_roc_auc=run_trial(features, family, base, config, seed, dataset))


def best_of(trials: list[Trial]) -> Trial:
    """The highest validation ROC AUC; ties go to the lower index (a deterministic choice)."""
    return max(sorted(trials, key=lambda t: t.index), key=lambda t: t.valid_roc_auc)


def write_best(root: str, family: str, config: dict[str, Any]) -> None:
    """Write `config` into params.yaml's `train.<family>` (comments and key order kept; atomic).

    Raises:
        ParamsError: the result would not load as `train` params.
    """
    import io

    from ruamel.yaml import YAML

    from driftloop.config import TrainParams, parse_section, read_params_file
    from driftloop.io import write_text

    path = Path(root) / "params.yaml"
    raw = read_params_file(path)
    section = dict(raw.get("train") or {})
    section[family] = {**(section.get(family) or {}), **config}
    parse_section("train", section, TrainParams)
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(path.read_text())
    for key, value in config.items():
        doc["train"][family][key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    write_text(path, buf.getvalue())


@flow(name="sweep", log_prints=False)
def sweep_flow(root: str = ".", trials: int = 8, family: str = "hgb", seed: int = 0, features: str | None = None,
               write: bool = True, train_after: bool = False) -> SweepResult:  # fmt: skip
    """Run `trials` trials as tasks on the flow's task runner; keep the best; optionally train on it.

    Args:
        root: project root (params.yaml; `features` resolves against it).
        trials: configurations to try.
        family: the family to sweep (a key of `SPACES`).
        seed: the search's seed (the models use `train.seed`).
        features: the features folder or URL; default `<root>/data/features` (the stage's out).
        write: write the best configuration into params.yaml.
        train_after: then run the training flow (DVC stages train .. package, no register/release).

    Returns:
        The sweep's result.
    """
    from driftloop.config import TrainParams, load_section, read_params_file

    logger = get_run_logger()
    params = load_section(Path(root) / "params.yaml", "train", TrainParams)
    dataset = read_params_file(Path(root) / "params.yaml").get("dataset")
    base = getattr(params, family).model_dump()
    where = features or str(Path(root).resolve() / "data" / "features")
    futures = [trial_task.submit(i, where, family, base, c, params.seed, dataset) for i, c in enumerate(sample_configs(family, trials, seed))]
    done = [f.result() for f in futures]
    best = best_of(done)
    logger.info("sweep of %s: best trial %d, valid ROC AUC %.4f, %s", family, best.index, best.valid_roc_auc, best.config)
    if write:
        write_best(root, family, best.config)
    if train_after:
        from flows.training import training_flow

        training_flow(root=root, register_version=False, release=False, record_branch=None)
    return SweepResult(family=family, trials=done, best=best)


def dask_runner(address: str | None = None, n_workers: int = 2):
    """prefect-dask's `DaskTaskRunner`: on `address` (an existing scheduler), else a `LocalCluster`
    of `n_workers` worker processes with one thread each (scikit-learn fits hold the GIL in parts)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "processes": True, "threads_per_worker": 1,
                                          "dashboard_address": None})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.sweep [--trials N] [--family hgb] [--dask-address tcp://...] [--train-after]`."""
    from driftloop.stage import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--family", default="hgb", choices=sorted(SPACES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask-address", default=None, help="an existing Dask scheduler; default a LocalCluster")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--train-after", action="store_true", help="then run the training flow on the best")
    args = parser.parse_args(argv)
    configure_logging()
    runner = dask_runner(args.dask_address, args.workers)
    result = sweep_flow.with_options(task_runner=runner)(
        root=args.root, trials=args.trials, family=args.family, seed=args.seed, train_after=args.train_after
    )
    log.info("best: %s", result.best.model_dump())


if __name__ == "__main__":
    main()
