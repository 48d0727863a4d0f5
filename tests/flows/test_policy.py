"""The retrain policy as a pure function: thresholds, cooldown, daily limit, skips."""

from __future__ import annotations

import datetime as dt

from driftloop.config import PolicyParams
from flows.policy import DriftSummary, PolicyState, decide, read_state, record_retrain, write_state

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def drifted(**kw) -> DriftSummary:
    base = dict(status="checked", rows=5000, drift_share=0.6, drifted_columns=["temp", "dewp"], score_drift=0.02)
    return DriftSummary(**{**base, **kw})


def test_ten_drift_events_inside_the_cooldown_make_one_retrain():
    policy = PolicyParams(cooldown_hours=24, max_retrains_per_day=3)
    state, retrains = PolicyState(), 0
    for i in range(10):  # one drift check every 30 minutes: 4.5 h, all inside the 24 h cooldown
        now = T0 + dt.timedelta(minutes=30 * i)
        d = decide(drifted(), policy, state, now)
        assert d.drift
        if d.retrain:
            retrains += 1
            state = record_retrain(state, now)
        else:
            assert "cooldown" in d.reasons[-1]
    assert retrains == 1


def test_retrains_again_after_the_cooldown():
    policy = PolicyParams(cooldown_hours=6, max_retrains_per_day=2)
    state = record_retrain(PolicyState(), T0)
    assert not decide(drifted(), policy, state, T0 + dt.timedelta(hours=5)).retrain
    assert decide(drifted(), policy, state, T0 + dt.timedelta(hours=7)).retrain


def test_daily_limit_blocks_even_outside_the_cooldown():
    policy = PolicyParams(cooldown_hours=1, max_retrains_per_day=2)
    state = record_retrain(record_retrain(PolicyState(), T0), T0 + dt.timedelta(hours=2))
    d = decide(drifted(), policy, state, T0 + dt.timedelta(hours=4))
    assert not d.retrain and "daily limit" in d.reasons[-1]
    assert decide(drifted(), policy, state, T0 + dt.timedelta(hours=25)).retrain


def test_no_drift_below_share_and_too_few_rows_and_skipped_never_retrain():
    policy = PolicyParams()
    assert not decide(drifted(drift_share=0.2), policy, PolicyState(), T0).retrain
    small = decide(drifted(rows=10), policy, PolicyState(), T0)
    assert not small.retrain and "too few rows" in small.reasons[0]
    skipped = decide(DriftSummary(status="skipped", reason="empty window"), policy, PolicyState(), T0)
    assert not skipped.retrain and skipped.reasons == ["skipped: empty window"]


def test_score_drift_and_auc_drop_are_drift_on_their_own():
    policy = PolicyParams(max_auc_drop=0.02)
    score = decide(drifted(drift_share=0.0, score_drift=0.3, score_drifted=True), policy, PolicyState(), T0)
    assert score.retrain and "score drifted" in score.reasons[0]
    perf = decide(drifted(drift_share=0.0, roc_auc=0.60, reference_roc_auc=0.70, labelled_rows=900), policy, PolicyState(), T0)
    assert perf.retrain and "ROC AUC fell" in perf.reasons[0]
    off = PolicyParams(max_auc_drop=None, score_drift=False)
    assert not decide(drifted(drift_share=0.0, score_drifted=True, roc_auc=0.5, reference_roc_auc=0.7), off, PolicyState(), T0).retrain


def test_max_retrains_zero_means_never():
    d = decide(drifted(), PolicyParams(max_retrains_per_day=0), PolicyState(), T0)
    assert d.drift and not d.retrain


def test_state_file_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "state" / "policy.json"
    assert read_state(path).retrains == []
    state = record_retrain(PolicyState(retrains=[T0 - dt.timedelta(days=60)]), T0)
    write_state(path, state)
    assert read_state(path).retrains == [T0]  # history older than 30 days dropped
    assert not list(path.parent.glob(".*"))  # no temporary left behind
