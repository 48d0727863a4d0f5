"""Stages `train` and `export`: every model family through the registry, seeded, ONE ONNX graph each,
raw columns in, parity held (trees at every split threshold too), MLP training byte-for-byte repeatable."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.errors import ParityError
from driftloop.families import FAMILIES
from driftloop.families.hgb import exact_thresholds, round_down_to_float32, threshold_rows
from driftloop.onnx_graph import keep_positive_class, run_graph, sklearn_to_onnx
from driftloop.schema import OUTPUT
from tasks.export import check_parity, export_family
from tests.conftest import ROOT, default_dataset

DATASET = default_dataset()
FEATURES, FLOAT, INPUTS = DATASET.feature_names, DATASET.floating, DATASET.input_specs()
to_onnx_feeds = DATASET.to_onnx_feeds

ONNX_TYPES = {"BYTES": onnx.TensorProto.STRING, "INT64": onnx.TensorProto.INT64, "FP32": onnx.TensorProto.FLOAT}


def test_every_registered_family_is_trained(trained):
    """The third family came in through the plugin path only (a module + a params section)."""
    assert list(trained) == list(FAMILIES) == ["hgb", "mlp", "logreg"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_graph_inputs_are_the_raw_columns_named_and_typed(exported, family):
    graph = exported[family].graph
    names = [i.name for i in graph.input]
    assert names == list(FEATURES)
    for inp in graph.input:
        assert inp.type.tensor_type.elem_type == ONNX_TYPES[DATASET.datatype_of(inp.name)], inp.name
    assert [o.name for o in graph.output] == [OUTPUT]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parity_on_the_whole_test_split(exported, trained, splits, family):
    test = splits["test"]
    p_onnx = run_graph(exported[family], to_onnx_feeds(test))
    assert np.max(np.abs(p_onnx - FAMILIES[family].predict(trained[family], test))) <= 1e-4


# logreg's LinearClassifier takes another GEMM kernel for one row than for many (float32 sums in
# another order: seen 9e-8); the gate's max_batch_invariance (1e-5) allows that, not more.
@pytest.mark.parametrize("family, bound", [("hgb", 0.0), ("mlp", 0.0), ("logreg", 1e-6)])
def test_batch_invariance(exported, splits, family, bound):
    feeds = to_onnx_feeds(splits["test"].head(1024))
    batch = run_graph(exported[family], feeds)
    alone = [run_graph(exported[family], {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(0, 1024, 97)]
    assert np.max(np.abs(np.array(alone) - batch[::97])) <= bound


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    carrier=st.sampled_from(["UA", "ZZ", ""]),
    dest=st.sampled_from(["IAH", "XXX"]),
    nan_mask=st.lists(st.booleans(), min_size=len(FLOAT), max_size=len(FLOAT)),
)
def test_unseen_categories_and_missing_weather_keep_parity(exported, trained, splits, carrier, dest, nan_mask):
    """Parity also holds off the training distribution: unknown codes, NaN anywhere in the weather."""
    rows = splits["test"].head(5).copy()
    rows["carrier"], rows["dest"] = carrier, dest
    for col, masked in zip(FLOAT, nan_mask, strict=True):
        if masked:
            rows[col] = np.float32("nan")
    for family in FAMILIES:
        p = run_graph(exported[family], to_onnx_feeds(rows))
        assert np.all(np.isfinite(p)) and np.max(np.abs(p - FAMILIES[family].predict(trained[family], rows))) <= 1e-4


# ------------------------------------------------------------------ trees at their split thresholds
@settings(max_examples=2000, deadline=None)
@given(t=st.floats(allow_nan=False, width=64), x=st.floats(allow_nan=False, width=32))
def test_rounded_down_threshold_decides_like_the_double_one(t, x):
    """The proof in driftloop/families/hgb.py, checked: for float32 x, x <= t (float64) iff x <= w."""
    w = round_down_to_float32(np.array([t]))[0]
    assert w.dtype == np.float32 and float(w) <= t
    assert (np.float64(np.float32(x)) <= t) == (np.float32(x) <= w)


@pytest.fixture(scope="module")
def at_thresholds(trained, splits):
    return threshold_rows(trained["hgb"], splits["test"])


def test_trees_decide_like_the_model_at_and_next_to_every_split_threshold(exported, trained, at_thresholds):
    model = trained["hgb"].named_steps["model"]
    splits_seen = {(f, t) for (tree,) in model._predictors for f, t, leaf in
                   zip(tree.nodes["feature_idx"], tree.nodes["num_threshold"], tree.nodes["is_leaf"], strict=True) if not leaf}  # fmt: skip
    assert len(at_thresholds) == 3 * len(splits_seen) > 300
    native = trained["hgb"].predict_proba(at_thresholds[list(FEATURES)])[:, 1]
    p = run_graph(exported["hgb"], to_onnx_feeds(at_thresholds))
    assert np.max(np.abs(p - native)) <= 1e-6
    assert np.array_equal(p >= 0.5, native >= 0.5)


def test_nearest_rounded_thresholds_would_fail_on_those_rows(trained, at_thresholds):
    """The rows bite: skl2onnx's own graph (thresholds rounded to nearest) misroutes some of them."""
    pipe = trained["hgb"]
    naive = keep_positive_class(sklearn_to_onnx(pipe, 18, name="hgb", inputs=INPUTS, zipmap_off=pipe.steps[-1][1]))
    native = pipe.predict_proba(at_thresholds[list(FEATURES)])[:, 1]
    assert np.max(np.abs(run_graph(naive, to_onnx_feeds(at_thresholds)) - native)) > 1e-4


