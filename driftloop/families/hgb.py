"""Family `hgb`: `ColumnTransformer(OrdinalEncoder on strings, passthrough numbers) -> HistGradientBoostingClassifier`.

Categories are ordinal-encoded before the model (unknown -> -1), not passed as native categorical
features: skl2onnx converts native categorical splits without error but wrongly (REFERENCE.md).

Exported trees decide like the native model at every threshold. scikit-learn compares the input,
as float64, with a float64 threshold: `x <= t` goes left. The ONNX graph's inputs are FP32 (the
signature), and ONNX Runtime compares a float input with float thresholds: its
`TreeEnsembleClassifier<T>` kernel builds `TreeEnsembleCommonClassifier<T, double, float>` only
when the input T is double, else `<T, float, float>` (onnxruntime/core/providers/cpu/ml/
tree_ensemble_classifier.cc), so double thresholds (`nodes_values_as_tensor`) would need a double
input, i.e. casting every column and changing the signature. skl2onnx rounds each `t` to the *nearest* float32 (its HGB converter
skips its own `sklearn_threshold` adjustment), so an input exactly at a threshold that rounded up
goes the other way. `exact_thresholds` stores instead `w = the largest float32 <= t`. For every
float32 `x`: `x <= t  <=>  x <= w` (if `x <= t` then `x` is a float32 below `t`, so `x <= w`; if
`x <= w` then `x <= w <= t`). Integer columns reach the trees as float32 too, which is exact for
|x| <= 2**24 (16,777,216): every integer of this schema (hour, minute, weekday, distance in miles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from driftloop.families.base import Candidate, CandidateContext, FamilyParams, SklearnPersistence

if TYPE_CHECKING:
    from driftloop.dataset import Dataset
    from driftloop.schema import TensorSpec

NAME = "hgb"


class HGBParams(FamilyParams):
    """`train.hgb`: HistGradientBoostingClassifier's hyperparameters (scikit-learn's names)."""

    max_iter: int = Field(200, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    max_leaf_nodes: int = Field(31, ge=2)
    min_samples_leaf: int = Field(40, ge=1)
    l2_regularization: float = Field(0.0, ge=0)


def tree_columns(pipeline) -> list[str]:
    """The trees' feature order: the fitted `ColumnTransformer`'s output (ordinal strings, then numbers)."""
    encode = pipeline.named_steps["encode"]
    return [c for name, _, cols in encode.transformers_ if name != "remainder" for c in cols]


def make_hgb(params: HGBParams, seed: int, dataset: Dataset):
    """The unfitted tree pipeline: the raw feature frame in (`dataset.features`), `predict_proba` out."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encode = ColumnTransformer(
        [
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), list(dataset.categorical)),
            ("num", "passthrough", list(dataset.numeric)),
        ]
    )
    model = HistGradientBoostingClassifier(
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        early_stopping=False,
        random_state=seed,
    )
    return Pipeline([("encode", encode), ("model", model)])


def native_thresholds(model) -> np.ndarray:
    """Every node's float64 threshold (0.0 at leaves), in the order skl2onnx writes `nodes_values`
    (iteration by iteration, nodes by index)."""
    parts = []
    for per_class in model._predictors:
        (tree,) = per_class  # binary classification: one tree per iteration
        nodes = tree.nodes
        parts.append(np.where(nodes["is_leaf"].astype(bool), 0.0, nodes["num_threshold"]))
    return np.concatenate(parts).astype(np.float64)


