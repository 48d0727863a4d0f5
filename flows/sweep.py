"""Hyperparameter sweep: trials as Prefect tasks on a Dask cluster, the best by validation ROC AUC.

A seeded random search over one model family's hyperparameters (default `hgb`): `trials`
configurations drawn from params.yaml's `sweep.space.<family>` over `train.<family>`, each fitted on the
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

Settings: params.yaml's `sweep` section (`driftloop.config.SweepParams`); options override them.

Usage:
    driftloop sweep                                          # params.yaml's sweep: section
    driftloop sweep --trials 32 --dask-address tcp://10.0.0.5:8786 --train-after
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from driftloop.config import Dimension, SweepParams

log = logging.getLogger(__name__)

class Trial(BaseModel):
    """One trial: its index, the configuration (only the swept keys), the validation ROC AUC, and its
    cost: `cpu_s` (CPU seconds of the fitting thread, `time.thread_time`) and `wall_s` (seconds)."""

    index: int
    config: dict[str, Any]
    valid_roc_auc: float
    cpu_s: float = 0.0
    wall_s: float = 0.0


class SweepResult(BaseModel):
    """What a sweep found: every trial in index order, and the best (highest AUC, earliest on ties)."""

    family: str
    trials: list[Trial]
    best: Trial


def draw(dim: Dimension, rng: np.random.Generator) -> Any:
    """One value of `dim` (see `driftloop.config.Dimension`), drawn with `rng`."""
    if dim.choice is not None:
        return dim.choice[int(rng.integers(len(dim.choice)))]
    low, high = dim.log or dim.int_log  # type: ignore[misc]
    value = math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(value) if dim.log is not None else int(round(value))


def sample_configs(space: Mapping[str, Dimension], trials: int, seed: int) -> list[dict[str, Any]]:
    """`trials` configurations drawn from `space` (one family's `sweep.space.<family>`) with
    `numpy.random.default_rng(seed)`, key by key in the space's order: the same seed and space give
    the same configurations on every machine."""
    rng = np.random.default_rng(seed)
    return [{name: draw(dim, rng) for name, dim in space.items()} for _ in range(trials)]


def sweep_settings(root: str | Path = ".", **overrides: Any) -> SweepParams:
    """params.yaml's `sweep` section with every non-None override applied (command-line options).

    Raises:
        ParamsError: the section or an override is invalid, named by its dotted key (`sweep.trials`).
    """
    from driftloop.config import load_section, parse_section

    path = Path(root) / "params.yaml"
    settings = load_section(path, "sweep", SweepParams)
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return settings
    return parse_section("sweep", {**settings.model_dump(), **given}, SweepParams, where=f"{path} + options")


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
    from threadpoolctl import threadpool_limits

    from driftloop.config import parse_section
    from driftloop.dataset import Dataset
    from driftloop.families import FAMILIES
    from driftloop.schema import LABEL

    fam = FAMILIES[family]
    params = fam.params_model(**{**base, **config})
    train = pd.read_parquet(f"{features.rstrip('/')}/train.parquet")
    valid = pd.read_parquet(f"{features.rstrip('/')}/valid.parquet")
    # One thread for OpenMP and BLAS (the families pin torch's), also on a cluster whose workers were
    # not started with OMP_NUM_THREADS=1: two trials on two cores must not fight for them.
    with threadpool_limits(limits=1):
        fitted, _ = fam.fit(train, valid, params, seed, parse_section("dataset", dataset, Dataset))
        return float(roc_auc_score(valid[LABEL], fam.predict(fitted, valid)))


# No cache, no result file: Prefect's default cache key (task source + flow run id + inputs) can only
# match within one sweep, where every trial is a different configuration; a key without the run id
# would be wrong, as the inputs name the features by path, not content (a new snapshot at the same
# path would get trials fitted on the old one). The Trial (a few hundred bytes) returns through
# Dask; writing it to the worker's result storage (as PREFECT_RESULTS_PERSIST_BY_DEFAULT=true would)
# saves nothing. (The default key costs ~0.1 ms a trial: this is for meaning, not speed.)
@task(name="sweep-trial", retries=1, cache_policy=NO_CACHE, persist_result=False)
def trial_task(index: int, features: str, family: str, base: dict[str, Any], config: dict[str, Any], seed: int,
               dataset: dict[str, Any]) -> Trial:
    """Prefect task of one trial (see `run_trial`), with its CPU and wall seconds."""
    cpu, wall = time.thread_time(), time.perf_counter()
    auc = run_trial(features, family, base, config, seed, dataset)
    return Trial(index=index, config=config, valid_roc_auc=auc, cpu_s=time.thread_time() - cpu,
                 wall_s=time.perf_counter() - wall)  # fmt: skip


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
def sweep_flow(root: str = ".", trials: int | None = None, family: str | None = None, seed: int | None = None,
               features: str | None = None, write: bool = True, train_after: bool = False) -> SweepResult:  # fmt: skip
    """Run the sweep's trials as tasks on the flow's task runner; keep the best; optionally train on it.

    Args:
        root: project root (params.yaml; `features` resolves against it).
        trials: configurations to try; None = params `sweep.trials`.
        family: the family to sweep; None = params `sweep.family`.
        seed: the search's seed (the models use `train.seed`); None = params `sweep.seed`.
        features: the features folder or URL; default `<root>/data/features` (the stage's out).
        write: write the best configuration into params.yaml.
        train_after: then run the training flow (DVC stages train .. package, no register/release).

    Returns:
        The sweep's result.

    Raises:
        ParamsError: params.yaml or an argument is invalid (named by its `sweep.` key).
    """
    from driftloop.config import TrainParams, load_section, read_params_file

    logger = get_run_logger()
    settings = sweep_settings(root, trials=trials, family=family, seed=seed)
    params = load_section(Path(root) / "params.yaml", "train", TrainParams)
    dataset = read_params_file(Path(root) / "params.yaml").get("dataset")
    base = getattr(params, settings.family).model_dump()
    where = features or str(Path(root).resolve() / "data" / "features")
    configs = sample_configs(settings.space[settings.family], settings.trials, settings.seed)
    futures = [trial_task.submit(i, where, settings.family, base, c, params.seed, dataset) for i, c in enumerate(configs)]
    done = [f.result() for f in futures]
    best = best_of(done)
    logger.info("sweep of %s: %d trials, %.1f CPU s; best trial %d, valid ROC AUC %.4f, %s", settings.family, len(done),
                sum(t.cpu_s for t in done), best.index, best.valid_roc_auc, best.config)  # fmt: skip
    if write:
        write_best(root, settings.family, best.config)
    if train_after:
        from flows.training import training_flow

        training_flow(root=root, register_version=False, release=False, record_branch=None, sweep=False)
    return SweepResult(family=settings.family, trials=done, best=best)


def dask_setup(worker: Any = None) -> None:
    """Dask preload hook (`dask worker --preload flows.sweep`; the LocalCluster of `dask_runner` sets
    it): on each worker process's start, before any trial, one thread for torch, and the trial's
    imports done (scikit-learn, pandas, the model families: seconds of CPU that would otherwise land
    in the first trial of every worker, serially, and again in a restarted worker)."""
    import torch

    torch.set_num_threads(1)
    import pandas  # noqa: F401
    import sklearn.metrics  # noqa: F401

    import driftloop.families  # noqa: F401


# Dask settings of the sweep's own LocalCluster (measured with 2 single-thread worker processes on 2
# cores, the bench's 8 HGB trials; `python bench/sweep_dask.py` prints the CPU of each part):
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns (to hand memory back
    # sooner); with it an HGB trial took 7-15% more CPU (4 trials, 7.5-7.6 vs 8.1-8.8 CPU s,
    # alternated runs), which two workers on two cores pay in full. None: glibc's own threshold.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # The statistical profiler behind the dashboard's Profile page samples each worker's running
    # stack every 10 ms (0.2-0.9 CPU s per 8-trial sweep, and a wake-up every 10 ms while idle);
    # nobody reads the dashboard of a cluster that lives for one sweep.
    "distributed.worker.profile.enabled": False,
    # The event-loop health check of the scheduler, each nanny and each worker runs every 20 ms by
    # default (250 wake-ups a second for 2 workers); every 200 ms it still sees a loop blocked for
    # `distributed.admin.tick.limit` (3 s). Both together, 3 runs each, alternated: the workers'
    # event loops took 0.17-0.21 CPU s per sweep, not 1.25-2.0; the idle cluster (workers, scheduler,
    # nannies) 33-45 mCPU s/s, not 87-137.
    "distributed.admin.tick.interval": "200ms",
}


def local_cluster(**kwargs: Any):
    """A `distributed.LocalCluster(**kwargs)` under `LOCAL_CLUSTER_CONFIG`: the scheduler and the
    nannies read it when they start, and each nanny hands a frozen copy to the worker processes it
    spawns, also to the one it restarts after a crash (a nanny's own copy shares its nested dicts
    with `dask.config.config`, which the `dask.config.set` block restores on exit). Only for a
    cluster the sweep starts itself; an existing cluster (`dask_address`) keeps its operator's."""
    import copy

    import dask
    from distributed import LocalCluster  # before dask.config.set: it registers the distributed section

    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536":  # left in this process by an earlier nanny
        os.environ.pop("MALLOC_TRIM_THRESHOLD_")
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        if kwargs.get("processes", True):  # worker processes behind nannies (`distributed.Nanny(config=)`)
            kwargs = {**kwargs, "config": copy.deepcopy(dask.config.config)}
        return LocalCluster(**kwargs)


def dask_runner(address: str | None = None, n_workers: int = 2):
    """prefect-dask's `DaskTaskRunner`: on `address` (an existing scheduler), else a `local_cluster`
    of `n_workers` worker processes with one thread each, preloading `dask_setup` (scikit-learn
    fits hold the GIL in parts; distributed's nanny starts them with OMP_NUM_THREADS=1, and
    `run_trial` limits threads itself: two trials never fight over cores)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={
        "n_workers": n_workers, "processes": True, "threads_per_worker": 1, "dashboard_address": ":0",
        "preload": [__name__]})  # fmt: skip


def run_sweep(root: str = ".", *, trials: int | None = None, family: str | None = None, seed: int | None = None,
              dask_address: str | None = None, workers: int | None = None, features: str | None = None,
              write: bool = True, train_after: bool = False) -> SweepResult:  # fmt: skip
    """`sweep_flow` on the Dask runner params.yaml's `sweep` section names; every non-None argument
    overrides its key (the command line's options). `driftloop sweep` and the training flow call this.

    Raises:
        ParamsError: params.yaml or an argument is invalid.
    """
    settings = sweep_settings(root, trials=trials, family=family, seed=seed, dask_address=dask_address, workers=workers)
    runner = dask_runner(settings.dask_address, settings.workers)
    return sweep_flow.with_options(task_runner=runner)(
        root=str(root), trials=settings.trials, family=settings.family, seed=settings.seed, features=features,
        write=write, train_after=train_after,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.sweep [driftloop sweep's options]`: the same command as `driftloop sweep`."""
    from commands.sweep import app

    app(argv)


if __name__ == "__main__":
    main()
