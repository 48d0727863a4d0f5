"""Family `logreg`: logistic regression on the MLP's one-hot preprocessing (`mlp.one_hot_preprocess`).

Added through the plugin path only (this module, one line in `FAMILIES`, a `train.logreg`
section), to show what a new family costs. Off by default (`train.logreg.enabled: false`): it
is the fastest graph, and the gate chooses the cheapest candidate that passes, so with the
default ROC AUC floor it would displace a better model. Turn it on with a floor that reflects
what you need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from driftloop.families.base import Candidate, CandidateContext, FamilyParams, SklearnPersistence

if TYPE_CHECKING:
    from driftloop.dataset import Dataset
    from driftloop.schema import TensorSpec

NAME = "logreg"


class LogRegParams(FamilyParams):
    """`train.logreg`: scikit-learn `LogisticRegression` (lbfgs, L2): `C` = inverse regularization strength."""

    enabled: bool = False
    C: float = Field(1.0, gt=0)
    max_iter: int = Field(300, ge=1)


class LogRegFamily(SklearnPersistence):
    name = NAME
    params_model = LogRegParams

    def fit(self, train, valid, params: LogRegParams, seed: int, dataset: Dataset):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        from driftloop.families.mlp import one_hot_preprocess
        from driftloop.schema import LABEL

        model = LogisticRegression(C=params.C, max_iter=params.max_iter, random_state=seed)
        pipe = Pipeline([("preprocess", one_hot_preprocess(dataset)), ("model", model)])
        return pipe.fit(train[list(dataset.feature_names)], train[LABEL].to_numpy()), []

    def to_onnx(self, fitted, opset: int, inputs: list[TensorSpec]) -> dict:
        from driftloop.onnx_graph import keep_positive_class, sklearn_to_onnx

        return {
            NAME: keep_positive_class(
                sklearn_to_onnx(fitted, opset, name=NAME, inputs=inputs, zipmap_off=fitted.steps[-1][1])
            )
        }

    def parity_rows(self, fitted, base):
        return base.iloc[:0]

    def candidates(self, ctx: CandidateContext) -> dict[str, Candidate]:
        from driftloop.onnx_graph import fuse

        return {f"{NAME}_fp32": Candidate(fuse(ctx.graphs[NAME]), NAME, "ORT extended fusion")}


FAMILY = LogRegFamily()
