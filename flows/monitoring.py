"""The drift check: a window of the prediction log against the prod package's reference sample.

Pieces, each testable alone:
- `load_window`: the log window (driftloop/predlog.py's reader) with the labels that have arrived,
  joined by (request_id, row).
- `measure_drift`: Evidently 0.7 `DataDriftPreset` over the raw `FEATURES` columns plus a
  `ValueDrift` of the model's `score`; ROC AUC where labels exist. Large windows are sampled
  (Evidently's cost grows with rows and faster than linearly with columns).
- `flows.policy.decide`: a pure function says whether to retrain.
- `drift_check_flow`: the Prefect flow that wires them, writes `drift_report.html` and
  `drift_summary.json` (atomically) under `monitor.reports_dir`, publishes an artifact and,
  when the policy says so, emits `driftloop.drift.detected` for the retraining deployment.

An empty window, too few rows, a missing or unreadable reference, malformed labels or labels for
request ids the log does not hold never crash the check and never retrain: the summary says
"skipped" (or counts the ignored labels) and why.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from driftloop.config import MonitorParams, PackageParams, PolicyParams, parse_section, read_params_file
from driftloop.predlog import to_utc
from driftloop.schema import CATEGORICAL, FEATURES, FLOAT, INTEGER
from flows.policy import Decision, DriftSummary, decide, read_state, record_retrain, write_state

log = logging.getLogger(__name__)

DRIFT_EVENT = "driftloop.drift.detected"
"""Name of the event the drift check emits when the policy says retrain."""


def model_resource_id(model_name: str) -> str:
    """The Prefect resource id of a model: `driftloop.model.<name>` (the trigger matches on it)."""
    return f"driftloop.model.{model_name}"


class DriftCheckResult(BaseModel):
    """What one drift check ended with.

    Attributes:
        summary: the measurements (or why the check was skipped).
        decision: the policy's decision.
        event_emitted: True when `driftloop.drift.detected` was emitted.
        payload: the event's payload (as_of, window_months, summary), when emitted.
        report_html: path of the HTML report, when one was written.
        summary_json: path of the JSON summary.
    """

    summary: DriftSummary
    decision: Decision
    event_emitted: bool = False
    payload: dict[str, Any] | None = None
    report_html: str | None = None
    summary_json: str | None = None


def load_window(
    log_dir: str | os.PathLike[str], model: str, start: dt.datetime, end: dt.datetime
) -> tuple[pd.DataFrame, int, str]:
    """The log rows with `start <= ts < end`, joined with the labels that have arrived.

    Args:
        log_dir: the prediction log root.
        model: model name (the log's sub-folder).
        start: window start, inclusive (naive = UTC).
        end: window end, exclusive (naive = UTC).

    Returns:
        (frame, unknown_labels, note): the window with a `label` column (float, NaN = not yet
        labelled); the count of label rows whose (request_id, row) the window lacks and whose
        `observed_at` falls in the window (labels for unknown requests, ignored); a note when
        the label files could not be read (they are ignored, the check goes on).
    """
    from driftloop.predlog import read_labels, read_log

    frame = read_log(log_dir, model, start, end)
    note = ""
    try:
        labels = read_labels(log_dir, model)
    except (ValueError, OSError) as exc:
        labels, note = None, f"labels ignored: {exc}"
    if labels is None or labels.empty or frame.empty:
        frame = frame.copy()
        frame["label"] = np.nan
        return frame, 0, note
    frame = frame.copy()
    frame["row"] = frame["row"].astype(np.int64)
    merged = frame.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"], how="left")
    in_window = labels[(labels["observed_at"] >= to_utc(start)) & (labels["observed_at"] < to_utc(end))]
    keys = set(zip(frame["request_id"].astype(str), frame["row"], strict=True))
    unknown = sum((rid, row) not in keys for rid, row in zip(in_window["request_id"], in_window["row"], strict=True))
    return merged, int(unknown), note


def _roc_auc(labels: pd.Series, scores: pd.Series, min_rows: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    mask = labels.notna() & scores.notna()
    y, s = labels[mask].astype(int), scores[mask].astype(float)
    if len(y) < min_rows or y.nunique() < 2:
        return None
    return float(roc_auc_score(y, s))


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=n, random_state=seed) if len(frame) > n else frame


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """FEATURES + score with the dtypes Evidently should see: strings for categories, floats else."""
    out = pd.DataFrame(index=frame.index)
    for c in CATEGORICAL:
        out[c] = frame[c].astype(str)
    for c in (*INTEGER, *FLOAT, "score"):
        out[c] = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
    return out


def measure_drift(
    current: pd.DataFrame, reference: pd.DataFrame, monitor: MonitorParams, drift_share: float = 0.5
) -> tuple[DriftSummary, Any]:
    """Compare a log window with the reference sample (Evidently 0.7), and score ROC AUC.

    Args:
        current: the log window: `FEATURES`, `score`, optionally `label` (NaN = unlabelled).
        reference: the package's reference sample: `FEATURES`, `score`, `label`.
        monitor: thresholds (per-column and score drift distance), sample size, seed.
        drift_share: dataset-level drift share shown in Evidently's test (policy.drift_share).

    Returns:
        (summary, evidently_snapshot): the snapshot is None when the check was skipped.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    base = {"rows": len(current), "reference_rows": len(reference)}
    if current.empty:
        return DriftSummary(status="skipped", reason="empty window: no predictions logged", **base), None
    if reference.empty:
        return DriftSummary(status="skipped", reason="reference sample is empty", **base), None
    for name, frame in (("log window", current), ("reference", reference)):
        missing = [c for c in (*FEATURES, "score") if c not in frame.columns]
        if missing:
            return DriftSummary(status="skipped", reason=f"{name} lacks column(s) {', '.join(missing)}", **base), None
    cur = _typed(_sample(current, monitor.max_rows, monitor.seed))
    ref = _typed(_sample(reference, monitor.max_rows, monitor.seed))
    definition = DataDefinition(numerical_columns=[*INTEGER, *FLOAT, "score"], categorical_columns=list(CATEGORICAL))
    report = Report(
        [
            DataDriftPreset(columns=list(FEATURES), drift_share=drift_share, threshold=monitor.column_threshold),
            ValueDrift(column="score", threshold=monitor.score_threshold),
        ],
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    result = snapshot.dict()
    share, scores, score_drift = None, {}, None
    for metric in result["metrics"]:
        cfg = metric.get("config", {})
        kind = str(cfg.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            if cfg.get("column") == "score":
                score_drift = float(metric["value"])
            else:
                scores[cfg["column"]] = float(metric["value"])
    drifted = []
    for test in result.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if str(params.get("type", "")).endswith("ValueDrift") and params.get("column") in FEATURES:
            if test.get("status") == "FAIL":
                drifted.append(params["column"])
    labels = current["label"] if "label" in current.columns else pd.Series(np.nan, index=current.index)
    summary = DriftSummary(
        status="checked",
        rows_compared=len(cur),
        drift_share=share,
        drifted_columns=sorted(set(drifted), key=list(FEATURES).index),
        column_scores=scores,
        score_drift=score_drift,
        score_drifted=score_drift is not None and score_drift >= monitor.score_threshold,
        labelled_rows=int(labels.notna().sum()),
        roc_auc=_roc_auc(labels, current["score"], monitor.min_labelled_rows),
        reference_roc_auc=_roc_auc(reference["label"], reference["score"], monitor.min_labelled_rows)
        if "label" in reference.columns
        else None,
        **base,
    )
    return summary, snapshot


def summary_markdown(result: DriftCheckResult) -> str:
    """The drift check as markdown: decision, reasons, measurements, drifted columns."""
    s, d = result.summary, result.decision

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"# Drift check: {'**retrain**' if d.retrain else ('drift, no retrain' if d.drift else 'no retrain')}",
        "",
        f"Window: {s.window_start} .. {s.window_end} (UTC), {s.rows} rows ({s.rows_compared} compared), "
        f"reference {s.reference_rows} rows",
        "",
        *[f"- {r}" for r in d.reasons],
        "",
        "| measure | value |",
        "|---|---|",
        f"| drift share (feature columns) | {f(s.drift_share)} |",
        f"| drifted columns | {', '.join(s.drifted_columns) or '-'} |",
        f"| score drift (normed Wasserstein) | {f(s.score_drift)} |",
        f"| labelled rows | {s.labelled_rows} |",
        f"| ROC AUC (window / reference) | {f(s.roc_auc)} / {f(s.reference_roc_auc)} |",
        f"| labels for unknown request ids | {s.unknown_label_ids} |",
    ]
    if result.report_html:
        lines += ["", f"Report: [{result.report_html}](file://{result.report_html})"]
    return "\n".join(lines) + "\n"


@task(name="read-window")
def read_window_task(log_dir: str, model: str, start: dt.datetime, end: dt.datetime) -> tuple[pd.DataFrame, int, str]:
    """Prefect wrapper of `load_window` (same Args/Returns)."""
    return load_window(log_dir, model, start, end)


@task(name="read-reference")
def read_reference_task(package_dir: str) -> tuple[pd.DataFrame | None, str]:
    """Read `<package_dir>/reference.parquet`.

    Returns:
        (frame, "") or (None, why) when it is missing or unreadable.
    """
    path = Path(package_dir) / "reference.parquet"
    if not path.is_file():
        return None, f"no reference sample at {path} (is a model package built and deployed?)"
    try:
        return pd.read_parquet(path), ""
    except (OSError, ValueError) as exc:
        return None, f"reference sample {path} is unreadable: {exc}"


@task(name="measure-drift")
def measure_drift_task(
    current: pd.DataFrame, reference: pd.DataFrame, monitor: MonitorParams, drift_share: float
) -> tuple[DriftSummary, Any]:
    """Prefect wrapper of `measure_drift` (same Args/Returns)."""
    return measure_drift(current, reference, monitor, drift_share)


@task(name="write-drift-reports")
def write_reports_task(reports_dir: str, summary: DriftSummary, decision: Decision, snapshot: Any) -> tuple[str | None, str]:
    """Write `drift_report.html` (when measured) and `drift_summary.json`, each atomically.

    Returns:
        (html path or None, json path), absolute.
    """
    from driftloop.io import atomic_path, write_json

    folder = Path(reports_dir).resolve()
    html = None
    if snapshot is not None:
        target = folder / "drift_report.html"
        with atomic_path(target) as tmp:
            snapshot.save_html(str(tmp))
        html = str(target)
    summary_path = folder / "drift_summary.json"
    write_json(summary_path, {"summary": summary.model_dump(mode="json"), "decision": decision.model_dump(mode="json")})
    return html, str(summary_path)


@flow(name="drift-check", log_prints=False)
def drift_check_flow(
    window_end: dt.datetime | None = None,
    window_hours: float | None = None,
    as_of: dt.date | None = None,
    model_name: str | None = None,
    root: str = ".",
    emit: bool = True,
) -> DriftCheckResult:
    """Check the last window of the prediction log for drift; emit the retrain event if the policy says so.

    Args:
        window_end: end of the log window (exclusive, UTC); None = now.
        window_hours: window length, hours; None = params `monitor.window_hours`.
        as_of: the data date the drifted window ends at, sent as the retrain's `as_of`; None =
            the UTC date of the window's last instant. (A replay of 2013 flights logs them now:
            pass the flights' last date here.)
        model_name: the model's name in the log and on the server; None = params `package.model_name`.
        root: project root (params.yaml; relative paths of `monitor` resolve against it).
        emit: emit the event when the policy says retrain (False: decide only; state untouched).

    Returns:
        The check's result (a skipped check is a result, never an exception).

    Raises:
        ParamsError: params.yaml's `monitor` or `policy` section is invalid.
    """
    from prefect.events import emit_event

    logger = get_run_logger()
    rootp = Path(root).resolve()
    raw = read_params_file(rootp / "params.yaml")
    monitor = parse_section("monitor", raw.get("monitor"), MonitorParams)
    policy = parse_section("policy", raw.get("policy"), PolicyParams)
    model = model_name or parse_section("package", raw.get("package"), PackageParams).model_name

    def at_root(p: str) -> str:
        return str(p if Path(p).is_absolute() else rootp / p)

    now = dt.datetime.now(dt.UTC)
    end = to_utc(window_end or now).to_pydatetime()
    start = end - dt.timedelta(hours=window_hours or monitor.window_hours)
    frame, unknown, note = read_window_task(at_root(monitor.log_dir), model, start, end)
    reference, why = read_reference_task(at_root(monitor.package_dir))
    window = {"window_start": start.isoformat(), "window_end": end.isoformat(), "unknown_label_ids": unknown}
    if reference is None:
        summary, snapshot = DriftSummary(status="skipped", reason=why, rows=len(frame), **window), None
    elif len(frame) < policy.min_rows:
        reason = "empty window: no predictions logged" if frame.empty else f"too few rows: {len(frame)} < policy.min_rows {policy.min_rows}"
        summary, snapshot = DriftSummary(status="skipped", reason=reason, rows=len(frame), reference_rows=len(reference), **window), None
    else:
        summary, snapshot = measure_drift_task(frame, reference, monitor, policy.drift_share)
        summary = summary.model_copy(update=window)
    if note:
        logger.warning("%s", note)
    state_path = at_root(monitor.state_file)
    state = read_state(state_path)
    decision = decide(summary, policy, state, now)
    html, summary_json = write_reports_task(at_root(monitor.reports_dir), summary, decision, snapshot)
    result = DriftCheckResult(summary=summary, decision=decision, report_html=html, summary_json=summary_json)
    if decision.retrain and emit:
        last_instant = end - dt.timedelta(microseconds=1)
        payload = {
            "as_of": (as_of or last_instant.date()).isoformat(),
            "window_months": policy.retrain_window_months,
            "model_name": model,
            "summary": summary.model_dump(mode="json", exclude={"column_scores"}),
            "reasons": decision.reasons,
        }
        # Record first: a crash between the two loses one retrain, never causes two.
        write_state(state_path, record_retrain(state, now))
        emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": model_resource_id(model)}, payload=payload)
        result = result.model_copy(update={"event_emitted": True, "payload": payload})
        logger.info("drift: retrain requested for %s, as_of %s", model, payload["as_of"])
    create_markdown_artifact(key="drift-check", markdown=summary_markdown(result), description="drift check")
    logger.info("drift check: %s; %s", summary.status, "; ".join(decision.reasons))
    return result
