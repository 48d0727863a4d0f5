"""The retrain policy as a pure function of the detectors' checks, and its atomic read-decide-write
under real concurrent processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from pathlib import Path

from driftloop.checks import Check
from driftloop.config import PolicyParams
from flows.policy import (
    DriftSummary,
    PolicyState,
    decide,
    decide_and_record,
    read_state,
    record_retrain,
    write_state,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def chk(name: str, value: float | None, threshold: float | None, passed: bool, subject: str | None = None) -> Check:
    return Check(name=name, value=value, threshold=threshold, passed=passed, reason=f"{subject or name} {value}", subject=subject)


def summary(share: float | None = 0.3, score: float | None = 0.02, auc: float | None = None, **kw) -> DriftSummary:
    """A checked summary whose detectors said: share (threshold 0.2), score (0.1), AUC bound (0.02)."""
    checks = [
        chk("min_rows", 5000, 1000, True), chk("min_span_hours", 336, 24, True),
        chk("column_drift", 2.0, 1.0, False, "temp"), chk("column_drift", 0.01, 0.1, True, "carrier"),
        chk("drift_share", share, 0.2, share is not None and share < 0.2),
        chk("score_drift", score, 0.1, score is not None and score < 0.1),
        chk("auc_drop", auc, 0.02, auc is None or auc <= 0.02),
    ]  # fmt: skip
    return DriftSummary(status="checked", rows=5000, checks=checks, **kw)


def test_ten_drift_events_inside_the_cooldown_make_one_retrain():
    policy = PolicyParams(cooldown_hours=24, max_retrains_per_day=3)
    state, retrains = PolicyState(), 0
    for i in range(10):  # one drift check every 30 minutes: 4.5 h, all inside the 24 h cooldown
        now = T0 + dt.timedelta(minutes=30 * i)
        d = decide(summary(), policy, state, now)
        assert d.drift and d.verdict == "drift"
        if d.retrain:
            retrains += 1
            state = record_retrain(state, now)
        else:
            assert "cooldown" in d.reasons[-1]
    assert retrains == 1


def test_retrains_again_after_the_cooldown():
    policy = PolicyParams(cooldown_hours=6, max_retrains_per_day=2)
    state = record_retrain(PolicyState(), T0)
    assert not decide(summary(), policy, state, T0 + dt.timedelta(hours=5)).retrain
    assert decide(summary(), policy, state, T0 + dt.timedelta(hours=7)).retrain


def test_daily_limit_blocks_even_outside_the_cooldown():
    policy = PolicyParams(cooldown_hours=1, max_retrains_per_day=2)
    state = record_retrain(record_retrain(PolicyState(), T0), T0 + dt.timedelta(hours=2))
    d = decide(summary(), policy, state, T0 + dt.timedelta(hours=4))
    assert not d.retrain and "daily limit" in d.reasons[-1]
    assert decide(summary(), policy, state, T0 + dt.timedelta(hours=25)).retrain


def test_no_drift_insufficient_and_skipped_never_retrain():
    policy = PolicyParams()
    quiet = decide(summary(share=0.1), policy, PolicyState(), T0)
    assert not quiet.retrain and quiet.verdict == "no drift"
    short = summary()
    short.checks[1] = chk("min_span_hours", 3, 24, False)
    d = decide(short, policy, PolicyState(), T0)
    assert not d.retrain and d.verdict == "insufficient evidence" and "min_span_hours" in d.reasons[0]
    skipped = decide(DriftSummary(status="skipped", reason="empty window"), policy, PolicyState(), T0)
    assert not skipped.retrain and skipped.reasons == ["skipped: empty window"]
    failed = decide(DriftSummary(status="failed", reason="ValueError: x"), policy, PolicyState(), T0)
    assert not failed.retrain and failed.verdict == "skipped" and failed.reasons == ["not computed: ValueError: x"]


def test_uncomputed_share_is_never_no_drift():
    d = decide(summary(share=None), PolicyParams(), PolicyState(), T0)
    assert d.verdict == "not computed" and not d.retrain and not d.drift


def test_score_drift_and_auc_drop_are_drift_on_their_own():
    policy = PolicyParams()
    score = decide(summary(share=0.1, score=0.3), policy, PolicyState(), T0)
    assert score.retrain and "score_drift" in score.reasons[0]
    perf = decide(summary(share=0.1, auc=0.05), policy, PolicyState(), T0)
    assert perf.retrain and "auc_drop" in perf.reasons[0]


def test_max_retrains_zero_means_never():
    d = decide(summary(), PolicyParams(max_retrains_per_day=0), PolicyState(), T0)
    assert d.drift and not d.retrain


def test_state_file_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "state" / "policy.json"
    assert read_state(path).retrains == []
    state = record_retrain(PolicyState(retrains=[T0 - dt.timedelta(days=60)]), T0)
    write_state(path, state)
    assert read_state(path).retrains == [T0]  # history older than 30 days dropped
    assert not list(path.parent.glob(".*"))  # no temporary left behind


def _contend(state: str, events: str, barrier, cooldown: float, per_day: int, i: int) -> None:
    """One drift check's read-decide-write in its own process; the 'event' is a line appended to a file."""
    policy = PolicyParams(cooldown_hours=cooldown, max_retrains_per_day=per_day)
    now = T0 + dt.timedelta(seconds=i)  # ten checks within ten seconds

    def on_retrain() -> None:
        with open(events, "a") as fh:
            fh.write(f"{i}\n")

    barrier.wait(timeout=60)
    decide_and_record(state, summary(), policy, now, on_retrain)


def _race(tmp_path: Path, cooldown: float, per_day: int) -> tuple[list[str], PolicyState]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(10)
    state, events = tmp_path / "state.json", tmp_path / "events.txt"
    procs = [ctx.Process(target=_contend, args=(str(state), str(events), barrier, cooldown, per_day, i)) for i in range(10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    lines = events.read_text().split() if events.exists() else []
    return lines, read_state(state)


def test_ten_checks_at_once_make_at_most_the_allowed_retrains_and_the_state_records_each(tmp_path):
    lines, state = _race(tmp_path / "a", cooldown=24, per_day=1)
    assert len(lines) == 1 and len(state.retrains) == 1
    assert state.retrains[0] == T0 + dt.timedelta(seconds=int(lines[0]))
    lines, state = _race(tmp_path / "b", cooldown=0, per_day=3)  # no cooldown: the daily limit decides
    assert len(lines) == 3 and len(state.retrains) == 3
    assert sorted(state.retrains) == sorted(T0 + dt.timedelta(seconds=int(x)) for x in lines)
