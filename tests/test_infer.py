"""`driftloop.infer`: the inference rules, the YAML text loading back to the declaration, the merge."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.errors import DataError
from driftloop.infer import (
    MARGIN,
    MOSTLY,
    QUANTILES,
    infer_declaration,
    infer_range,
    merge_params,
    parse_label_rule,
    parse_time_column,
    propose_window,
    render_sections,
)
from tests.conftest import ROOT

N = 600


def _table(seed: int = 0, n: int = N) -> pd.DataFrame:
    """A small table with one column of each kind the rules tell apart."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2021-01-01") + pd.to_timedelta(
        np.sort(rng.integers(0, 120 * 24 * 3600, n)), unit="s"
    )
    frame = pd.DataFrame({
        "order_id": [f"o{i:05d}" for i in range(n)],          # identifier
        "ts": times,
        "store": rng.choice(["north", "south", "NO"], n),      # categorical with an allowed set ('NO' stays text)
        "city": rng.choice([f"c{i}" for i in range(80)], n),   # categorical, no allowed set
        "comment": [f"free text {i}" for i in rng.permutation(n)],  # unique: identifier-like text
        "items": rng.integers(1, 9, n),                        # integer codes
        "amount": rng.gamma(2.0, 10.0, n).round(2),            # numeric, never negative
        "discount": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 1, n)),  # nullable float
        "promo": rng.random(n) < 0.3,                          # bool
        "channel": "web",                                      # constant
        "note": np.where(rng.random(n) < 0.5, None, rng.choice(["x", "y"], n)),  # text with nulls
        "delivered_at": times + pd.Timedelta(hours=1),         # a second timestamp
        "day": times.strftime("%Y-%m-%d"),                     # dates as text
        "clock": times.strftime("%H:%M:%S"),                   # times as text
        "late_min": rng.normal(5, 10, n).round(),              # the label's column
    })  # fmt: skip
    return frame


def _infer(frame: pd.DataFrame | None = None, **kw):
    args = {"table": "orders", "source": "parquet", "time": "ts", "label": "late_min >= 10"} | kw
    return infer_declaration(_table() if frame is None else frame, **args)


def test_rules_on_each_kind_of_column():
    inf = _infer()
    feats, out = inf.dataset["features"], inf.excluded
    assert list(feats) == ["store", "city", "items", "amount", "discount", "promo", "hour", "day_of_week"]
    assert feats["store"] == {"dtype": "BYTES", "allowed": ["NO", "north", "south"], "mostly": MOSTLY}
    assert feats["city"] == {"dtype": "BYTES"}
    assert feats["items"] == {"dtype": "INT64", "allowed": list(range(1, 9)), "mostly": MOSTLY}
    assert (
        feats["amount"]["dtype"] == "FP32" and feats["amount"]["min"] == 0.0
    )  # no negative value seen: floor 0
    assert feats["discount"]["nullable"] is True and 0.1 < feats["discount"]["max_null_fraction"] <= 0.3
    assert feats["promo"] == {"dtype": "INT64", "allowed": [0, 1]}
    assert feats["hour"] == {"dtype": "INT64", "derive": "hour", "min": 0, "max": 23}
    assert feats["day_of_week"]["derive"] == "day_of_week"
    assert set(out) == {
        "ts",
        "late_min",
        "order_id",
        "comment",
        "channel",
        "note",
        "delivered_at",
        "day",
        "clock",
    }
    assert "as text" in out["day"] and "as text" in out["clock"]
    assert "identifier" in out["order_id"] and "constant" in out["channel"] and "nulls" in out["note"]
    assert "leak" in out["late_min"] and "timestamp" in out["delivered_at"]
    ds = inf.dataset
    assert ds["tables"]["orders"]["key"] == ["order_id"] and ds["row_id"] == "{order_id}"
    assert ds["tables"]["orders"]["order_by"] == ["ts", "order_id"]
    assert ds["slices"] == ["store"]
    assert ds["label"]["rule"] == "late_min >= 10"


