"""`driftloop backtest` on a fixed slice: 17 days of April 2013, 200 flights a day, never vs weekly.

Real parts throughout: the project's dvc.yaml stages in-process (HGB at 20 iterations, a
one-month window), the real server over HTTP, the real gate and release plane (canary at 50%
on 60 single-row requests, so it decides within one replayed day). The two policies run in
parallel as Prefect tasks on a real `distributed.LocalCluster` of 2 worker processes; the
killed-and-resumed weekly run runs in this process, and its figures must equal the cluster's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from driftloop.io import read_json
from flows.backtest import DEFAULT_BUILD, DEFAULT_RELEASE, BacktestConfig, run_backtest
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# a tiny model on one month, judged on mechanics: the latency budget (noisy on a busy CI box) off, a low AUC floor
BUILD = {"train.hgb.max_iter": 20, "gates.max_p99_latency_ms": None, "gates.min_roc_auc": 0.5}
RELEASE = {"canary_weight": 50, "min_requests": 60, "min_labelled_rows": 60}
SPAN = {"start": dt.date(2013, 4, 1), "end": dt.date(2013, 4, 17), "rows_per_day": 200, "window_months": 1}


def config(*policies: str) -> BacktestConfig:
    return BacktestConfig(policies=policies, build={**DEFAULT_BUILD, **BUILD}, release={**DEFAULT_RELEASE, **RELEASE}, **SPAN)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prefect_harness):
    """never and weekly in parallel on 2 Dask worker processes (through Prefect), with a progress callback."""
    out = tmp_path_factory.mktemp("backtest")
    seen: dict[str, int] = {}
    result = run_backtest(config("never", "weekly"), root=ROOT, out_dir=out, workers=2,
                          on_day=lambda name, done, counts: seen.__setitem__(name, done))  # fmt: skip
    assert seen == {"never": 17, "weekly": 17}  # read from each worker's progress.json
    return out, result


def test_retrains_follow_each_policy_rule(uninterrupted):
    _, result = uninterrupted
    never, weekly = result.figures["policies"]["never"], result.figures["policies"]["weekly"]
    assert never["retrains"] == 0 and never["builds"] == [] and list(never["days_served"]) == ["v0.0.1"]
    # Sundays before the last day: Apr 7 and Apr 14, each building on the month ending that day
    assert [b["as_of"] for b in weekly["builds"]] == ["2013-04-07", "2013-04-14"]
    assert all(b["window_months"] == 1 and b["cpu_s"] > 0 for b in weekly["builds"])
    assert weekly["retrains"] == 2 == weekly["promoted"] + weekly["rejected_by_gate"] + weekly["rolled_back"]
    assert weekly["training_cpu_s"] == pytest.approx(sum(b["cpu_s"] for b in weekly["builds"]), abs=0.02)
    # every day served 200 flights; a version's days sum to the span's days
    for p in (never, weekly):
        assert [d["rows"] for d in p["days"]] == [200] * 17
        assert sum(p["days_served"].values()) == pytest.approx(17, abs=0.01)
    # the canary ran on single-row requests the day after each retrain, bulk otherwise
    canary_days = [d["day"] for d in weekly["days"] if d["canary"]]
    assert canary_days == ["2013-04-08", "2013-04-15"] and all(d["requests"] == 200 for d in weekly["days"] if d["canary"])
    if weekly["promoted"]:
        assert len(weekly["days_served"]) > 1  # a promoted version answered rows


def _log_with_labels(work: Path, policy: str) -> pd.DataFrame:
    folder = work / policy / "logs" / "flight-delay"
    log = pd.concat([pd.read_parquet(p) for p in folder.glob("date=*/part-*.parquet")], ignore_index=True)
    labels = pd.concat([pd.read_parquet(p) for p in (folder / "labels").glob("*.parquet")], ignore_index=True)
    log["row"] = log["row"].astype("int64")
    return log.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"], how="inner")


def test_served_auc_equals_the_auc_recomputed_from_the_log_and_labels(uninterrupted):
    out, result = uninterrupted
    for policy in ("never", "weekly"):
        joined = _log_with_labels(out / "work", policy)
        day = pd.to_datetime(joined["request_id"].str.split("-").str[1], format="%Y%m%d")
        week2 = joined[(day >= "2013-04-08") & (day <= "2013-04-14")]  # Monday..Sunday
        figures = result.figures["policies"][policy]
        weekly = {w["week"]: w for w in figures["weekly"]}
        assert weekly["2013-04-08"]["labelled"] == len(week2) == 7 * 200
        assert weekly["2013-04-08"]["roc_auc"] == pytest.approx(roc_auc_score(week2["label"], week2["score"]), abs=1e-12)
        assert figures["overall_roc_auc"] == pytest.approx(roc_auc_score(joined["label"], joined["score"]), abs=1e-12)
        assert figures["rows"] == 17 * 200
    # the policies served different models in week 2 only if weekly promoted one
    w = {p: {x["week"]: x["roc_auc"] for x in result.figures["policies"][p]["weekly"]} for p in ("never", "weekly")}
    assert w["never"]["2013-04-01"] == w["weekly"]["2013-04-01"]  # same starting model, same rows


class _Refs(HTMLParser):
    """Every src/href attribute of the page's tags (the inlined JS may hold URLs in its strings)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.refs += [(tag, v or "") for k, v in attrs if k in ("src", "href")]


