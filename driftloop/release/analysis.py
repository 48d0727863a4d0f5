"""Canary analysis: compare canary with stable on live traffic, from the prediction log and `/metrics`.

The analysis reads two things (see docs/release.md):
    - the server's prediction log (`serve --log-dir`, `release.log_dir`): per version, the requests
      answered (distinct request ids), their latency in the server (ms) and their scores;
    - `/metrics`: `driftloop_requests_total` with a 5xx status on the scoring endpoints. The server
      does not label errors by version, so every 5xx during the window counts against the canary:
      the conservative choice, because rolling back is the safe side.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.checks import Check, all_passed
from driftloop.config import ReleaseParams
from driftloop.predlog import read_log_with_labels
from driftloop.release.client import ServerClient

log = logging.getLogger(__name__)

PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Analysis:
    """The canary analysis: per-version figures and the checks (all must pass to promote)."""

    stable: str | None
    canary: str
    canary_requests: int
    stable_requests: int
    errors: int
    checks: list[Check]

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all_passed(self.checks)

    def summary(self) -> str:
        """One line: each check's reason, `; `-separated (goes into the registry's tag message)."""
        return "; ".join(c.reason for c in self.checks)


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


def _per_request(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates("request_id") if len(rows) else rows


def auc_with_error(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """ROC AUC and its standard error (Hanley & McNeil 1982, "The meaning and use of the area under
    a ROC curve", eq. 2); None unless both classes are present.
    """
    from sklearn.metrics import roc_auc_score

    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    a = float(roc_auc_score(labels, scores))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return a, math.sqrt(max(var, 0.0))


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["label"].notna()] if "label" in rows else rows.iloc[0:0]


def quality_check(
    stable_rows: pd.DataFrame, canary_rows: pd.DataFrame, params: ReleaseParams
) -> Check | None:
    """Canary vs stable ROC AUC on the rows whose labels have arrived; None when too few.

    The canary passes when its AUC >= stable's - `max_auc_drop` - 2 x the standard error of the
    difference (Hanley-McNeil errors of both, independent samples): a few hundred labelled rows
    cannot tell AUCs 0.03 apart, so the rule only fails a canary that is surely worse.
    """
    s_lab, c_lab = _labelled(stable_rows), _labelled(canary_rows)
    if min(len(s_lab), len(c_lab)) < params.min_labelled_rows:
        return None
    s_auc = auc_with_error(s_lab["label"].to_numpy(int), s_lab["score"].to_numpy(float))
    c_auc = auc_with_error(c_lab["label"].to_numpy(int), c_lab["score"].to_numpy(float))
    if s_auc is None or c_auc is None:
        return None
    noise = 2 * math.hypot(s_auc[1], c_auc[1])
    allowed = s_auc[0] - params.max_auc_drop - noise
    return Check(
        name="roc_auc",
        value=c_auc[0],
        threshold=allowed,
        passed=c_auc[0] >= allowed,
        reason=f"ROC AUC {c_auc[0]:.3f} on {len(c_lab)} labelled rows vs stable {s_auc[0]:.3f} on {len(s_lab)} "
        f"(allowed down to {allowed:.3f}: drop {params.max_auc_drop} + 2 SE {noise:.3f})",
    )


def analyse(
    stable_rows: pd.DataFrame,
    canary_rows: pd.DataFrame,
    errors: int,
    *,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
) -> Analysis:
    """Compare canary with stable on error rate, p50/p99 latency, and quality: ROC AUC where enough
    labels have arrived (`quality_check`), else the score distribution (PSI) as its proxy.

    Args:
        stable_rows: prediction-log rows answered by stable (the baseline).
        canary_rows: prediction-log rows answered by the canary.
        errors: 5xx responses of the scoring endpoints during the window, all counted against
            the canary (the server does not label errors by version).
        stable: stable's version (None: no baseline).
        canary: canary's version.
        params: the bounds (`min_requests`, `max_error_rate_increase`, `max_p99_latency_ratio`,
            `latency_slack_ms`, `max_score_psi`).

    Returns:
        The analysis; a check fails when its figure cannot be measured (no verdict = roll back).
    """
    c_req, s_req = _per_request(canary_rows), _per_request(stable_rows)
    n_c, n_s = len(c_req), len(s_req)
    checks = [
        Check(
            name="requests",
            value=n_c,
            threshold=params.min_requests,
            passed=n_c >= params.min_requests,
            reason=f"canary answered {n_c} requests (need {params.min_requests})",
        )
    ]
    rate = errors / (n_c + errors) if (n_c + errors) else 0.0
    checks.append(
        Check(
            name="error_rate",
            value=rate,
            threshold=params.max_error_rate_increase,
            passed=rate <= params.max_error_rate_increase,
            reason=f"error rate {rate:.2%} (bound {params.max_error_rate_increase:.2%}; every one of the window's "
            f"{errors} 5xx counts against the canary: the server does not label errors by version)",
        )
    )
    if n_s == 0 or n_c == 0:
        checks.append(
            Check(
                name="latency",
                value=None,
                threshold=params.max_p99_latency_ratio,
                passed=False,
                reason="p99 latency: no stable baseline or no canary rows to compare",
            )
        )
        checks.append(
            Check(
                name="score_psi",
                value=None,
                threshold=params.max_score_psi,
                passed=False,
                reason="score PSI: no stable baseline or no canary rows to compare",
            )
        )
    else:
        # p50 as well as p99: the server's micro-batcher is shared, so a slow canary's batches
        # also delay stable's requests and lift stable's p99 tail; the median shows the canary.
        for q in (50, 99):
            q_c = float(np.percentile(c_req["latency_ms"].astype(float), q))
            q_s = float(np.percentile(s_req["latency_ms"].astype(float), q))
            allowed = max(q_s * params.max_p99_latency_ratio, q_s + params.latency_slack_ms)
            checks.append(
                Check(
                    name=f"p{q}_latency",
                    value=q_c,
                    threshold=allowed,
                    passed=q_c <= allowed,
                    unit="ms",
                    reason=f"p{q} latency {q_c:.2f} ms vs stable {q_s:.2f} ms (allowed {allowed:.2f} ms)",
                )
            )
        s_scores, c_scores = stable_rows["score"].to_numpy(float), canary_rows["score"].to_numpy(float)
        value = psi(s_scores, c_scores)
        bound = params.max_score_psi + psi_noise(len(s_scores), len(c_scores))
        quality = quality_check(stable_rows, canary_rows, params)
        text = f"score PSI {value:.3f} (bound {params.max_score_psi} + sampling noise = {bound:.3f})"
        if quality is None:  # no ground truth yet: a shifted score distribution is the warning sign
            checks.append(
                Check(name="score_psi", value=value, threshold=bound, passed=value <= bound, reason=text)
            )
        else:
            # Ground truth beats a proxy: a model retrained after drift is *meant* to score
            # differently from stable, so with labels the PSI is reported but does not decide.
            checks.append(
                Check(
                    name="score_psi",
                    value=value,
                    threshold=bound,
                    passed=True,
                    reason=f"{text}; advisory: labels decide",
                )
            )
            checks.append(quality)
    return Analysis(stable, canary, n_c, n_s, errors, checks)


def _read_window(log_dir: Path, model: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:

    frame = read_log_with_labels(log_dir, model, start, end)  # label NaN = not arrived (yet)
    if "latency_ms" not in frame:
        frame["latency_ms"] = pd.Series(dtype=float)
    return frame


def run_analysis(
    client: ServerClient,
    *,
    model: str,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
    log_dir: Path,
    baseline_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    on_progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Watch live traffic until the canary answered `min_requests` (then up to `label_wait_s` more for
    labels), errors doom it, or `analysis_timeout_s` runs out.

    Args:
        client: the server.
        model: model name on the server (the prediction log's folder).
        stable, canary: versions.
        params: bounds and timings (`analysis_timeout_s`, `poll_interval_s`).
        log_dir: the server's prediction log root.
        baseline_s: also use stable's rows from this many seconds before the window (blue-green,
            where stable takes no traffic during the window).
        on_progress: called every 5 s with the canary's request, label and error counts.

    Returns:
        The analysis of the window.
    """
    start = pd.Timestamp.now(tz="UTC")
    errors0 = client.server_errors()
    deadline = clock() + params.analysis_timeout_s
    doomed_at = max(1, math.floor(params.max_error_rate_increase * params.min_requests) + 1)
    say = on_progress or (lambda line: log.info("%s", line))
    enough_at: float | None = None  # when the canary reached min_requests
    last_said = clock()
    while True:
        time.sleep(params.poll_interval_s)
        errors = client.server_errors() - errors0
        rows = _read_window(
            log_dir,
            model,
            start - pd.Timedelta(seconds=baseline_s),
            pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=1),
        )
        canary_rows = rows[(rows["model_version"] == canary) & (rows["ts"] >= start)]
        n = canary_rows["request_id"].nunique()
        labelled = min(
            len(_labelled(canary_rows)),
            len(_labelled(rows[rows["model_version"] == stable])) if stable else 0,
        )
        if errors >= doomed_at or clock() >= deadline:
            break
        if n >= params.min_requests:
            # Labels turn the verdict from a proxy (score PSI) into ground truth (ROC AUC): give
            # them up to `label_wait_s` to arrive, then decide with what there is.
            enough_at = enough_at if enough_at is not None else clock()
            if labelled >= params.min_labelled_rows or clock() - enough_at >= params.label_wait_s:
                break
        if clock() - last_said >= 5.0:
            say(
                f"canary {canary}: {n}/{params.min_requests} requests, {labelled} labelled rows, {errors} errors"
            )
            last_said = clock()
    stable_rows = rows[rows["model_version"] == stable] if stable else rows.iloc[0:0]
    return analyse(stable_rows, canary_rows, errors, stable=stable, canary=canary, params=params)
