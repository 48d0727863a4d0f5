"""Canary analysis rules on synthetic log windows: labels decide when they exist, PSI when they don't."""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftloop.config import ReleaseParams
from driftloop.release import analyse, auc_with_error


def window(scores: np.ndarray, labels: np.ndarray | None, version: str) -> pd.DataFrame:
    n = len(scores)
    frame = pd.DataFrame({"request_id": [f"{version}-{i}" for i in range(n)], "score": scores,
                          "latency_ms": np.full(n, 2.0), "model_version": version})  # fmt: skip
    frame["label"] = labels.astype(float) if labels is not None else np.nan
    return frame


def sample(n: int, seed: int, *, separation: float, shift: float = 0.0):
    """Labels ~ 25% positive; scores = sigmoid(separation * label + noise + shift)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    z = separation * y + rng.normal(size=n) - 1.0 + shift
    return 1 / (1 + np.exp(-z)), y


PARAMS = ReleaseParams(min_requests=300, min_labelled_rows=200)


def test_a_better_but_shifted_model_passes_when_labels_exist():
    s_scores, s_y = sample(2000, 0, separation=0.8)
    c_scores, c_y = sample(400, 1, separation=1.6, shift=1.5)  # better AUC, scores moved up a lot
    result = analyse(window(s_scores, s_y, "v1"), window(c_scores, c_y, "v2"), 0, stable="v1", canary="v2", params=PARAMS)
    checks = {c.name: c for c in result.checks}
    assert checks["score_psi"].value > checks["score_psi"].threshold  # the proxy alone would roll it back
    assert checks["score_psi"].passed and "advisory" in checks["score_psi"].reason
    assert checks["roc_auc"].passed and checks["roc_auc"].value > 0.6
    assert result.passed


def test_without_labels_the_same_shift_is_rolled_back():
    s_scores, _ = sample(2000, 0, separation=0.8)
    c_scores, _ = sample(400, 1, separation=1.6, shift=1.5)
    result = analyse(window(s_scores, None, "v1"), window(c_scores, None, "v2"), 0, stable="v1", canary="v2", params=PARAMS)
    checks = {c.name: c for c in result.checks}
    assert "roc_auc" not in checks and not checks["score_psi"].passed and not result.passed


def test_an_inverted_model_fails_on_labels():
    s_scores, s_y = sample(2000, 0, separation=1.2)
    c_scores, c_y = sample(400, 1, separation=1.2)
    result = analyse(window(s_scores, s_y, "v1"), window(1 - c_scores, c_y, "v2"), 0, stable="v1", canary="v2", params=PARAMS)
    checks = {c.name: c for c in result.checks}
    assert not checks["roc_auc"].passed and checks["roc_auc"].value < 0.5 and not result.passed


def test_auc_standard_error_matches_hanley_mcneil():
    scores, y = sample(1000, 3, separation=1.0)
    auc, se = auc_with_error(y, scores)
    # Hanley & McNeil's example: AUC 0.7 with ~250 positives / 750 negatives gives an SE near 0.018
    assert 0.6 < auc < 0.8 and 0.012 < se < 0.025
    assert auc_with_error(np.zeros(10, int), scores[:10]) is None
