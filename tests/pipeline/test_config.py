"""Typed params: an unknown or mistyped key fails at load with its dotted name."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from driftloop.config import SECTIONS, DataParams, GatesParams, TrainParams, load_section, parse_section
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
    with pytest.raises(ParamsError, match="unknown section.*gatez"):
        load_section(path, "gates", GatesParams)
    with pytest.raises(ParamsError, match="not found"):
        load_section(tmp_path / "nope.yaml", "data", DataParams)


def test_empty_gate_rule_set_is_an_error():
    with pytest.raises(ParamsError, match="no gate rule is set"):
        parse_section("gates", {}, GatesParams)
    with pytest.raises(ParamsError, match="no gate rule is set"):
        parse_section("gates", {"min_roc_auc": None}, GatesParams)


@given(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2030, 12, 31)), st.integers(1, 24))
def test_window_bounds_cover_whole_months(as_of, months):
    start, end = window_bounds(as_of, months)
    assert end == as_of
    assert start <= end
    # the window is `months` calendar months long: one more month back would start before it
    assert (end - start).days <= 31 * months
    assert (end - start).days >= 28 * months - 1


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