def round_down_to_float32(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t, elementwise (inf stays inf)."""
    with np.errstate(over="ignore"):  # |t| beyond float32's range: inf, then the largest finite float32 below
        f = t.astype(np.float32)
        return np.where(f.astype(np.float64) > t, np.nextafter(f, np.float32(-np.inf)), f).astype(np.float32)


def exact_thresholds(graph, model):
    """Rewrite the tree operator's `nodes_values` to `round_down_to_float32(native thresholds)`.

    Raises:
        RuntimeError: the graph's thresholds are not the native ones rounded to nearest (the node
            order assumption broke, e.g. a new skl2onnx): better to stop than to ship a shuffled tree.
    """
    native = native_thresholds(model)
    trees = [n for n in graph.graph.node if n.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor")]
    if len(trees) != 1:
        raise RuntimeError(f"expected one tree-ensemble node, found {len(trees)}")
    attr = next(a for a in trees[0].attribute if a.name == "nodes_values")
    stored = np.asarray(attr.floats, dtype=np.float32)
    if stored.shape != native.shape or not np.array_equal(stored, native.astype(np.float32)):
        raise RuntimeError("the exported tree's thresholds do not line up with the native model's nodes")
    del attr.floats[:]
    attr.floats.extend(round_down_to_float32(native).tolist())
    return graph


def threshold_rows(pipeline, base) -> Any:
    """Rows exactly at and next to every split threshold of the fitted pipeline.

    For each distinct (feature, threshold) of any tree, three rows copied from `base` (cycling)
    with that feature set to: a float column: the float32 just below, nearest to and just above
    `t`; an integer column: floor(t), ceil(t) and ceil(t) + 1; a string column: the categories
    whose ordinal codes are floor(t) and ceil(t) (unknown when out of range).

    Returns:
        A frame with `base`'s columns and dtypes, 3 rows per distinct split.
    """
    import pandas as pd

    model = pipeline.named_steps["model"]
    encoder = pipeline.named_steps["encode"].named_transformers_["cat"]
    cats, categorical = encoder.categories_, list(encoder.feature_names_in_)
    columns = tree_columns(pipeline)
    splits = set()
    for (tree,) in model._predictors:
        inner = tree.nodes[~tree.nodes["is_leaf"].astype(bool)]
        splits.update(zip(inner["feature_idx"].tolist(), inner["num_threshold"].tolist(), strict=True))
    arrays = {c: base[c].to_numpy(copy=True) for c in base.columns}
    n = 3 * len(splits)
    idx = np.arange(n) % len(base)
    arrays = {c: a[idx].copy() for c, a in arrays.items()}
    for k, (feature, t) in enumerate(sorted(splits)):
        col = columns[feature]
        if base[col].dtype.kind == "f":
            near = np.float32(t)
            values = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
        elif col in categorical:
            j = categorical.index(col)
            codes = [int(np.floor(t)), int(np.ceil(t)), int(np.ceil(t)) + 1]
            values = [cats[j][c] if 0 <= c < len(cats[j]) else "__unseen__" for c in codes]
        else:
            values = [int(np.floor(t)), int(np.ceil(t)), int(np.ceil(t)) + 1]
        for i, v in enumerate(values):
            arrays[col][3 * k + i] = v
    return pd.DataFrame(arrays).astype(base.dtypes.to_dict())


class HGBFamily(SklearnPersistence):
    name = NAME
    params_model = HGBParams

    def fit(self, train, valid, params: HGBParams, seed: int, dataset: Dataset):
        """Fit; curves = validation log loss / ROC AUC per boosting iteration (every 10th and the last)."""
        from sklearn.metrics import log_loss, roc_auc_score
        from threadpoolctl import threadpool_limits

        from driftloop.schema import LABEL

        features = list(dataset.feature_names)
        pipe = make_hgb(params, seed, dataset)
        # One OpenMP thread, like every stage (the budget of `dvc repro` was measured so): with two,
        # this stage took 3x the wall time on the shared 2-core box (threads spin at barriers).
        # Before the family plugins, `torch.set_num_threads(1)` did this by accident: torch loads
        # its libgomp globally, and scikit-learn's OpenMP calls bound to it.
        with threadpool_limits(limits=1, user_api="openmp"):
            pipe.fit(train[features], train[LABEL].to_numpy())
            curves = []
            xv = pipe.named_steps["encode"].transform(valid[features])
            for i, proba in enumerate(pipe.named_steps["model"].staged_predict_proba(xv), 1):
                if i % 10 == 0 or i == params.max_iter:
                    p = proba[:, 1]
                    curves.append({"iteration": i, "valid_log_loss": log_loss(valid[LABEL], p, labels=[0, 1]),
                                   "valid_roc_auc": roc_auc_score(valid[LABEL], p)})  # fmt: skip
        return pipe, curves

    def to_onnx(self, fitted, opset: int, inputs: list[TensorSpec]) -> dict:
        """One graph (`probability` FP32 `[n, 1]`), thresholds made exact (module docstring)."""
        from driftloop.onnx_graph import keep_positive_class, sklearn_to_onnx

        model = fitted.steps[-1][1]
        graph = exact_thresholds(sklearn_to_onnx(fitted, opset, name=NAME, inputs=inputs, zipmap_off=model), model)
        return {NAME: keep_positive_class(graph)}

    def parity_rows(self, fitted, base):
        return threshold_rows(fitted, base)

    def candidates(self, ctx: CandidateContext) -> dict[str, Candidate]:
        from driftloop.onnx_graph import fuse

        return {f"{NAME}_fp32": Candidate(fuse(ctx.graphs[NAME]), NAME, "ORT extended fusion")}


FAMILY = HGBFamily()