def test_the_html_report_renders_offline(uninterrupted):
    _, result = uninterrupted
    page = Path(result.html_path).read_text()
    parser = _Refs()
    parser.feed(page)
    assert "Plotly.newPlot" in page and "<table>" in page and parser.scripts >= 2  # plotly.js inline + the chart
    assert parser.refs == []  # no external script, style or image
    assert read_json(result.json_path) == result.figures


def _comparable(figures: dict) -> dict:
    """Everything but CPU and wall times, and the canary's reasons (they quote measured latencies)."""
    times = ("training_cpu_s", "training_wall_s", "process_cpu_s", "wall_s", "builds", "events")
    out = {k: v for k, v in figures.items() if k not in times}
    out["builds"] = [{k: v for k, v in b.items() if k not in ("cpu_s", "wall_s")} for b in figures["builds"]]
    out["events"] = [{k: v for k, v in e.items() if k not in ("cpu_s", "reason")} for e in figures["events"]]
    return out


def test_a_killed_run_resumes_to_the_same_figures(uninterrupted, tmp_path):
    out, result = uninterrupted
    initial = out / "work" / "initial" / "project" / "artifacts" / "model"
    args = [sys.executable, "-m", "commands", "backtest", "--start", "2013-04-01", "--end", "2013-04-17",
            "--policy", "weekly", "--rows-per-day", "200", "--window-months", "1", "--out", str(tmp_path), "--workers", "0",
            "--initial-package", str(initial), *[f"--set={k}={json.dumps(v)}" for k, v in BUILD.items()],
            *[f"--release={k}={json.dumps(v)}" for k, v in RELEASE.items()]]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    progress = tmp_path / "work" / "weekly" / "progress.json"
    def past_the_first_canary() -> bool:
        assert proc.poll() is None, f"the backtest exited early: {proc.stderr.read().decode()[-2000:]}"
        return progress.is_file() and read_json(progress)["day"] >= "2013-04-10"

    try:  # kill it once the first retrain's canary is over (state on disk after Apr 9)
        wait_for(past_the_first_canary, 240, "the backtest's state for 2013-04-10", interval_s=0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "backtest.json").exists()
    resumed = run_backtest(config("weekly"), root=ROOT, out_dir=tmp_path, initial_package=initial)  # in-process
    # the same figures as the uninterrupted run on the Dask cluster: same builds, verdicts, log, AUCs
    assert _comparable(resumed.figures["policies"]["weekly"]) == _comparable(result.figures["policies"]["weekly"])


def test_labels_arrive_after_the_delay_and_the_drift_policy_decides_daily(uninterrupted, tmp_path):
    out, _ = uninterrupted
    initial = out / "work" / "initial" / "project" / "artifacts" / "model"
    delayed = BacktestConfig(policies=("drift",), start=dt.date(2013, 4, 1), end=dt.date(2013, 4, 5), rows_per_day=50,
                             label_delay_days=2, build={**DEFAULT_BUILD, **BUILD}, release={**DEFAULT_RELEASE, **RELEASE})  # fmt: skip
    drift = run_backtest(delayed, root=ROOT, out_dir=tmp_path, initial_package=initial).figures["policies"]["drift"]
    labels = sorted(p.name for p in (tmp_path / "work" / "drift" / "logs" / "flight-delay" / "labels").glob("*.parquet"))
    # day d's labels are written at the end of day d + 2: Apr 1-3 by Apr 5, Apr 4-5 after the span
    assert labels == [f"bt-2013-04-0{d}.parquet" for d in (1, 2, 3)]
    assert drift["rows"] == 5 * 50 and drift["weekly"][0]["labelled"] == 3 * 50
    # the drift check and policy ran every day but the last and kept the model: 50-200 rows < policy.min_rows
    assert [d["decision"] for d in drift["days"]] == ["keep"] * 4 + ["last day"]
    assert [d["detail"] for d in drift["days"][:4]] == ["insufficient evidence"] * 4
    assert drift["retrains"] == 0 and drift["process_cpu_s"] > 0


_CONFIG_THEN_CLUSTER = """
import dask
from flows.backtest import dask_cluster_config
with dask_cluster_config():
    assert dask.config.get("distributed.scheduler.worker-saturation") == 1.0
print(dask.config.get("distributed.comm.require-encryption"))  # what LocalCluster's Security() reads first
"""


def test_the_cluster_config_leaves_distributeds_defaults_in_place():
    """In a fresh interpreter (distributed not imported yet), as when the backtest runs first in a
    process: after the backtest's Dask settings, a later LocalCluster still finds distributed's config."""
    done = subprocess.run([sys.executable, "-c", _CONFIG_THEN_CLUSTER], cwd=Path(__file__).parents[2], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] in ("False", "None"), done.stdout
