"""Canary analysis: compare canary with stable on live traffic, from the prediction log and `/metrics`.

The analysis reads (see docs/release.md):
    - the server's prediction log (`serve --log-dir`, `release.log_dir`): per version, the requests
      answered (distinct request ids), their service time (ms inside `session.run`), their scores
      and, as labels arrive, their labels;
    - `/metrics`: `driftloop_requests_total` with a 5xx status on the scoring endpoints. The server
      does not label errors by version, so every 5xx during the window counts against the canary:
      the conservative choice, because rolling back is the safe side.

Quality is judged on the same rows (paired): the canary's labelled rows are scored by stable too
(offline, from stable's package in the model repository: `stable_scorer`), and the two ROC AUCs are
compared with DeLong's test for correlated ROC curves (`driftloop.stats.delong`). Latency is
judged on service time per version, so the canary's queueing does not inflate stable's figures.
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
from driftloop.model_repository import registry_name
from driftloop.predlog import read_log_with_labels
from driftloop.release.client import ServerClient
from driftloop.stats import delong, one_sided_critical, psi, psi_noise

log = logging.getLogger(__name__)

StableScorer = Callable[[pd.DataFrame], np.ndarray]
"""Scores rows (the log's raw input columns) with stable: a DataFrame of n rows -> float [n] probabilities."""

WindowReader = Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame]
"""Reads the prediction log (with labels) of the model for start <= ts < end."""


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


def _per_request(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates("request_id") if len(rows) else rows


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["label"].notna()] if "label" in rows else rows.iloc[0:0]


def auc_check(
    labels: np.ndarray, stable_scores: np.ndarray, canary_scores: np.ndarray, params: ReleaseParams
) -> Check:
    """Paired ROC AUC rule: canary and stable scored on the same labelled rows, DeLong's test.

    The canary fails when the one-sided test rejects "canary AUC >= stable AUC - max_auc_drop" at
    level `auc_alpha`: z = (AUC_c - AUC_s + max_auc_drop) / SE < -z_alpha, with SE from DeLong,
    DeLong & Clarke-Pearson (1988, Biometrics 44:837). Two models that rank the rows alike give
    a difference of exactly 0 and pass. Error rates of this rule, measured on real flights, are in
    docs/release.md (tests/release/test_canary_error_rates.py).

    Args:
        labels: shape [n], 0/1.
        stable_scores: shape [n], stable's probabilities on those rows.
        canary_scores: shape [n], the canary's.
        params: `max_auc_drop`, `auc_alpha`.

    Returns:
        The check; it fails when both classes are not present (no verdict = roll back).
    """
    paired = delong(labels, stable_scores, canary_scores)
    n = len(labels)
    if paired is None:
        return Check(name="roc_auc", value=None, threshold=-params.max_auc_drop, passed=False,
                     reason=f"ROC AUC: {n} labelled rows do not hold both classes")  # fmt: skip
    z_crit = one_sided_critical(params.auc_alpha)
    z = paired.z(params.max_auc_drop)
    passed = z >= -z_crit
    return Check(
        name="roc_auc",
        value=paired.diff,
        threshold=-params.max_auc_drop,
        passed=passed,
        reason=(
            f"ROC AUC {paired.auc_b:.3f} vs stable {paired.auc_a:.3f} on the same {n} labelled rows "
            f"(paired, DeLong SE {paired.se:.4f}; z = {z:.2f} for a drop beyond {params.max_auc_drop:g}, "
            f"{'>=' if passed else '<'} -{z_crit:.2f} at one-sided alpha {params.auc_alpha:g})"
        ),
    )