def test_exact_thresholds_refuses_a_graph_that_does_not_line_up(trained, splits):
    from driftloop.families.hgb import make_hgb

    other = make_hgb(FAMILIES["hgb"].params_model(max_iter=3), 1, DATASET).fit(splits["train"][list(FEATURES)], splits["train"]["label"])
    graph = sklearn_to_onnx(other, 18, name="hgb", inputs=INPUTS, zipmap_off=other.steps[-1][1])
    with pytest.raises(RuntimeError, match="do not line up"):
        exact_thresholds(graph, trained["hgb"].steps[-1][1])


def test_export_checks_parity_on_threshold_rows(trained, splits, params):
    from driftloop.config import ExportParams

    _, report = export_family("hgb", trained["hgb"], splits["test"], ExportParams(), INPUTS)
    assert report["passed"] and report["extra_rows"] > 300 and report["rows"] == len(splits["test"]) + report["extra_rows"]


# ------------------------------------------------------------------ training
def test_training_curves_are_recorded(fitted, train_params):
    curves = fitted["mlp"][1]
    assert [c["epoch"] for c in curves] == list(range(1, train_params.mlp.epochs + 1))
    assert all(0.5 < c["valid_roc_auc"] < 1 for c in curves)


def test_models_learn_something(exported, splits):
    from sklearn.metrics import roc_auc_score

    test = splits["test"]
    for family in FAMILIES:
        assert roc_auc_score(test["label"], run_graph(exported[family], to_onnx_feeds(test))) > 0.58  # random is 0.5


def test_parity_check_fails_loudly():
    with pytest.raises(ParityError, match=r"differ by 0\.01 at test row 1"):
        check_parity("mlp", np.array([0.5, 0.51]), np.array([0.5, 0.5]), 1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_is_byte_for_byte_reproducible(trained, exported, family):
    """Same models -> same bytes, or DVC would see a new graph (and rerun everything after it) each time."""
    assert FAMILIES[family].to_onnx(trained[family], 18, INPUTS)[family].SerializeToString() == exported[family].SerializeToString()


_TRAIN_AND_EXPORT = """
import hashlib, sys
import pandas as pd
from driftloop.config import TrainParams, parse_section
from driftloop.dataset import Dataset
from driftloop.families import FAMILIES
import yaml
raw = yaml.safe_load(open(sys.argv[3]))
params = parse_section("train", raw["train"], TrainParams)
dataset = parse_section("dataset", raw["dataset"], Dataset)
train, valid = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
fitted, _ = FAMILIES["mlp"].fit(train, valid, params.mlp, params.seed, dataset)
print(hashlib.sha256(FAMILIES["mlp"].to_onnx(fitted, 18, dataset.input_specs())["mlp"].SerializeToString()).hexdigest())
"""


def test_mlp_training_gives_the_same_model_onnx_bytes_in_two_processes(splits, params_file, tmp_path):
    """Deterministic on one machine: two fresh processes, the second running the library from another
    folder (as a second clone would), train and export byte-identical graphs. torch's exporter writes
    each node's stack trace, with the source file's absolute path, unless it is stripped."""
    import shutil

    train, valid = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    splits["train"].head(6000).to_parquet(train)
    splits["valid"].to_parquet(valid)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "driftloop", elsewhere / "driftloop", ignore=shutil.ignore_patterns("__pycache__"))
    procs = [  # both at once: two fresh processes either way, and the one waits less on the other core
        subprocess.Popen([sys.executable, "-c", _TRAIN_AND_EXPORT, str(train), str(valid), str(params_file)],
                         env=dict(os.environ, PYTHONPATH=str(where)), cwd=where, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for where in (ROOT, elsewhere)
    ]  # fmt: skip
    digests = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        digests.append(out.split()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    assert digests[0] != hashlib.sha256(b"").hexdigest()
