"""The retrain policy: a pure function of a drift summary's checks, the `policy` params, past retrains and now.

The detectors (`driftloop/drift.py`) have already compared every measurement with its threshold
(all from `policy`, once) and returned `Check`s; `decide` reads their verdict ("drift", "no drift",
"insufficient evidence", "not computed") and adds the rate limits (cooldown, a daily maximum).
Its only memory is a small JSON state file (the times of past retrains). `decide_and_record`
reads, decides and writes it under a kernel lock (`filelock`, released by the OS when its holder
dies), so checks started at once make at most the allowed retrains and the state records each.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from driftloop.checks import Check
from driftloop.config import PolicyParams
from driftloop.drift import verdict

Verdict = Literal["drift", "no drift", "insufficient evidence", "not computed", "skipped"]


class DriftSummary(BaseModel):
    """What a drift check measured on one window of the prediction log, for one model version.

    Attributes:
        status: "checked"; "skipped" when there was nothing to measure (no reference, empty
            window, unknown version); "failed" when the measurement raised (then nothing is
            known, and nothing says "no drift"). `reason` says why for the last two.
        reason: one line for people when skipped or failed.
        model_version: the version judged (the one the reference belongs to).
        rows: rows of that version in the window (before sampling).
        other_versions: rows of other versions in the window, left out (version -> rows).
        rows_compared: rows given to the detectors after sampling.
        span_hours: the time span of the judged rows, hours.
        reference_rows: rows of the reference sample.
        labelled_rows: judged rows whose label has arrived.
        unknown_label_ids: label rows whose request id is not in the log (ignored).
        checks: every detector's `Check` (driftloop/drift.py `assess`).
        window_start: first instant of the window (UTC, ISO-8601).
        window_end: end of the window, exclusive (UTC, ISO-8601).
    """

    status: Literal["checked", "skipped", "failed"]
    reason: str = ""
    model_version: str | None = None
    rows: int = 0
    other_versions: dict[str, int] = {}
    rows_compared: int = 0
    span_hours: float | None = None
    reference_rows: int = 0
    labelled_rows: int = 0
    unknown_label_ids: int = 0
    checks: list[Check] = []
    window_start: str | None = None
    window_end: str | None = None

    def check(self, name: str) -> Check | None:
        """The first check called `name`, or None."""
        return next((c for c in self.checks if c.name == name), None)

    @property
    def verdict(self) -> Verdict:
        """The detectors' verdict ("skipped" for a skipped or failed check)."""
        return "skipped" if self.status != "checked" else verdict(self.checks)[0]  # type: ignore[return-value]

    @property
    def drift_share(self) -> float | None:
        """Share of computed feature columns past their thresholds, or None when not computed."""
        c = self.check("drift_share")
        return None if c is None else c.value

    @property
    def drifted_columns(self) -> list[str]:
        """Feature columns past their thresholds, in input order."""
        return [str(c.subject) for c in self.checks if c.name == "column_drift" and c.value is not None and not c.passed]

    @property
    def score_drift(self) -> float | None:
        """Distance of the score's distribution from the reference's, or None."""
        c = self.check("score_drift")
        return None if c is None else c.value


class PolicyState(BaseModel):
    """The policy's memory: when retrains were triggered (UTC)."""

    retrains: list[dt.datetime] = []


class Decision(BaseModel):
    """The policy's answer.

    Attributes:
        retrain: True when a retrain should start now.
        drift: True when the window drifted (whatever the rate limits say).
        verdict: the detectors' verdict; "no drift" only when every drift detector was computed.
        reasons: why, one line each (evidence, then what blocked or allowed the retrain).
    """

    retrain: bool
    drift: bool
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)


