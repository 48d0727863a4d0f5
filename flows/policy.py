"""The retrain policy: a pure function of a drift summary, the `policy` params, past retrains and now.

Large windows make every test significant, so a drift check alone would alarm on every run; the
policy asks for enough rows, a material share of drifted columns (or a drifted score, or a real
drop of ROC AUC where labels exist), and rate-limits retrains (cooldown, a daily maximum). Its
only memory is a small JSON state file (the times of past retrains), read and written by the
shell (`read_state` / `write_state`, atomic), so `decide` is unit-testable without files or clocks.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from driftloop.config import PolicyParams


class DriftSummary(BaseModel):
    """What a drift check measured on one window of the prediction log.

    Attributes:
        status: "checked", or "skipped" when nothing could be measured (then `reason` says why).
        reason: one line for people when skipped.
        rows: logged rows in the window (before sampling).
        rows_compared: rows given to Evidently after sampling.
        reference_rows: rows of the reference sample.
        drift_share: share of drifted feature columns (Evidently `DriftedColumnsCount.share`), [0, 1].
        drifted_columns: names of the drifted feature columns.
        column_scores: column -> drift distance (normed Wasserstein or Jensen-Shannon).
        score_drift: normed Wasserstein distance of the model's `score`, current vs reference.
        score_drifted: `score_drift` >= the monitor's `score_threshold`.
        labelled_rows: window rows whose label has arrived.
        unknown_label_ids: label rows whose request id is not in the log (ignored).
        roc_auc: ROC AUC on the labelled rows, or None when too few (or one class).
        reference_roc_auc: ROC AUC of the reference sample's `score` vs its `label`.
        window_start: first instant of the window (UTC, ISO-8601).
        window_end: end of the window, exclusive (UTC, ISO-8601).
    """

    status: Literal["checked", "skipped"]
    reason: str = ""
    rows: int = 0
    rows_compared: int = 0
    reference_rows: int = 0
    drift_share: float | None = None
    drifted_columns: list[str] = []
    column_scores: dict[str, float] = {}
    score_drift: float | None = None
    score_drifted: bool = False
    labelled_rows: int = 0
    unknown_label_ids: int = 0
    roc_auc: float | None = None
    reference_roc_auc: float | None = None
    window_start: str | None = None
    window_end: str | None = None

    @property
    def auc_drop(self) -> float | None:
        """Reference ROC AUC minus current ROC AUC, when both exist."""
        if self.roc_auc is None or self.reference_roc_auc is None:
            return None
        return self.reference_roc_auc - self.roc_auc


class PolicyState(BaseModel):
    """The policy's memory: when retrains were triggered (UTC)."""

    retrains: list[dt.datetime] = []


class Decision(BaseModel):
    """The policy's answer.

    Attributes:
        retrain: True when a retrain should start now.
        drift: True when the window drifted (whatever the rate limits say).
        reasons: why, one line each (drift evidence, then what blocked or allowed the retrain).
    """

    retrain: bool
    drift: bool
    reasons: list[str] = Field(default_factory=list)


def decide(summary: DriftSummary, policy: PolicyParams, state: PolicyState, now: dt.datetime) -> Decision:
    """Decide whether a drift check's result starts a retrain. Pure: no I/O, no clock.

    Args:
        summary: the drift check's measurements.
        policy: the `policy` params (thresholds and rate limits).
        state: times of past retrains.
        now: the decision time (timezone-aware, UTC).

    Returns:
        The decision; a skipped summary or a window under `policy.min_rows` never retrains.
    """
    if summary.status == "skipped":
        return Decision(retrain=False, drift=False, reasons=[f"skipped: {summary.reason}"])
    if summary.rows < policy.min_rows:
        return Decision(
            retrain=False, drift=False, reasons=[f"too few rows: {summary.rows} < policy.min_rows {policy.min_rows}"]
        )
    evidence: list[str] = []
    if summary.drift_share is not None and summary.drift_share >= policy.drift_share:
        evidence.append(
            f"drift share {summary.drift_share:.2f} >= {policy.drift_share:.2f} "
            f"({', '.join(summary.drifted_columns) or 'no columns named'})"
        )
    if policy.score_drift and summary.score_drifted:
        evidence.append(f"score drifted (distance {summary.score_drift:.3f})")
    drop = summary.auc_drop
    if policy.max_auc_drop is not None and drop is not None and drop > policy.max_auc_drop:
        evidence.append(
            f"ROC AUC fell {drop:.3f} > {policy.max_auc_drop:.3f} "
            f"({summary.reference_roc_auc:.3f} -> {summary.roc_auc:.3f}, {summary.labelled_rows} labelled rows)"
        )
    if not evidence:
        share = "n/a" if summary.drift_share is None else f"{summary.drift_share:.2f}"
        return Decision(retrain=False, drift=False, reasons=[f"no drift: share {share} < {policy.drift_share:.2f}"])
    past = sorted(t for t in state.retrains if t <= now)
    if policy.max_retrains_per_day == 0:
        return Decision(retrain=False, drift=True, reasons=[*evidence, "retraining is off (policy.max_retrains_per_day 0)"])
    if past and now - past[-1] < dt.timedelta(hours=policy.cooldown_hours):
        return Decision(
            retrain=False, drift=True,
            reasons=[*evidence, f"in cooldown: last retrain {past[-1].isoformat()} < {policy.cooldown_hours:g} h ago"],
        )  # fmt: skip
    last_day = [t for t in past if now - t < dt.timedelta(days=1)]
    if len(last_day) >= policy.max_retrains_per_day:
        return Decision(
            retrain=False, drift=True,
            reasons=[*evidence, f"daily limit: {len(last_day)} retrain(s) in 24 h >= {policy.max_retrains_per_day}"],
        )  # fmt: skip
    return Decision(retrain=True, drift=True, reasons=[*evidence, "retrain: outside cooldown and under the daily limit"])


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