def test_window_is_the_last_whole_months():
    inf = _infer()  # 2021-01-01 .. about 2021-04-30 (120 days)
    last = _table()["ts"].max().date()
    assert (
        inf.data["as_of"]
        == (dt.date(2021, 4, 30) if last == dt.date(2021, 4, 30) else dt.date(2021, 3, 31)).isoformat()
    )
    assert inf.data["window_months"] == 3 and 0 < inf.window_rows < N
    assert inf.dataset["min_rows"] <= inf.window_rows
    assert propose_window(pd.Series(pd.to_datetime(["2020-01-15", "2020-01-20"]))) == (
        dt.date(2020, 1, 31),
        1,
    )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=50, max_size=400),
    integer=st.booleans(),
)
def test_range_covers_the_quantiles_with_the_margin(values, integer):
    s = pd.Series(np.round(values) if integer else values)
    lo, hi = infer_range(s, integer=integer)
    qlo, qhi = np.quantile(s, QUANTILES)
    span = qhi - qlo if qhi > qlo else max(abs(qlo), 1.0)
    assert lo <= qlo - MARGIN * span + 1e-9 * abs(qlo) or (s.min() >= 0 and lo == 0)
    assert hi >= qhi + MARGIN * span - 1e-9 * abs(qhi)
    assert ((s >= lo) & (s <= hi)).mean() >= 1 - 2 * QUANTILES[0] - 1 / len(s)
    if s.min() >= 0:
        assert lo >= 0
    if integer:
        assert isinstance(lo, int) and isinstance(hi, int)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(_text, min_size=2, max_size=6, unique=True),
    ints=st.lists(st.integers(-(2**40), 2**40), min_size=2, max_size=30, unique=True),
    null_share=st.sampled_from([0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_yaml_text_loads_back_to_the_declaration(words, ints, null_share, seed):
    """Whatever the values (YAML-special words, quotes, colons, unicode), the text is the declaration."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(N),
        "t": pd.Timestamp("2022-03-01") + pd.to_timedelta(rng.integers(0, 90 * 86400, N), unit="s"),
        "word": rng.choice(np.array(words, dtype=object), N),
        "code": rng.choice(ints, N),
        "x": np.where(rng.random(N) < null_share, np.nan, rng.normal(0, 1e3, N)),
        "y": rng.integers(0, 2, N),
    })  # fmt: skip
    frame.loc[:1, "y"] = [0, 1]
    inf = infer_declaration(frame, table="t-1: x", source="parquet", time="t", label="y == 1")
    loaded = yaml.safe_load(render_sections(inf, command="driftloop init ..."))
    assert loaded == {"data": inf.data, "dataset": inf.dataset}


def test_merge_keeps_every_other_section_and_its_comments():
    base = (ROOT / "params.yaml").read_text()
    inf = _infer()
    merged = merge_params(base, render_sections(inf))
    old, new = yaml.safe_load(base), yaml.safe_load(merged)
    assert new["data"] == inf.data and new["dataset"] == inf.dataset
    assert {k: v for k, v in new.items() if k not in ("data", "dataset")} == {
        k: v for k, v in old.items() if k not in ("data", "dataset")
    }
    assert list(new)[:2] == ["data", "dataset"]  # where data was
    keys = re.findall(r"^(\w+):", base, flags=re.M)
    after = keys[max(keys.index(k) for k in ("data", "dataset") if k in keys) + 1]  # the section after them
    tail = base[base.index(f"\n{after}:") :]
    assert merged.endswith(tail)  # every other section, comments included, byte for byte
    assert merged.startswith(base.splitlines()[0] + "\n")  # the file's leading comment stays
    assert (
        merged.count("\ndataset:") == 1 and "WHAT the model learns" not in merged
    )  # the old block's comments went
    assert merge_params(merged, render_sections(inf)) == merged  # a second init replaces, never appends


@pytest.mark.parametrize("rule,expected", [
    ("arr_delay >= 15", ("arr_delay", ">=", 15.0)),
    ("  problem=='suspicious' ", ("problem", "==", "suspicious")),
    ('size != "L"', ("size", "!=", "L")),
    ("x < -2.5", ("x", "<", -2.5)),
])  # fmt: skip
def test_label_rule_parses(rule, expected):
    r = parse_label_rule(rule)
    assert (r.column, r.op, r.value) == expected


def test_proposed_time_features_are_declared_derive_kinds():
    from driftloop.dataset import DERIVED
    from driftloop.infer import _PROPOSED

    assert set(_PROPOSED) <= set(DERIVED)


def test_label_rule_leaves_null_rows_unlabelled():
    r = parse_label_rule("v > 1")
    assert r.apply(pd.Series([0.0, 2.0, np.nan])).tolist() == [0, 1, pd.NA]


@pytest.mark.parametrize("values,wanted", [
    (pd.Series(["2017-01-01T06:00:42Z", "2017-01-01T07:00:00+01:00"]), ["2017-01-01 06:00:42", "2017-01-01 06:00:00"]),
    (pd.Series(["2017-01-01 06:00:42", "2017-01-02"]), ["2017-01-01 06:00:42", "2017-01-02 00:00:00"]),
    (pd.Series(pd.to_datetime(["2017-01-01 06:00"]).tz_localize("America/Chicago")), ["2017-01-01 12:00:00"]),
])  # fmt: skip
def test_time_column_is_naive_utc(values, wanted):
    assert parse_time_column(values, "t").astype(str).tolist() == wanted


@pytest.mark.parametrize("mutate,kw,match", [
    (lambda f: f.head(100), {}, "100 rows; driftloop init needs at least"),
    (lambda f: f, {"time": "tss"}, "--time tss: no such column (did you mean ts?)"),
    (lambda f: f.assign(ts=f["ts"].astype(str).where(f.index != 5, "yesterday")), {}, "--time ts: 1 of 600 values are not ISO-8601"),
    (lambda f: f.assign(ts=np.arange(len(f))), {}, "--time ts: holds numbers"),
    (lambda f: f.assign(ts=f["ts"].where(f.index != 3)), {}, "--time ts: 1 rows have no time"),
    (lambda f: f, {"label": "late_min >= 1000"}, "constant label (false for all 600"),
    (lambda f: f, {"label": "late_min => 10"}, "cannot parse 'late_min => 10'; write COLUMN OP VALUE"),
    (lambda f: f, {"label": "late >= 10"}, "no column 'late'"),
    (lambda f: f, {"label": "late_min >= ten"}, "is neither a number nor a quoted string"),
    (lambda f: f, {"label": "store == 1"}, "store holds text; quote the value"),
    (lambda f: f, {"label": "late_min == 'x'"}, "holds numbers but the value is quoted text"),
    (lambda f: f.assign(late_min=np.nan), {}, "null in every row"),
])  # fmt: skip
def test_refusals_name_the_problem(mutate, kw, match):
    with pytest.raises(DataError, match=match.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        _infer(mutate(_table()), **kw)


def test_the_declaration_loads_as_the_dataset_model():
    """Once the `dataset:` section is typed (driftloop/dataset.py), what init infers loads unchanged."""
    dataset = pytest.importorskip("driftloop.dataset")
    model = dataset.Dataset.model_validate(_infer().dataset)
    assert list(model.features) == list(_infer().dataset["features"])


def test_a_table_without_a_unique_column_needs_a_row_id():
    """The row id is the replay's request id and the labels' join key: init never writes a declaration without one."""
    frame = _table().drop(columns=["order_id", "comment"])  # nothing unique per row left
    with pytest.raises(DataError, match=r"no column of orders is unique per row.*add an id column.*--row-id"):
        _infer(frame)
    with pytest.raises(DataError, match=r"--row-id '\{date\}/\{store\}': \d+ of 600 rows of orders share an id"):
        _infer(frame, row_id="{date}/{store}")
    with pytest.raises(DataError, match=r"--row-id '\{ts\}/\{shop\}': no column 'shop'; columns: ts, store"):
        _infer(frame, row_id="{ts}/{shop}")
    inf = _infer(frame, row_id="{ts}/{city}")
    dataset = pytest.importorskip("driftloop.dataset").Dataset.model_validate(inf.dataset)
    assert inf.dataset["row_id"] == "{ts}/{city}" and "city" in inf.dataset["tables"]["orders"]["columns"]
    ids = dataset.row_ids(frame, dataset.local_date(frame))  # what the features stage writes: builds, unique
    assert ids.is_unique and len(ids) == len(frame)
    assert yaml.safe_load(render_sections(inf))["dataset"] == inf.dataset
