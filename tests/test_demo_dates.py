"""`driftloop demo`'s dates come from the declared dataset's time range, not from the flights of 2013."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from commands.demo import DemoError, cause_in, data_range, plan_dates
from commands.main import app
from driftloop.cli_init import build_params_text
from tests.conftest import ROOT

D = dt.date


def churn_table(n: int = 3000, months: int = 12, seed: int = 0) -> pd.DataFrame:
    """The newcomer's table, small: a year of 2024, no flights column, a label `churned`."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01")
    span_s = int((start + pd.DateOffset(months=months) - start).total_seconds())
    t = start + pd.to_timedelta(np.sort(rng.integers(0, span_s, n)), unit="s")
    return pd.DataFrame({
        "customer_id": np.arange(n),
        "event_time": t,
        "tenure": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2, 10, n)),
        "spend": rng.normal(50, 10, n) + np.linspace(0, 30, n),  # drifts upward
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "churned": (rng.random(n) < 0.3).astype(int),
    })  # fmt: skip


def declared(tmp_path: Path, frame: pd.DataFrame) -> Path:
    """A project folder whose params.yaml is what `driftloop init` writes for `frame`."""
    (tmp_path / "data/source").mkdir(parents=True)
    frame.to_parquet(tmp_path / "data/source/churn.parquet", index=False)
    shutil.copy(ROOT / "params.yaml", tmp_path / "base.yaml")
    text, _ = build_params_text("parquet:data/source/churn.parquet", "event_time", "churned == 1",
                                tmp_path / "params.yaml", tmp_path / "base.yaml")  # fmt: skip
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_the_flights_demo_keeps_its_dates():
    dates = plan_dates(D(2013, 1, 1), D(2013, 12, 31), D(2013, 3, 31), 3)
    assert (dates.first_as_of, dates.window_months, dates.moved) == (D(2013, 3, 31), 3, False)
    assert dates.drift == [(2013, 7), (2013, 8)] and dates.canary == [(2013, 9), (2013, 10)]
    assert dates.check_as_of == D(2013, 8, 31) and dates.span_hours == 62 * 24


def test_dates_of_a_declared_dataset_come_from_its_time_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data.source_dir is relative to the project
    params = declared(tmp_path, churn_table())
    first, last, dataset = data_range(params)
    assert dataset.name == "churn" and first == D(2024, 1, 1) and last.year == 2024
    data = yaml.safe_load(params.read_text())["data"]
    assert data["as_of"] == "2024-12-31"  # init's window: the last whole months, nothing left to replay after it
    dates = plan_dates(first, last, D.fromisoformat(data["as_of"]), data["window_months"])
    assert dates.moved and (dates.first_as_of, dates.window_months) == (D(2024, 3, 31), 3)
    assert dates.drift == [(2024, 7), (2024, 8)] and dates.canary == [(2024, 9), (2024, 10)]
    assert dates.check_as_of == D(2024, 8, 31)
    times = pd.read_parquet(tmp_path / "data/source/churn.parquet")["event_time"].dt.date
    retrain = (times > D(2024, 5, 31)) & (times <= dates.check_as_of)  # policy.retrain_window_months: 3
    assert retrain.sum() > 500  # the retrain's snapshot selects rows of this table


def test_overrides_and_short_data():
    small = plan_dates(D(2013, 1, 1), D(2013, 12, 31), D(2013, 2, 14), 1, drift_months=[7])  # the e2e demo's
    assert small.drift == [(2013, 7)] and small.canary == [(2013, 9), (2013, 10)] and not small.moved
    short = plan_dates(D(2024, 1, 1), D(2024, 3, 31), D(2024, 3, 31), 3)  # 3 months: train 1, drift 2, canary = drift
    assert (short.first_as_of, short.drift, short.canary) == (D(2024, 1, 31), [(2024, 2), (2024, 3)], [(2024, 2), (2024, 3)])
    pinned = plan_dates(D(2024, 1, 1), D(2024, 12, 31), D(2024, 12, 31), 3, first_as_of=D(2024, 5, 31))
    assert pinned.drift == [(2024, 9), (2024, 10)] and pinned.canary == [(2024, 11), (2024, 12)]
    with pytest.raises(DemoError, match=r"spans 2024-01-01..2024-02-20, 1 whole month\(s\); the demo needs at least 3"):
        plan_dates(D(2024, 1, 1), D(2024, 2, 20), D(2024, 1, 31), 1)
    with pytest.raises(DemoError, match=r"--drift-months 2: no whole month 2 in the data after the first model's window"):
        plan_dates(D(2013, 1, 1), D(2013, 12, 31), D(2013, 3, 31), 3, drift_months=[2])


def test_a_failed_step_is_one_error_line_with_its_cause(tmp_path, monkeypatch):
    log = ("Encountered exception during execution:\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
           "driftloop.errors.DataError: data.as_of=2013-08-31 with 3 month(s) selects no churn rows\n\n"
           "Finished in state Failed('Flow run encountered an exception.')\n")  # fmt: skip
    assert cause_in(log) == "driftloop.errors.DataError: data.as_of=2013-08-31 with 3 month(s) selects no churn rows"
    stage = "error: snapshot: data.as_of=2013-08-31 selects no rows\n" + log.replace("DataError", "CalledProcessError")
    assert cause_in(stage) == "error: snapshot: data.as_of=2013-08-31 selects no rows"  # the stage's own line first
    monkeypatch.chdir(tmp_path)
    declared(tmp_path, churn_table(n=600, months=2))  # two months: too short for a demo
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / ".git").mkdir()
    res = CliRunner().invoke(app, ["demo", "--root", str(tmp_path), "--workdir", str(tmp_path / "scratch")])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 whole month(s); the demo needs at least 3" in errors[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "scratch").exists()
