"""Per-row feature attributions of a served ONNX graph: Kernel SHAP against the package's reference sample.

`POST /v1/models/{name}:explain` (KServe's v1 convention) takes the records body of `:predict` and
answers, per row, the score, the base value (the mean score over the background rows) and one
attribution per input column, named as the model's inputs. Attributions are Shapley values of the
graph's probability output computed by SHAP's `KernelExplainer` (Lundberg & Lee 2017, "A unified
approach to interpreting model predictions", NeurIPS) with the identity link: a column takes the
explained row's value or a background row's, so categorical and missing values need no encoding.

Additivity: Kernel SHAP solves its weighted regression under the constraint that the attributions
sum to f(x) - E[f(background)], so `sum(attributions) == score - base_value` up to float rounding;
`ADDITIVITY_TOLERANCE` (1e-5, in probability) is what the tests hold it to (the graph's float32
output is the limit).

Cost: the graph scores `nsamples` x `background_rows` rows per explained row in one `session.run`
per row, on a worker thread (never the batcher's: explanations are not predictions and are not
logged). Defaults: 20 background rows (seeded sample of `reference.parquet`), nsamples 2 x columns +
256 coalitions: `bench/serve_explain.py` measures one row. Coalitions are drawn by SHAP from NumPy's
global generator, seeded per call under a lock (and restored), so an explanation is reproducible.

SHAP is an optional dependency (`pip install 'driftloop[explain]'`): the route answers 501 without it,
and `import shap` (seconds) happens on the first explanation, off the event loop.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

from driftloop.schema import Signature

ADDITIVITY_TOLERANCE = 1e-5
"""|sum(attributions) - (score - base_value)| allowed, probability units (float32 graph output)."""

EXPLAIN_MAX_ROWS = 4
"""Rows per explain request (each costs nsamples x background_rows graph rows); 422 past it."""

_NUMPY = {"BYTES": object, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}
_RNG_LOCK = threading.Lock()


class ExplainUnavailable(Exception):
    """SHAP is not installed (`pip install 'driftloop[explain]'`)."""


def _shap():
    try:
        import shap
    except ImportError as exc:  # pragma: no cover - the serve-only install
        raise ExplainUnavailable(
            "explanations need SHAP: pip install 'driftloop[explain]' (the serve extra leaves it out)"
        ) from exc
    return shap


class Explainer:
    """Kernel SHAP of one loaded version, over a background sample of its reference rows.

    Args:
        run: scores feeds `{input: [n, 1] array}` -> float32 `[n, 1]` probabilities (the version's session).
        signature: the version's inputs (names and datatypes, in the graph's order).
        reference: the package's reference sample (at least the input columns).
        background_rows: rows of `reference` (seeded sample) the absent columns take their values from.
        nsamples: coalitions per explained row; None = 2 x columns + 256.
        seed: seeds the background sample and SHAP's coalition draws.

    Raises:
        ExplainUnavailable: SHAP is not installed.
        ValueError: the reference lacks an input column.
    """

    def __init__(self, run, signature: Signature, reference: pd.DataFrame, *, background_rows: int = 20,
                 nsamples: int | None = None, seed: int = 0) -> None:  # fmt: skip
        shap = _shap()
        self.names = [s.name for s in signature.inputs]
        self.dtypes = [_NUMPY[s.datatype] for s in signature.inputs]
        missing = [c for c in self.names if c not in reference.columns]
        if missing:
            raise ValueError(f"reference.parquet lacks input column(s) {', '.join(missing)}")
        sample = reference.sample(n=min(background_rows, len(reference)), random_state=seed)
        self.background = sample[self.names].astype(object).to_numpy()
        self._run = run
        self.nsamples = nsamples or 2 * len(self.names) + 256
        self.seed = seed
        self._kernel = shap.KernelExplainer(self._predict, self.background, feature_names=self.names)
        self.base_value = float(np.asarray(self._kernel.expected_value).reshape(-1)[0])

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """The graph on an object matrix `[n, columns]` (columns in signature order) -> float64 `[n]`."""
        feeds = {}
        for i, (name, dtype) in enumerate(zip(self.names, self.dtypes, strict=True)):
            column = x[:, i]
            if dtype is object:
                feeds[name] = column.astype(object).reshape(-1, 1)
            else:
                feeds[name] = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype).reshape(-1, 1)
        return np.asarray(self._run(feeds), dtype=np.float64).reshape(-1)

    def explain(self, feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Attributions of each row of validated feeds (`{input: [n, 1]}`, as the scoring routes build them).

        Returns:
            Per row: {"score", "base_value", "attributions": {column: value}} (probability units);
            sum(attributions) = score - base_value within `ADDITIVITY_TOLERANCE`.
        """
        x = np.column_stack([np.asarray(feeds[n]).reshape(-1).astype(object) for n in self.names])
        with _RNG_LOCK:
            state = np.random.get_state()
            np.random.seed(self.seed)
            try:
                phi = np.asarray(self._kernel.shap_values(x, nsamples=self.nsamples, l1_reg=False, silent=True))
            finally:
                np.random.set_state(state)
        phi = phi.reshape(len(x), len(self.names))
        scores = self._predict(x)
        return [
            {"score": float(scores[r]), "base_value": self.base_value,
             "attributions": {n: float(v) for n, v in zip(self.names, phi[r], strict=True)}}
            for r in range(len(x))
        ]  # fmt: skip
