"""Canary analysis on synthetic log windows: the paired AUC test, service-time latency, PSI, and the
waiting loop driven by an injected clock, sleep, log reader and error counter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.config import ReleaseParams
from driftloop.release import analyse, delong, run_analysis
from driftloop.stats import one_sided_critical


def window(scores: np.ndarray, labels: np.ndarray | None, version: str, *, service_ms: float = 0.2,
           latency_ms: float = 2.0, extra: dict | None = None) -> pd.DataFrame:  # fmt: skip
    n = len(scores)
    frame = pd.DataFrame({"request_id": [f"{version}-{i}" for i in range(n)], "score": scores,
                          "latency_ms": np.full(n, latency_ms), "service_ms": np.full(n, service_ms),
                          "model_version": version, **(extra or {})})  # fmt: skip
    frame["label"] = labels.astype(float) if labels is not None else np.nan
    return frame


def sample(n: int, seed: int, *, separation: float, shift: float = 0.0):
    """Labels ~ 25% positive; z = separation * label + noise + shift; returns (sigmoid(z), labels, z)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    z = separation * y + rng.normal(size=n) - 1.0 + shift
    return 1 / (1 + np.exp(-z)), y, z


PARAMS = ReleaseParams(min_requests=300, min_labelled_rows=200)


def by_column(column: str):
    """A stable scorer that reads stable's score of each canary row from a column of the window."""
    return lambda rows: rows[column].to_numpy(float)


# ------------------------------------------------------------------------------- DeLong
def slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) by its definition: O(m n) pairwise kernels; returns (diff, variance)."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        psi_ = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi_.mean(axis=1), psi_.mean(axis=0), psi_.mean()))
    v10, v01 = np.vstack([c[0] for c in comps]), np.vstack([c[1] for c in comps])
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    return comps[1][2] - comps[0][2], var


def test_fast_delong_matches_the_pairwise_definition_ties_included():
    _, y, z = sample(400, 5, separation=1.0)
    a = np.round(z, 1)  # many ties
    b = np.round(z + np.random.default_rng(6).normal(0, 0.7, len(z)), 1)
    fast = delong(y, a, b)
    diff, var = slow_delong(y, a, b)
    assert fast.diff == pytest.approx(diff, abs=1e-12)
    assert fast.se**2 == pytest.approx(var, rel=1e-9)
    from sklearn.metrics import roc_auc_score

    assert fast.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)


def test_the_same_ranking_gives_a_difference_of_exactly_zero():
    p, y, z = sample(3000, 7, separation=0.7)
    other_scale = 1 / (1 + np.exp(-(2.5 * z + 1.0)))  # strictly increasing map: the same ranking
    result = delong(y, p, other_scale)
    assert result.diff == 0.0 and result.se == 0.0 and result.z(0.0) == 0.0
    assert result.z(0.01) == float("inf")  # any margin passes
    assert delong(np.zeros(10, int), p[:10], p[:10]) is None  # one class: no verdict


# ------------------------------------------------------------------------------- the rules
def test_a_better_but_shifted_model_passes_when_labels_exist():
    s_scores, s_y, _ = sample(2000, 0, separation=0.8)
    c_scores, c_y, c_z = sample(400, 1, separation=1.6, shift=1.5)  # better AUC, scores moved up a lot
    noisy = 1 / (1 + np.exp(-(0.5 * c_z + np.random.default_rng(2).normal(size=len(c_z)))))  # stable: worse
    canary = window(c_scores, c_y, "v2", extra={"stable_score": noisy})
    result = analyse(window(s_scores, s_y, "v1"), canary, 0, stable="v1", canary="v2", params=PARAMS,
                     score_stable=by_column("stable_score"))  # fmt: skip
    checks = {c.name: c for c in result.checks}
    assert checks["score_psi"].value > checks["score_psi"].threshold  # the proxy alone would roll it back
    assert checks["score_psi"].passed and "advisory" in checks["score_psi"].reason
    assert checks["roc_auc"].passed and checks["roc_auc"].value > 0 and "same 400 labelled rows" in checks["roc_auc"].reason
    assert result.passed


def test_without_labels_the_same_shift_is_rolled_back():
    s_scores, _, _ = sample(2000, 0, separation=0.8)
    c_scores, _, _ = sample(400, 1, separation=1.6, shift=1.5)
    result = analyse(window(s_scores, None, "v1"), window(c_scores, None, "v2"), 0, stable="v1", canary="v2",
                     params=PARAMS, score_stable=by_column("score"))  # fmt: skip
    checks = {c.name: c for c in result.checks}
    assert "roc_auc" not in checks and not checks["score_psi"].passed and not result.passed


def test_an_inverted_model_fails_on_labels():
    c_scores, c_y, _ = sample(400, 1, separation=1.2)
    canary = window(1 - c_scores, c_y, "v2", extra={"stable_score": c_scores})
    result = analyse(window(c_scores, c_y, "v1"), canary, 0, stable="v1", canary="v2", params=PARAMS,
                     score_stable=by_column("stable_score"))  # fmt: skip
    checks = {c.name: c for c in result.checks}
    assert not checks["roc_auc"].passed and checks["roc_auc"].value < -0.3 and not result.passed


