"""The `dataset:` declaration: the default loads, and every rule refuses with the key and the fix."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import check_params, parse_section
from driftloop.dataset import Dataset
from driftloop.errors import DataError, ParamsError
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())["dataset"]


def _load(raw: dict) -> Dataset:
    return parse_section("dataset", raw, Dataset)


def _edit(raw: dict, **changes) -> dict:
    out = copy.deepcopy(raw)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = out
        for part in path:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return out


def test_default_declaration_loads(raw):
    ds = _load(raw)
    assert ds.main_table == "flights" and list(ds.joins) == ["weather"]
    assert ds.feature_names[:3] == ds.categorical and ds.nullable == ds.floating
    assert len(ds.feature_names) == 16 and ds.label.op == ">=" and ds.label.value == 15.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"features": {}}, r"dataset\.features: .*at least 1"),
        ({"features__carrier__dtype": "STRING"}, r"dataset\.features\.carrier\.dtype: Input should be 'BYTES'"),
        ({"features__carrier__colour": "red"}, r"dataset\.features\.carrier\.colour: unknown key"),
        ({"features__temp__table": "wx"}, r"features\.temp\.table: 'wx' is not a declared table"),
        ({"features__temp__nullable": False}, r"features\.temp: .*max_null_fraction is set but nullable is false"),
        ({"features__hour__nullable": True}, r"features\.hour: nullable INT64 feature; only FP32"),
        ({"features__hour__min": 30}, r"features\.hour: min 30 > max 23; swap them"),
        ({"features__day_of_week__derive": "weekday"}, r"features\.day_of_week\.derive: Input should be 'day_of_week'"),
        ({"features__carrier__min": 1}, r"min/max on a BYTES feature"),
        ({"features__carrier__regex": "("}, r"features\.carrier\.regex: not a valid regular expression"),
        ({"label__rule": "arr_delay is late"}, r"dataset\.label\.rule: cannot parse 'arr_delay is late'"),
        ({"label__rule": "distance >= 100"}, r"label\.rule: distance is also a feature"),
        ({"tables__weather__join": {"keys": ["origin", "station"]}}, r"join\.keys names station, not in columns"),
        ({"tables__weather__join": None}, r"tables\.weather: a table after the first .* needs join"),
        ({"time__column": "sched_time"}, r"time\.column: sched_time not in tables\.flights\.columns"),
        ({"row_id": "{date}/{tail}"}, r"row_id: tail not in tables\.flights\.columns"),
        ({"slices": ["temp"]}, r"slices: temp is not a BYTES/INT64 feature"),
        ({"source": "excel"}, r"dataset\.source: unknown source 'excel'"),
    ],
)
def test_each_rule_names_the_key_and_the_fix(raw, changes, message):
    with pytest.raises(ParamsError, match=message):
        _load(_edit(raw, **changes))


def test_a_reserved_or_duplicate_feature_name_is_refused(raw, tmp_path):
    bad = _edit(raw)
    bad["features"]["label"] = {"dtype": "INT64"}
    with pytest.raises(ParamsError, match=r"features\.label: reserved name"):
        _load(bad)
    text = (ROOT / "params.yaml").read_text().replace("    dewp:", "    temp: {dtype: FP32, table: weather, nullable: true}\n    dewp:", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"key 'temp' appears twice in one mapping \(line \d+\); keep one"):
        check_params(tmp_path / "params.yaml")


def test_frames_label_row_id_and_derived_features(raw):
    ds = _load(raw)
    frame = pd.DataFrame({"year": [2013, 2013], "month": [1, 1], "day": [6, 7], "carrier": ["UA", "B6"],
                          "flight": [1545, 7], "origin": ["EWR", "JFK"], "arr_delay": [15.0, 14.0],
                          "time_hour": ["2013-01-06T10:00:00Z", "2013-01-08T04:00:00Z"]})  # fmt: skip
    date = ds.local_date(frame)
    assert list(ds.row_ids(frame, date)) == ["2013-01-06/UA1545/EWR", "2013-01-07/B67/JFK"]
    assert list(ds.label_of(frame)) == [1, 0] and ds.label_of(frame).dtype == np.int8
    assert list(ds.derive(frame, date)["day_of_week"]) == [6, 0]  # local date: Sunday, Monday (not UTC's Tuesday)
    with pytest.raises(DataError, match="have no arr_delay; drop them first"):
        ds.label_of(frame.assign(arr_delay=[np.nan, 1.0]))
