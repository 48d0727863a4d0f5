"""The hyperparameter sweep on a real Dask cluster: 2 worker processes, one of them killed mid-sweep.

The reference is the same trials run one after another in this process, without Dask or Prefect
(`flows.sweep.run_trial`). On a `distributed.LocalCluster` of 2 worker processes, through
prefect-dask's `DaskTaskRunner` and a Prefect test server, the sweep must give the very same AUC
for every trial and the same best, even though a watcher SIGKILLs the worker process that is
running a trial as soon as one is (Dask runs that trial again on a live worker). The best
configuration lands in params.yaml's `train.hgb`, comments kept.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from driftloop.config import FeaturesParams, SweepParams
from driftloop.errors import ParamsError
from flows.sweep import best_of, run_trial, sample_configs, sweep_flow, sweep_settings
from tests.conftest import default_dataset

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(flights_weather, tmp_path_factory):
    """A root with params.yaml (hgb max_iter 10) and January 2013's train/valid splits."""
    from tasks.features import build_features

    flights, weather = flights_weather
    root = tmp_path_factory.mktemp("sweep")
    january = {"flights": flights[flights["month"] == 1], "weather": weather[weather["month"] == 1]}
    splits, _ = build_features(january, default_dataset(), FeaturesParams())
    (root / "data" / "features").mkdir(parents=True)
    for name in ("train", "valid"):
        splits[name].to_parquet(root / "data" / "features" / f"{name}.parquet", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["hgb"]["max_iter"] = 10
    params["sweep"].update(trials=3, seed=5)  # the command line overrides these in the tests
    (root / "params.yaml").write_text("# sweep test\n" + yaml.safe_dump(params, sort_keys=False))
    return root


HGB = SweepParams().space["hgb"]


@pytest.fixture(scope="module")
def cluster():
    """The sweep's `local_cluster`: 2 worker processes, one thread each, preloading flows.sweep; shared."""
    from flows.sweep import local_cluster

    with local_cluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                       preload=["flows.sweep"]) as c:  # fmt: skip
        yield c


def test_configs_are_seeded_and_in_range():
    a, b = sample_configs(HGB, 8, seed=1), sample_configs(HGB, 8, seed=1)
    assert a == b and a != sample_configs(HGB, 8, seed=2)
    assert all(0.03 <= c["learning_rate"] <= 0.3 and c["max_leaf_nodes"] in (15, 31, 63) for c in a)
    assert all(isinstance(c["min_samples_leaf"], int) and 10 <= c["min_samples_leaf"] <= 200 for c in a)


def test_settings_come_from_params_and_options_override(project):
    settings = sweep_settings(project)
    assert (settings.trials, settings.seed, settings.family, settings.dask_address) == (3, 5, "hgb", None)
    assert sweep_settings(project, trials=2, seed=None, workers=1).model_dump() == {
        **settings.model_dump(), "trials": 2, "workers": 1}  # fmt: skip
    with pytest.raises(ParamsError, match=r"\+ options: sweep\.workers: Input should be greater than or equal to 1"):
        sweep_settings(project, workers=0)
    with pytest.raises(ParamsError, match=r"sweep: family: 'logreg' has no search space; add space\.logreg"):
        sweep_settings(project, family="logreg")


def test_sweep_on_two_worker_processes_survives_a_killed_worker(project, cluster, prefect_harness, monkeypatch):
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    from driftloop.config import TrainParams, load_section, read_params_file

    trials, seed = 4, 0
    params = load_section(project / "params.yaml", "train", TrainParams)
    base = params.hgb.model_dump()
    configs = sample_configs(HGB, trials, seed)
    features = str(project / "data" / "features")
    dataset = read_params_file(project / "params.yaml")["dataset"]
    expected = [run_trial(features, "hgb", base, c, params.seed, dataset) for c in configs]

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed: list[int] = []
    with Client(cluster) as client:
        pids = client.run(os.getpid)  # {worker address: pid}
        stop = threading.Event()

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                busy = [addr for addr, keys in client.processing().items() if keys]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(pids[busy[0]])
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
        watcher.start()
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        result = sweep_flow.with_options(task_runner=runner)(root=str(project), trials=trials, seed=seed)
        stop.set()
        watcher.join()
    assert killed, "no worker was killed: the sweep did not run on the cluster"
    assert [t.valid_roc_auc for t in result.trials] == expected  # identical, trial by trial
    assert [t.config for t in result.trials] == configs
    assert result.best == best_of(result.trials) and result.best.valid_roc_auc == max(expected)
    text = (project / "params.yaml").read_text()
    written = yaml.safe_load(text)["train"]["hgb"]
    assert text.startswith("# sweep test") and all(written[k] == v for k, v in result.best.config.items())


def test_sweep_command_reads_params_and_options_override(project, cluster, prefect_harness, monkeypatch):
    """`driftloop sweep`: trials and seed from params.yaml's `sweep:` (3, 5), `--trials 2` overrides; the
    trials run on the cluster `--dask-address` names; `--no-write` leaves params.yaml as it was."""
    from distributed import Client, get_task_stream
    from typer.testing import CliRunner

    from commands.main import app

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    before = (project / "params.yaml").read_text()
    with Client(cluster) as client, get_task_stream(client) as stream:
        result = CliRunner().invoke(app, ["sweep", "--root", str(project), "--trials", "2", "--dask-address",
                                          cluster.scheduler_address, "--no-write"], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(stream.data) == 2  # two trials ran on this cluster
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in result.output.splitlines()
            if line.strip().startswith("│")]  # the table's body rows (rich draws the header with ┃)  # fmt: skip
    configs = sample_configs(HGB, 2, seed=5)  # params' seed: the same configurations, in order
    assert [r[3:] for r in rows] == [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in c.values()] for c in configs]
    assert (project / "params.yaml").read_text() == before
    # every worker (one restarted after the SIGKILL above) was set up for trials: imports done by the
    # preload, one torch thread, glibc's malloc trim threshold, not Dask's 64 KiB (more CPU per fit),
    # no statistical profiler and the event-loop check every 200 ms, not 20 (CPU the trials lose)
    def worker_setup(dask_worker) -> tuple:
        import sys

        import torch

        return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), torch.get_num_threads(), "driftloop.families" in sys.modules,
                "profile" in dask_worker.periodic_callbacks, dask_worker.periodic_callbacks["tick"].callback_time)  # fmt: skip

    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)  # the nanny restarts the killed one
        setup = client.run(worker_setup)
    assert len(setup) == 2 and set(setup.values()) == {(None, 1, True, False, 200)}, setup
    bad = CliRunner().invoke(app, ["sweep", "--root", str(project), "--family", "mlpp"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "sweep: family: 'mlpp'" in bad.output
