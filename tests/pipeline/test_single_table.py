"""Issue 18: a single-table dataset (no join) goes through snapshot -> validate -> features from its
declaration alone: no code names its columns.

The table is synthetic but shaped like a real one (a bike-share trip log: one row per trip, an ISO
UTC start time, a station code, a member flag, a duration; the label is "the trip took over 20
minutes"), seeded; 60 days of hourly-ish trips, read from a parquet file as a user's source would be.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from driftloop.config import DataParams, FeaturesParams, parse_section
from driftloop.dataset import Dataset
from tasks.features import build_features
from tasks.snapshot import read_source, take_snapshot
from tasks.validate import validate_snapshot

DECLARATION = {
    "name": "bike-trips",
    "source": "parquet",
    "min_rows": 500,
    "tables": {"trips": {"order_by": ["started_at", "trip_id"], "key": ["trip_id"]}},
    "time": {"column": "started_at"},
    "row_id": "{date}/{trip_id}",
    "label": {"rule": "duration_min > 20", "max_unknown_fraction": 0.05},
    "slices": ["station"],
    "features": {
        "station": {"dtype": "BYTES", "regex": "^S[0-9]{2}$"},
        "member": {"dtype": "BYTES", "allowed": ["yes", "no"]},
        "hour": {"dtype": "INT64", "derive": "hour", "min": 0, "max": 23},
        "weekday": {"dtype": "INT64", "derive": "day_of_week", "min": 0, "max": 6},
        "temp_c": {"dtype": "FP32", "nullable": True, "max_null_fraction": 0.2, "min": -30, "max": 45},
    },
}


def trips(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 60 * 86400, n)), unit="s")
    temp = rng.normal(12, 6, n)
    temp[rng.random(n) < 0.05] = np.nan
    duration = rng.gamma(2.0, 8.0, n) + 5 * (rng.random(n) < 0.3)
    duration[rng.random(n) < 0.01] = np.nan  # a lost bike: no duration, no label
    return pd.DataFrame({
        "trip_id": np.arange(n, dtype=np.int64) + 10_000,
        "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "station": [f"S{k:02d}" for k in rng.integers(0, 12, n)],
        "member": rng.choice(["yes", "no"], n),
        "temp_c": temp,
        "duration_min": duration,
    })  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    trips().to_parquet(folder / "trips.parquet", index=False)
    dataset = parse_section("dataset", DECLARATION, Dataset)
    data = DataParams(source_dir=str(folder), as_of=dt.date(2024, 4, 29), window_months=1)
    snap = take_snapshot(read_source(dataset, data), data, dataset)
    return dataset, snap


def test_snapshot_validate_features_without_a_join(built):
    dataset, snap = built
    assert list(snap.tables) == ["trips"] and dataset.joins == {}
    report = validate_snapshot(snap.tables, dataset)
    assert report["success"], report["failures"]
    assert report["cross_table"] == []  # nothing to join
    checked = {(e["expectation"], str(e["column"])) for e in report["tables"]["trips"]["expectations"]}
    assert {("expect_column_values_to_match_regex", "station"), ("expect_column_values_to_be_in_set", "member"),
            ("expect_column_values_to_be_unique", "trip_id"), ("expect_column_values_to_not_be_null", "started_at")} <= checked  # fmt: skip
    splits, feats = build_features(snap.tables, dataset, FeaturesParams(test_days=7, valid_days=7))
    assert feats["rows_without_match"] == {} and feats["unlabelled_dropped"] == int(snap.main["duration_min"].isna().sum()) > 0
    test = splits["test"]
    assert list(test.columns) == ["station", "member", "hour", "weekday", "temp_c", "label", "started_at", "month", "flight_key"]
    raw = snap.main.set_index("trip_id")
    ids = test["flight_key"].str.split("/").str[1].astype(int)
    assert (test["label"].to_numpy() == (raw.loc[ids, "duration_min"] > 20).astype(np.int8).to_numpy()).all()
    started = pd.to_datetime(raw.loc[ids, "started_at"], utc=True)
    assert (test["hour"].to_numpy() == started.dt.hour.to_numpy()).all()
    assert (test["weekday"].to_numpy() == started.dt.dayofweek.to_numpy()).all()
    assert test["temp_c"].dtype == np.float32 and test["hour"].dtype == np.int64 and test["station"].dtype == object
    assert pd.to_datetime(splits["train"]["started_at"]).max() < pd.to_datetime(test["started_at"]).min()


def test_the_generated_suite_catches_a_bad_value(built):
    dataset, snap = built
    bad = snap.main.copy()
    bad.loc[:9, "station"] = "north"  # breaks the declared regex
    report = validate_snapshot({"trips": bad}, dataset)
    assert not report["success"]
    assert any(f.startswith("trips.station: expect_column_values_to_match_regex") for f in report["failures"])