def test_latency_is_judged_on_each_versions_service_time_not_queue_time():
    s_scores, s_y, _ = sample(400, 0, separation=1.0)
    # stable queued behind the canary's batches (latency 40 ms) but its own service time is 0.2 ms
    stable = window(s_scores, None, "v1", service_ms=0.2, latency_ms=40.0)
    slow = analyse(stable, window(s_scores, None, "v2", service_ms=9.0, latency_ms=9.5), 0,
                   stable="v1", canary="v2", params=PARAMS)  # fmt: skip
    checks = {c.name: c for c in slow.checks}
    assert not checks["p50_latency"].passed and "latency (service time) 9.00 ms vs stable 0.20 ms" in checks["p50_latency"].reason
    same = analyse(stable, window(s_scores, None, "v2", service_ms=0.2, latency_ms=2.0), 0,
                   stable="v1", canary="v2", params=PARAMS)  # fmt: skip
    assert same.passed


# ------------------------------------------------------------------------------- the waiting loop
class FakeTime:
    """A clock that only moves when the analysis sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s
        self.sleeps += 1

    def now(self) -> pd.Timestamp:
        return pd.Timestamp("2026-11-30T00:00:00Z") + pd.Timedelta(seconds=self.t)


def traffic_reader(fake: FakeTime, *, per_second: int, labelled_after_s: float | None, canary_share: float = 0.5):
    """A log reader whose window grows by `per_second` requests per second of the fake clock; each
    request is labelled `labelled_after_s` seconds after it was answered (None: never)."""
    p, y, _ = sample(20000, 3, separation=1.0)

    def read(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        n = int(fake.t * per_second)
        ts = pd.Timestamp("2026-11-30T00:00:00Z") + pd.to_timedelta(np.arange(n) / per_second, unit="s")
        version = np.where(np.arange(n) % int(1 / canary_share) == 0, "v2", "v1")
        frame = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "ts": ts, "model_version": version,
                              "score": p[:n], "latency_ms": 1.0, "service_ms": 0.1, "stable_score": p[:n]})  # fmt: skip
        age = fake.t - np.arange(n) / per_second
        arrived = np.zeros(n, bool) if labelled_after_s is None else age >= labelled_after_s
        frame["label"] = np.where(arrived, y[:n], np.nan)
        return frame[(frame["ts"] >= start) & (frame["ts"] < end)]

    return read


def loop(fake: FakeTime, reader, params: ReleaseParams, errors=lambda: 0):
    return run_analysis(None, model="m", stable="v1", canary="v2", params=params, score_stable=by_column("stable_score"),
                        clock=fake.clock, sleep=fake.sleep, now=fake.now, read_window=reader, read_errors=errors)  # fmt: skip


TIMING = ReleaseParams(min_requests=100, min_labelled_rows=300, label_wait_s=60, analysis_timeout_s=600,
                       poll_interval_s=1.0)  # fmt: skip


def test_waits_for_labels_then_decides_on_roc_auc():
    fake = FakeTime()
    result = loop(fake, traffic_reader(fake, per_second=20, labelled_after_s=20), TIMING)
    # 100 canary requests at 10/s after 10 s; 300 canary rows labelled once 300 / 10 + 20 = 50 s passed
    assert 50 <= fake.t <= 51
    assert {c.name for c in result.checks} >= {"roc_auc"} and result.passed


def test_without_labels_the_psi_decides_after_label_wait():
    fake = FakeTime()
    result = loop(fake, traffic_reader(fake, per_second=20, labelled_after_s=None), TIMING)
    assert 10 + 60 <= fake.t <= 10 + 61  # min_requests at 10 s, then label_wait_s
    assert "roc_auc" not in {c.name for c in result.checks} and result.passed


def test_too_little_traffic_ends_at_the_timeout_and_rolls_back():
    fake = FakeTime()
    result = loop(fake, traffic_reader(fake, per_second=0.1, labelled_after_s=None), TIMING)
    assert fake.t == pytest.approx(600, abs=1.0)
    assert not result.passed and not {c.name: c for c in result.checks}["requests"].passed


def test_errors_end_the_analysis_at_once_and_a_restarted_servers_counter_is_not_negative():
    fake = FakeTime()
    counts = iter([50, 0, 0, 3])  # at start 50; the server restarts (0); then 3 new 5xx
    result = loop(fake, traffic_reader(fake, per_second=20, labelled_after_s=None), TIMING, errors=lambda: next(counts))
    assert fake.sleeps == 3 and result.errors == 3 and not result.passed


def test_the_rule_s_critical_value():
    assert one_sided_critical(0.001) == pytest.approx(3.0902, abs=1e-4)


def test_a_canary_without_traffic_says_so_every_few_seconds_with_the_command_that_sends_some():
    fake = FakeTime()
    said: list[str] = []
    params = TIMING.model_copy(update={"analysis_timeout_s": 30.0})
    result = run_analysis(None, model="m", stable="v1", canary="v2", params=params, score_stable=by_column("stable_score"),
                          clock=fake.clock, sleep=fake.sleep, now=fake.now, read_errors=lambda: 0,
                          read_window=traffic_reader(fake, per_second=0, labelled_after_s=None),
                          on_progress=said.append)  # fmt: skip
    assert not result.passed
    assert len(said) == 5  # at 5, 10, ..., 25 s of the fake clock; the 30 s timeout ends it
    assert all("no traffic" in line and "python -m flows.replay" in line and "--loop" in line for line in said)
    assert "no traffic for 5 s" in said[0] and "no traffic for 25 s" in said[-1]


def test_a_canary_with_traffic_reports_counts_not_no_traffic():
    fake = FakeTime()
    said: list[str] = []
    run_analysis(None, model="m", stable="v1", canary="v2", params=TIMING, score_stable=by_column("stable_score"),
                 clock=fake.clock, sleep=fake.sleep, now=fake.now, read_errors=lambda: 0,
                 read_window=traffic_reader(fake, per_second=20, labelled_after_s=20), on_progress=said.append)  # fmt: skip
    assert said and not any("no traffic" in line for line in said)