def analyse(
    stable_rows: pd.DataFrame,
    canary_rows: pd.DataFrame,
    errors: int,
    *,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
    score_stable: StableScorer | None = None,
    cost: dict[str, float | None] | None = None,
) -> Analysis:
    """Compare canary with stable on error rate, p50/p99 service time, CPU cost, and quality: paired ROC AUC
    where enough of the canary's rows are labelled (and stable can score them), else the score
    distribution (PSI) as its proxy.

    Args:
        stable_rows: prediction-log rows answered by stable (the baseline).
        canary_rows: prediction-log rows answered by the canary.
        errors: 5xx responses of the scoring endpoints during the window, all counted against
            the canary (the server does not label errors by version).
        stable: stable's version (None: no baseline).
        canary: canary's version.
        params: the bounds (`min_requests`, `max_error_rate_increase`, `max_p99_latency_ratio`,
            `latency_slack_ms`, `max_score_psi`, `min_labelled_rows`, `max_auc_drop`, `auc_alpha`).
        score_stable: scores the canary's labelled rows with stable (pairs the AUC comparison);
            None leaves quality to the PSI.
        cost: {version: CPU seconds per 1,000 predictions} as the server measured them
            (`ServerClient.cpu_cost`), keyed like `stable` / `canary`; None = not read. Reported
            in the `cpu_cost` check, which decides only when `params.max_cpu_cost_ratio` is set.

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
        )  # fmt: skip
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
    checks.append(cost_check(cost or {}, stable, canary, params))
    if n_s == 0 or n_c == 0:
        for name, bound in (("latency", params.max_p99_latency_ratio), ("score_psi", params.max_score_psi)):
            checks.append(Check(name=name, value=None, threshold=bound, passed=False,
                                reason=f"{name}: no stable baseline or no canary rows to compare"))  # fmt: skip
        return Analysis(stable, canary, n_c, n_s, errors, checks)
    checks += latency_checks(s_req, c_req, params)
    s_scores, c_scores = stable_rows["score"].to_numpy(float), canary_rows["score"].to_numpy(float)
    value = psi(s_scores, c_scores)
    bound = params.max_score_psi + psi_noise(len(s_scores), len(c_scores))
    text = f"score PSI {value:.3f} (bound {params.max_score_psi} + sampling noise = {bound:.3f})"
    labelled = _labelled(canary_rows)
    if score_stable is None or len(labelled) < params.min_labelled_rows:
        # no ground truth yet: a shifted score distribution is the warning sign
        checks.append(
            Check(name="score_psi", value=value, threshold=bound, passed=value <= bound, reason=text)
        )
    else:
        # Ground truth beats a proxy: a model retrained after drift is *meant* to score
        # differently from stable, so with labels the PSI is reported but does not decide.
        checks.append(Check(name="score_psi", value=value, threshold=bound, passed=True,
                            reason=f"{text}; advisory: labels decide"))  # fmt: skip
        stable_on_canary_rows = np.asarray(score_stable(labelled), dtype=np.float64).reshape(-1)
        checks.append(
            auc_check(
                labelled["label"].to_numpy(int),
                stable_on_canary_rows,
                labelled["score"].to_numpy(float),
                params,
            )
        )
    return Analysis(stable, canary, n_c, n_s, errors, checks)


def cost_check(cost: dict[str, float | None], stable: str | None, canary: str, params: ReleaseParams) -> Check:
    """Canary's CPU seconds per 1,000 predictions next to stable's (the server's measure, serving/metrics.py).

    Value: canary / stable. With `params.max_cpu_cost_ratio` null the check is a report (passes
    whatever the figures, says so); set, it fails above the ratio or when either figure is missing.
    """
    c, s = cost.get(canary), cost.get(stable) if stable else None
    bound = params.max_cpu_cost_ratio
    figures = (f"CPU {c:.4f} s per 1,000 predictions" if c is not None else "CPU per prediction: not measured") + (
        f" vs stable {s:.4f} s" if s is not None else "")  # fmt: skip
    ratio = c / s if c is not None and s else None
    if bound is None:
        return Check(name="cpu_cost", value=ratio, threshold=None, passed=True,
                     reason=f"{figures}{f' (x{ratio:.2f})' if ratio is not None else ''}; advisory: "
                            "release.max_cpu_cost_ratio null")  # fmt: skip
    if ratio is None:
        return Check(name="cpu_cost", value=None, threshold=bound, passed=False,
                     reason=f"{figures}: no ratio to hold to {bound:g}")  # fmt: skip
    return Check(name="cpu_cost", value=ratio, threshold=bound, passed=ratio <= bound,
                 reason=f"{figures} (x{ratio:.2f}, allowed x{bound:g})")  # fmt: skip


def latency_checks(stable_req: pd.DataFrame, canary_req: pd.DataFrame, params: ReleaseParams) -> list[Check]:
    """p50 and p99 of each version's own service time (ms inside `session.run`), one row per request.

    A quantile passes when canary <= max(stable x `max_p99_latency_ratio`, stable + `latency_slack_ms`).
    Service time, not the request's latency in the server: the micro-batcher is shared, so a slow
    canary's batches make stable's requests queue, which would lift stable's figures and hide the
    canary. Logs without `service_ms` (older servers) fall back to `latency_ms`, said so in the reason.
    """
    column = (
        "service_ms" if _has(stable_req, "service_ms") and _has(canary_req, "service_ms") else "latency_ms"
    )
    what = (
        "latency (service time)"
        if column == "service_ms"
        else "latency (request time: no service time in the log)"
    )
    out = []
    for q in (50, 99):
        q_c = float(np.nanpercentile(canary_req[column].astype(float), q))
        q_s = float(np.nanpercentile(stable_req[column].astype(float), q))
        allowed = max(q_s * params.max_p99_latency_ratio, q_s + params.latency_slack_ms)
        out.append(
            Check(
                name=f"p{q}_latency",
                value=q_c,
                threshold=allowed,
                passed=q_c <= allowed,
                unit="ms",
                reason=f"p{q} {what} {q_c:.2f} ms vs stable {q_s:.2f} ms (allowed {allowed:.2f} ms)",
            )  # fmt: skip
        )
    return out


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


def stable_scorer(folder: Path) -> StableScorer:
    """Score rows offline with the package in `folder` (stable's version folder), ONNX Runtime on CPU.

    Offline rather than through the server's pinned `/versions/{v}/infer`: the same graph gives the
    same scores, and the paired requests neither load the serving path nor enter the prediction
    log that the drift check and this analysis read.

    Returns:
        rows (the log's raw input columns, n rows) -> float32 [n] probabilities.
    """
    import onnxruntime as ort

    from driftloop.schema import Signature, feeds_for

    signature = Signature.model_validate_json((folder / "signature.json").read_text())
    names = [s.name for s in signature.inputs]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def score(rows: pd.DataFrame) -> np.ndarray:
        feeds = feeds_for(rows, list(signature.inputs))
        return session.run(None, {k: feeds[k] for k in names})[0].reshape(-1)

    return score


def log_window_reader(log_dir: Path, model: str) -> WindowReader:
    """A `WindowReader` over the server's prediction log, versions in registry terms (semver)."""

    def read(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        frame = read_log_with_labels(log_dir, model, start, end)  # label NaN = not arrived (yet)
        if len(frame):  # the server logs integer version folders; the plane speaks registry semver
            frame["model_version"] = frame["model_version"].astype(str).map(registry_name)
        for column in ("latency_ms", "service_ms", "model_version", "request_id", "score"):
            if column not in frame:
                frame[column] = pd.Series(
                    dtype=float if column.endswith("ms") or column == "score" else object
                )
        if "ts" not in frame:
            frame["ts"] = pd.Series(dtype="datetime64[us, UTC]")
        return frame

    return read


PROGRESS_EVERY_S = 5.0  # seconds of `clock` between two progress lines


def no_traffic_message(canary: str, waited_s: float, params: ReleaseParams, url: str | None) -> str:
    """The line a canary without traffic prints: how long it waited, when it gives up, how to send traffic.

    Args:
        canary: the canary's version.
        waited_s: seconds since the analysis started.
        params: `min_requests`, `analysis_timeout_s`, `canary_weight`.
        url: the server's base URL (named in the command), None when unknown.
    """
    where = f" --url {url}" if url else ""
    return (
        f"canary {canary}: no traffic for {waited_s:.0f} s (0/{params.min_requests} requests; it gets "
        f"{params.canary_weight:g}% of requests, and without a verdict by {params.analysis_timeout_s:.0f} s "
        f"it rolls back): send some, e.g. `python -m flows.replay{where} --months 9 10 --batch 1 --loop`"
    )


def run_analysis(
    client: ServerClient | None,
    *,
    model: str,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
    log_dir: Path | None = None,
    baseline_s: float = 0.0,
    score_stable: StableScorer | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], pd.Timestamp] | None = None,
    read_window: WindowReader | None = None,
    read_errors: Callable[[], int] | None = None,
    read_cost: Callable[[], dict[str, float]] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Watch live traffic until the canary answered `min_requests` (then up to `label_wait_s` more for
    `min_labelled_rows` of its rows to be labelled), errors doom it, or `analysis_timeout_s` runs out.

    Every source of time and data is injectable, so the waiting logic is unit-tested without a
    server: `clock` (monotonic seconds) and `sleep` drive the loop, `now` stamps the window,
    `read_window` reads the log, `read_errors` the server's cumulative 5xx count.

    Args:
        client: the server (for the default `read_errors`); None when `read_errors` is given.
        model: model name on the server (the prediction log's folder).
        stable, canary: versions (registry semver).
        params: bounds and timings (`analysis_timeout_s`, `poll_interval_s`, `label_wait_s`).
        log_dir: the server's prediction log root (for the default `read_window`).
        baseline_s: also use stable's rows from this many seconds before the window (blue-green,
            where stable takes no traffic during the window).
        score_stable: scores the canary's labelled rows with stable (see `stable_scorer`).
        clock, sleep, now, read_window, read_errors: injected time and data sources.
        read_cost: {server version: CPU s per 1,000 predictions}; default `client.cpu_cost(model)`
            when a client is given, else the cost goes unreported.
        on_progress: called every 5 s (of `clock`) with the canary's request, label and error counts,
            or, while no request at all has arrived, with `no_traffic_message`.

    Returns:
        The analysis of the window.
    """
    now = now or (lambda: pd.Timestamp.now(tz="UTC"))
    if read_window is None:
        if log_dir is None:
            raise ValueError("run_analysis: give log_dir or read_window")
        read_window = log_window_reader(log_dir, model)
    if read_errors is None:
        if client is None:
            raise ValueError("run_analysis: give client or read_errors")
        read_errors = client.server_errors
    start = now()
    last_total = read_errors()
    errors = 0
    deadline = clock() + params.analysis_timeout_s
    doomed_at = max(1, math.floor(params.max_error_rate_increase * params.min_requests) + 1)
    say = on_progress or (lambda line: log.info("%s", line))
    enough_at: float | None = None  # when the canary reached min_requests
    last_said = clock()
    while True:
        sleep(params.poll_interval_s)
        total = read_errors()
        errors += max(0, total - last_total)  # a restarted server counts from 0 again
        last_total = total
        rows = read_window(start - pd.Timedelta(seconds=baseline_s), now() + pd.Timedelta(seconds=1))
        canary_rows = rows[(rows["model_version"] == canary) & (rows["ts"] >= start)]
        n = canary_rows["request_id"].nunique()
        labelled = len(_labelled(canary_rows))
        if errors >= doomed_at or clock() >= deadline:
            break
        if n >= params.min_requests:
            # Labels turn the verdict from a proxy (score PSI) into ground truth (ROC AUC): give
            # them up to `label_wait_s` to arrive, then decide with what there is.
            enough_at = enough_at if enough_at is not None else clock()
            if labelled >= params.min_labelled_rows or clock() - enough_at >= params.label_wait_s:
                break
        if clock() - last_said >= PROGRESS_EVERY_S:
            if n == 0 and not (rows["ts"] >= start).any():
                say(no_traffic_message(canary, clock() - (deadline - params.analysis_timeout_s), params,
                                       client.url if client is not None else None))  # fmt: skip
            else:
                say(
                    f"canary {canary}: {n}/{params.min_requests} requests, {labelled} labelled rows, {errors} errors"
                )
            last_said = clock()
    stable_rows = rows[rows["model_version"] == stable] if stable else rows.iloc[0:0]
    return analyse(stable_rows, canary_rows, errors, stable=stable, canary=canary, params=params,
                   score_stable=score_stable, cost=_read_cost(read_cost, client, model, stable, canary))  # fmt: skip


def _read_cost(read_cost: Callable[[], dict[str, float]] | None, client: ServerClient | None, model: str,
               stable: str | None, canary: str) -> dict[str, float | None]:  # fmt: skip
    """{registry version: CPU s per 1,000 predictions} of stable and canary; {} when unreadable."""
    from driftloop.release.client import server_version
    from driftloop.release.errors import ReleaseError

    if read_cost is None:
        if client is None:
            return {}
        read_cost = lambda: client.cpu_cost(model)  # noqa: E731
    try:
        by_server = read_cost()
    except (ReleaseError, ValueError) as exc:  # the cost is a report; an unreadable /metrics leaves it unmeasured
        log.warning("cpu cost not read: %s", exc)
        return {}
    return {v: by_server.get(server_version(v)) for v in (stable, canary) if v}