def decide(summary: DriftSummary, policy: PolicyParams, state: PolicyState, now: dt.datetime) -> Decision:
    """Decide whether a drift check's result starts a retrain. Pure: no I/O, no clock.

    Args:
        summary: the drift check's measurements (thresholds already applied by the detectors).
        policy: the `policy` params (only the rate limits are read here).
        state: times of past retrains.
        now: the decision time (timezone-aware, UTC).

    Returns:
        The decision; a skipped or failed summary, insufficient evidence or a detector that could
        not be computed never retrains and never says "no drift".
    """
    if summary.status != "checked":
        word = "skipped" if summary.status == "skipped" else "not computed"
        return Decision(retrain=False, drift=False, verdict="skipped", reasons=[f"{word}: {summary.reason}"])
    v, evidence = verdict(summary.checks)
    if v != "drift":
        return Decision(retrain=False, drift=False, verdict=v, reasons=[f"{v}: {r}" for r in evidence])  # type: ignore[arg-type]
    # Retrains stamped after `now` (another host's clock, a check that started earlier but
    # decided later) count as recent: skew must not open the gate.
    past = sorted(state.retrains)
    if policy.max_retrains_per_day == 0:
        why = "retraining is off (policy.max_retrains_per_day 0)"
        return Decision(retrain=False, drift=True, verdict=v, reasons=[*evidence, why])
    if past and abs(now - past[-1]) < dt.timedelta(hours=policy.cooldown_hours):
        why = f"in cooldown: last retrain {past[-1].isoformat()} < {policy.cooldown_hours:g} h ago"
        return Decision(retrain=False, drift=True, verdict=v, reasons=[*evidence, why])
    last_day = [t for t in past if abs(now - t) < dt.timedelta(days=1)]
    if len(last_day) >= policy.max_retrains_per_day:
        why = f"daily limit: {len(last_day)} retrain(s) in 24 h >= {policy.max_retrains_per_day}"
        return Decision(retrain=False, drift=True, verdict=v, reasons=[*evidence, why])
    return Decision(retrain=True, drift=True, verdict=v, reasons=[*evidence, "retrain: outside cooldown and under the daily limit"])


def record_retrain(state: PolicyState, now: dt.datetime, keep_days: float = 30.0) -> PolicyState:
    """A new state with `now` appended and retrains older than `keep_days` dropped. Pure.

    Args:
        state: the current state.
        now: the retrain's time (UTC).
        keep_days: history kept, days (only the last day matters to the policy).

    Returns:
        The new state.
    """
    horizon = now - dt.timedelta(days=keep_days)
    return PolicyState(retrains=[t for t in state.retrains if t >= horizon] + [now])


def read_state(path: str | os.PathLike[str]) -> PolicyState:
    """Read the state file; a missing file is an empty history.

    Raises:
        ValueError: the file exists but is not a valid state (fix or delete it).
    """
    path = Path(path)
    if not path.is_file():
        return PolicyState()
    return PolicyState.model_validate_json(path.read_text())


def write_state(path: str | os.PathLike[str], state: PolicyState) -> None:
    """Write the state file atomically (temp file + rename)."""
    from driftloop.io import write_text

    write_text(path, state.model_dump_json(indent=2) + "\n")


def decide_and_record(
    state_path: str | os.PathLike[str],
    summary: DriftSummary,
    policy: PolicyParams,
    now: dt.datetime,
    on_retrain: Callable[[], None] | None = None,
    timeout_s: float = 60.0,
) -> Decision:
    """Read the state, decide, and on a retrain record it and call `on_retrain`, all under one lock.

    The lock is a kernel lock on `<state_path>.lock` (`filelock.FileLock`: `fcntl.flock` on POSIX),
    released by the OS if the holder dies; concurrent checks are serialized, so the second one
    sees the first's retrain and waits out the cooldown. The state is written before
    `on_retrain` (the event) is called: a crash between the two loses a retrain, never doubles one.

    Args:
        state_path: the policy state file (`monitor.state_file`).
        summary: the check's measurements.
        policy: the `policy` params.
        now: decision time (UTC).
        on_retrain: called once, inside the lock, when the decision is to retrain (emits the event).
        timeout_s: how long to wait for the lock.

    Returns:
        The decision.

    Raises:
        filelock.Timeout: the lock was held for longer than `timeout_s`.
        ValueError: the state file is not a valid state.
    """
    from filelock import FileLock

    path = Path(state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout_s):
        state = read_state(path)
        decision = decide(summary, policy, state, now)
        if decision.retrain:
            write_state(path, record_retrain(state, now))
            if on_retrain is not None:
                on_retrain()
    return decision
