"""Stage `features`: weather at the scheduled hour, the label, a split by time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import FeaturesParams
from driftloop.errors import DataError
from driftloop.io import write_json
from driftloop.schema import LABEL
from tasks.features import build_features
from tasks.snapshot import write_snapshot
from tests.conftest import ROOT


def test_split_is_by_time_never_random(splits):
    train, valid, test = (pd.to_datetime(splits[n]["time_hour"]) for n in ("train", "valid", "test"))
    assert train.max() < valid.min() and valid.max() < test.min()
    test_days = pd.to_datetime(splits["test"]["flight_key"].str[:10]).dt.date.nunique()
    assert test_days == 7


def test_label_and_cancelled_flights(snapshot, params, dataset):
    fp = FeaturesParams(**params["features"])
    splits, report = build_features(snapshot.tables, dataset, fp)
    total = sum(len(s) for s in splits.values())
    cancelled = int(snapshot.tables["flights"]["arr_delay"].isna().sum())
    assert report["unlabelled_dropped"] == cancelled > 0
    assert total == len(snapshot.tables["flights"]) - cancelled
    keyed = snapshot.tables["flights"].dropna(subset=["arr_delay"]).assign(
        key=lambda f: pd.to_datetime(f[["year", "month", "day"]]).dt.strftime("%Y-%m-%d") + "/" + f["carrier"]
        + f["flight"].astype(str) + "/" + f["origin"]
    ).set_index("key")  # fmt: skip
    allrows = pd.concat(splits.values()).set_index("flight_key")
    expected = (keyed.loc[allrows.index, "arr_delay"] >= 15).astype(np.int8)
    assert (allrows[LABEL] == expected.to_numpy()).all()


def test_weather_is_joined_at_the_scheduled_hour(snapshot, splits):
    for i in (0, 100, 5000):
        row = splits["train"].iloc[i]
        origin = row["flight_key"].split("/")[2]
        wx = snapshot.tables["weather"][(snapshot.tables["weather"]["origin"] == origin) & (snapshot.tables["weather"]["time_hour"] == row["time_hour"])]
        assert len(wx) == 1
        assert np.isclose(row["temp"], wx["temp"].iloc[0]) and np.isclose(row["visib"], wx["visib"].iloc[0])


def test_dtypes_match_the_schema(splits, dataset):
    frame = splits["test"]
    assert list(frame.columns) == [*dataset.feature_names, LABEL, "time_hour", "month", "flight_key"]
    assert frame["carrier"].dtype == object and frame["hour"].dtype == np.int64
    assert all(frame[c].dtype == np.float32 for c in dataset.floating)
    assert frame["wind_gust"].isna().any()  # nulls are kept as NaN for the graphs


def test_too_short_window_is_a_clear_error(snapshot, dataset):
    with pytest.raises(DataError, match="split is empty"):
        build_features(snapshot.tables, dataset, FeaturesParams(test_days=20, valid_days=20))


def _features_cli(folder, snapshot, params, verdict):
    """Run `python -m tasks.features` on the slice with a hand-written validation verdict."""
    folder.mkdir()
    manifest = write_snapshot(snapshot, folder / "snap", "time_hour")
    write_json(folder / "validation.json", verdict(manifest))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "tasks.features", "--params", str(folder / "params.yaml"), "--snapshot", str(folder / "snap"),
         "--validation", str(folder / "validation.json"), "--out", str(folder / "features"),
         "--report", str(folder / "features.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_builds_from_a_passed_verdict_and_refuses_a_stale_one(snapshot, params, tmp_path):
    ok = _features_cli(tmp_path / "a", snapshot, params, lambda m: {"success": True, "failures": [], "snapshot": m["sha256"]})
    assert ok.returncode == 0, ok.stderr
    assert {p.name for p in (tmp_path / "a" / "features").iterdir()} == {"train.parquet", "valid.parquet", "test.parquet"}
    stale = _features_cli(tmp_path / "b", snapshot, params,
                          lambda m: {"success": True, "failures": [], "snapshot": {"flights.parquet": "0" * 64}})  # fmt: skip
    assert stale.returncode == 2
    (line,) = [x for x in stale.stderr.splitlines() if x.startswith("error:")]
    assert "judged another snapshot than this one: rerun validate" in line
    assert not (tmp_path / "b" / "features").exists()
