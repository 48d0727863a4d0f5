"""Stages `train` and `export`: seeded models and ONE ONNX graph each, raw columns in, parity held."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.errors import ParityError
from driftloop.mlp import predict_mlp
from driftloop.onnx_graph import run_graph
from driftloop.schema import CATEGORICAL, FEATURES, FLOAT, INTEGER, OUTPUT, to_onnx_feeds
from tasks.export import check_parity
from tasks.train import train_mlp

ONNX_TYPES = {"BYTES": onnx.TensorProto.STRING, "INT64": onnx.TensorProto.INT64, "FP32": onnx.TensorProto.FLOAT}


def native_scores(trained, frame):
    return {
        "hgb": trained["hgb"].predict_proba(frame[list(FEATURES)])[:, 1],
        "mlp": predict_mlp(trained["mlp"], trained["pre"].transform(frame[list(FEATURES)]).astype(np.float32)),
    }


@pytest.mark.parametrize("family", ["hgb", "mlp"])
def test_graph_inputs_are_the_raw_columns_named_and_typed(exported, family):
    graph = exported[family].graph
    names = [i.name for i in graph.input]
    assert names == list(FEATURES)
    for inp in graph.input:
        kind = "BYTES" if inp.name in CATEGORICAL else "INT64" if inp.name in INTEGER else "FP32"
        assert inp.type.tensor_type.elem_type == ONNX_TYPES[kind], inp.name
    assert [o.name for o in graph.output] == [OUTPUT]


@pytest.mark.parametrize("family", ["hgb", "mlp"])
def test_parity_on_the_whole_test_split(exported, trained, splits, family):
    test = splits["test"]
    p_onnx = run_graph(exported[family], to_onnx_feeds(test))
    assert np.max(np.abs(p_onnx - native_scores(trained, test)[family])) <= 1e-4


@pytest.mark.parametrize("family", ["hgb", "mlp"])
def test_batch_invariance(exported, splits, family):
    feeds = to_onnx_feeds(splits["test"].head(1024))
    batch = run_graph(exported[family], feeds)
    alone = [run_graph(exported[family], {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(0, 1024, 97)]
    assert np.max(np.abs(np.array(alone) - batch[::97])) == 0.0


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
    native = native_scores(trained, rows)
    for family in ("hgb", "mlp"):
        p = run_graph(exported[family], to_onnx_feeds(rows))
        assert np.all(np.isfinite(p)) and np.max(np.abs(p - native[family])) <= 1e-4


def test_training_is_seeded(splits, train_params, trained):
    _, again, _ = train_mlp(splits["train"], splits["valid"], train_params)
    for a, b in zip(again.state_dict().values(), trained["mlp"].state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


def test_training_curves_are_recorded(trained, train_params):
    curves = trained["mlp_curves"]
    assert [c["epoch"] for c in curves] == list(range(1, train_params.mlp.epochs + 1))
    assert all(0.5 < c["valid_roc_auc"] < 1 for c in curves)


def test_models_learn_something(exported, splits):
    from sklearn.metrics import roc_auc_score

    test = splits["test"]
    for family in ("hgb", "mlp"):
        assert roc_auc_score(test["label"], run_graph(exported[family], to_onnx_feeds(test))) > 0.58  # random is 0.5, inverted < 0.5


def test_parity_check_fails_loudly():
    with pytest.raises(ParityError, match=r"differ by 0\.01 at test row 1"):
        check_parity("mlp", np.array([0.5, 0.51]), np.array([0.5, 0.5]), 1e-4)


def test_export_is_byte_for_byte_reproducible(trained, exported):
    """Same models -> same bytes, or DVC would see a new graph (and rerun everything after it) each time."""
    from tasks.export import export_hgb, export_mlp

    assert export_hgb(trained["hgb"], 18).SerializeToString() == exported["hgb"].SerializeToString()
    again = export_mlp(trained["pre"], trained["mlp"], 18)
    assert again["mlp"].SerializeToString() == exported["mlp"].SerializeToString()
