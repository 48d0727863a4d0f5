"""The drift check: a window of the prediction log against the prod package's reference sample.

Pieces, each testable alone (the Prefect flow only wires them):
- `load_window`: the log window (driftloop/predlog.py's reader) with the labels that have arrived,
  joined by (request_id, row).
- `reference_version`: which logged version the package is (by lineage id in the model
  repository); the check judges that version on the rows it answered, and only those.
- `measure_drift`: the detectors of driftloop/drift.py (each returns `Check`s, every threshold
  from `policy`); anything they raise makes a "failed" summary, never a crash and never "no drift".
- `render_report`: Evidently 0.7's `DataDriftPreset` HTML for people (it never decides).
- `flows.policy.decide_and_record`: read-decide-write of the policy state under a kernel lock.
- `drift_check_flow`: writes `drift_report.html` and `drift_summary.json` into a folder of its
  own under `monitor.reports_dir` (`<UTC time>-<run id>`), points `latest.json` at it, publishes
  an artifact linking both and, when the policy says so, emits `driftloop.drift.detected`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from driftloop.checks import markdown_table
from driftloop.config import MonitorParams, PackageParams, PolicyParams, parse_section, read_params_file
from driftloop.dataset import Dataset as DatasetDeclaration  # evidently has a `Dataset` too
from driftloop.drift import SCORE, Thresholds, assess, reference_stats
from driftloop.predlog import to_utc
from driftloop.schema import Signature, TensorSpec
from flows.policy import Decision, DriftSummary, decide, decide_and_record, read_state

log = logging.getLogger(__name__)

DRIFT_EVENT = "driftloop.drift.detected"
"""Name of the event the drift check emits when the policy says retrain."""

REPORT_ROWS = 5000
"""Rows of the window (and of the reference) shown in the HTML report. It is for people and never
decides; Evidently's cost grows with rows (20k rows: 2.7 s; 5k: under 1 s here)."""


def model_resource_id(model_name: str) -> str:
    """The Prefect resource id of a model: `driftloop.model.<name>` (the trigger matches on it)."""
    return f"driftloop.model.{model_name}"


class DriftCheckResult(BaseModel):
    """What one drift check ended with.

    Attributes:
        summary: the measurements (or why the check was skipped or failed).
        decision: the policy's decision.
        event_emitted: True when `driftloop.drift.detected` was emitted.
        payload: the event's payload (as_of, window_months, summary), when emitted.
        run_dir: this check's own folder under `monitor.reports_dir`.
        report_html: path of the HTML report, when one was written.
        summary_json: path of the JSON summary.
        report_note: why no HTML report was written, when none was.
    """

    summary: DriftSummary
    decision: Decision
    event_emitted: bool = False
    payload: dict[str, Any] | None = None
    run_dir: str | None = None
    report_html: str | None = None
    summary_json: str | None = None
    report_note: str = ""


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


def reference_version(repository: str | os.PathLike[str], model: str, package_dir: str | os.PathLike[str]) -> str | None:
    """The version folder of `<repository>/<model>/` that holds the package (same lineage id), or None.

    The release plane copies the promoted version's folder to the package dir; the log names
    versions by folder. Matching the lineage id of `signature.json` finds which one it is.
    """
    import json

    try:
        lineage = json.loads((Path(package_dir) / "signature.json").read_text())["lineage_id"]
    except (OSError, ValueError, KeyError):
        return None
    folder = Path(repository) / model
    if not folder.is_dir():
        return None
    for sig in sorted(folder.glob("*/signature.json")):
        try:
            if json.loads(sig.read_text()).get("lineage_id") == lineage:
                return sig.parent.name
        except (OSError, ValueError):
            continue
    return None


def span_hours(frame: pd.DataFrame) -> float:
    """Hours from the first to the last `ts` of the rows (0 for fewer than two rows)."""
    if len(frame) < 2:
        return 0.0
    ts = pd.to_datetime(frame["ts"], utc=True)
    return float((ts.max() - ts.min()) / pd.Timedelta(hours=1))


def measure_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    policy: PolicyParams,
    *,
    max_rows: int = 20_000,
    seed: int = 0,
    data_span_hours: float | None = None,
    model_version: str | None = None,
    inputs: Sequence[TensorSpec],
    time_column: str,
) -> DriftSummary:
    """Judge one version's window against the package's reference with the drift detectors.

    Args:
        current: the window: `ts`, `model_version`, the input columns, `score`, optionally `label`
            (NaN = unlabelled), maybe of several versions.
        reference: the package's reference sample (inputs, `score`, `label`, `time_column`, `split`).
        policy: every threshold (`Thresholds.from_policy`).
        inputs: the package's inputs (`package_inputs`): the columns compared, BYTES as categories.
        time_column: the reference's time column (`dataset.time.column`).
        max_rows: larger windows are sampled (seeded) to this many rows.
        seed: sampling seed.
        data_span_hours: the time span the rows stand for; None = measured on `ts` (a replay that
            sends weeks of flights in minutes passes their real span).
        model_version: judge only this version's rows; None = the window must hold one version.

    Returns:
        The summary: "skipped" when there is nothing to judge, "failed" (with the error) when a
        detector raised, else "checked" with every `Check`.
    """
    base: dict[str, Any] = {"reference_rows": len(reference), "model_version": model_version}
    if current.empty:
        return DriftSummary(status="skipped", reason="empty window: no predictions logged", **base)
    if reference.empty:
        return DriftSummary(status="skipped", reason="reference sample is empty", **base)
    for name, frame in (("log window", current), ("reference", reference)):
        missing = [c for c in (*(s.name for s in inputs), SCORE) if c not in frame.columns]
        if missing:
            return DriftSummary(status="skipped", reason=f"{name} lacks column(s) {', '.join(missing)}", **base)
    versions = current["model_version"].astype(str).value_counts().to_dict() if "model_version" in current else {}
    if model_version is None and len(versions) > 1:
        listed = ", ".join(f"{v} ({n} rows)" for v, n in versions.items())
        return DriftSummary(status="skipped", reason=f"window mixes versions {listed} and the reference's version "
                            "is unknown: pass model_version", other_versions=versions, **base)  # fmt: skip
    if model_version is None and len(versions) == 1:
        model_version = base["model_version"] = str(next(iter(versions)))
    if model_version is not None and versions:
        current = current[current["model_version"].astype(str) == model_version]
        versions.pop(model_version, None)
    base["other_versions"] = {str(k): int(v) for k, v in versions.items()}
    if current.empty:
        return DriftSummary(status="skipped", reason=f"no rows of version {model_version} in the window", **base)
    span = span_hours(current) if data_span_hours is None else data_span_hours
    labels = current["label"] if "label" in current.columns else pd.Series(np.nan, index=current.index)
    sample = current.sample(n=max_rows, random_state=seed) if len(current) > max_rows else current
    base.update(rows=len(current), rows_compared=len(sample), span_hours=span, labelled_rows=int(labels.notna().sum()))
    try:
        stats = reference_stats(reference, time_column)
        checks = assess(sample, reference, stats, span, Thresholds.from_policy(policy), inputs=inputs, time_column=time_column)
    except Exception as exc:  # noqa: BLE001 - a check that could not be computed says so, never crashes
        return DriftSummary(status="failed", reason=f"{type(exc).__name__}: {exc}", **base)
    return DriftSummary(status="checked", checks=checks, **base)


def package_inputs(package_dir: str | os.PathLike[str], fallback: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The inputs of the package's `signature.json` (the contract its reference was built on);
    `fallback` (the declaration's `input_specs()`) when the file is missing or unreadable."""
    path = Path(package_dir) / "signature.json"
    try:
        return list(Signature.model_validate_json(path.read_text()).inputs)
    except (OSError, ValueError):
        return list(fallback)


def _typed(frame: pd.DataFrame, inputs: Sequence[TensorSpec]) -> pd.DataFrame:
    """Inputs + score with the dtypes Evidently should see: strings for categories (BYTES), floats else."""
    out = pd.DataFrame(index=frame.index)
    for s in inputs:
        if s.datatype == "BYTES":
            out[s.name] = frame[s.name].astype(str)
    for c in (*(s.name for s in inputs if s.datatype != "BYTES"), SCORE):
        out[c] = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
    return out


def render_report(current: pd.DataFrame, reference: pd.DataFrame, summary: DriftSummary, path: Path,
                  max_rows: int, seed: int, inputs: Sequence[TensorSpec]) -> str:  # fmt: skip
    """Write Evidently's data drift HTML report for people (it never decides); returns a note, "" when written.

    Both sides are sampled (seeded) to `max_rows`. Columns the detectors could not compute (e.g.
    all-null in the window) are left out, since Evidently 0.7 raises on them; anything else
    Evidently raises is returned as the note.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from driftloop.io import atomic_path

    if summary.status != "checked" or not summary.checks:
        return "no report: nothing was measured"
    skip = {c.subject for c in summary.checks if c.name == "column_drift" and c.value is None}
    cols = [s.name for s in inputs if s.name not in skip]
    if summary.model_version is not None and "model_version" in current:
        current = current[current["model_version"].astype(str) == summary.model_version]
    cur = _typed(current.sample(n=max_rows, random_state=seed) if len(current) > max_rows else current, inputs)
    ref = _typed(reference.sample(n=max_rows, random_state=seed) if len(reference) > max_rows else reference, inputs)
    categorical = [s.name for s in inputs if s.datatype == "BYTES" and s.name not in skip]
    numeric = [c for c in (*(s.name for s in inputs if s.datatype != "BYTES"), SCORE) if c not in skip]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    try:
        snapshot = Report([DataDriftPreset(columns=[*cols, SCORE])]).run(
            Dataset.from_pandas(cur[[*cols, SCORE]], data_definition=definition),
            Dataset.from_pandas(ref[[*cols, SCORE]], data_definition=definition),
        )
        with atomic_path(path) as tmp:
            snapshot.save_html(str(tmp))
    except Exception as exc:  # noqa: BLE001 - the report is for people; the verdict does not depend on it
        return f"no report: Evidently raised {type(exc).__name__}: {exc}"
    return ""


def summary_markdown(result: DriftCheckResult) -> str:
    """The drift check as markdown: decision, reasons, the checks, links to this run's files."""
    s, d = result.summary, result.decision
    head = "**retrain**" if d.retrain else d.verdict
    lines = [
        f"# Drift check: {head}",
        "",
        f"Window: {s.window_start} .. {s.window_end} (UTC); version {s.model_version or '-'}: {s.rows} rows "
        f"({s.rows_compared} compared, span {s.span_hours or 0:.1f} h, {s.labelled_rows} labelled); "
        f"reference {s.reference_rows} rows",
        "",
        *[f"- {r}" for r in d.reasons],
    ]
    if s.other_versions:
        lines += ["", "Left out (other versions): " + ", ".join(f"{v}: {n} rows" for v, n in s.other_versions.items())]
    if s.unknown_label_ids:
        lines += ["", f"Labels for unknown request ids (ignored): {s.unknown_label_ids}"]
    if s.checks:
        lines += ["", markdown_table(s.checks, with_subject=True)]
    if result.report_html:
        lines += ["", f"Report: [{result.report_html}](file://{result.report_html})"]
    elif result.report_note:
        lines += ["", result.report_note]
    if result.summary_json:
        lines += [f"Summary: [{result.summary_json}](file://{result.summary_json})"]
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
def measure_drift_task(current: pd.DataFrame, reference: pd.DataFrame, policy: PolicyParams, **kw: Any) -> DriftSummary:
    """Prefect wrapper of `measure_drift` (same Args/Returns)."""
    return measure_drift(current, reference, policy, **kw)


def run_folder(reports_dir: str | os.PathLike[str], now: dt.datetime, run_id: str) -> Path:
    """This check's own folder: `<reports_dir>/<UTC yyyymmddThhmmss>-<run id, 8 chars>`."""
    return Path(reports_dir).resolve() / f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%S}-{run_id[:8]}"


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        rid = flow_run.id
    except Exception:  # noqa: BLE001 - outside a flow run
        rid = None
    return str(rid) if rid else uuid.uuid4().hex


@flow(name="drift-check", log_prints=False)
def drift_check_flow(
    window_end: dt.datetime | None = None,
    window_hours: float | None = None,
    as_of: dt.date | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    data_span_hours: float | None = None,
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
        model_version: the logged version the reference belongs to; None = found by lineage id in
            `monitor.repository`, else the window's only version.
        data_span_hours: the time span the window's rows stand for; None = measured on the log's
            `ts` (a replay sends weeks of flights in minutes: pass their real span).
        root: project root (params.yaml; relative paths of `monitor` resolve against it).
        emit: emit the event when the policy says retrain (False: decide only; state untouched).

    Returns:
        The check's result (a skipped or failed check is a result, never an exception).

    Raises:
        ParamsError: params.yaml's `monitor` or `policy` section is invalid.
    """
    from prefect.events import emit_event

    from driftloop.io import write_json, write_text

    logger = get_run_logger()
    rootp = Path(root).resolve()
    raw = read_params_file(rootp / "params.yaml")
    monitor = parse_section("monitor", raw.get("monitor"), MonitorParams)
    policy = parse_section("policy", raw.get("policy"), PolicyParams)
    model = model_name or parse_section("package", raw.get("package"), PackageParams).model_name
    dataset = parse_section("dataset", raw.get("dataset"), DatasetDeclaration)

    def at_root(p: str) -> str:
        return str(p if Path(p).is_absolute() else rootp / p)

    now = dt.datetime.now(dt.UTC)
    folder = run_folder(at_root(monitor.reports_dir), now, _run_id())
    folder.mkdir(parents=True, exist_ok=True)
    latest = Path(at_root(monitor.reports_dir)) / "latest.json"
    # Until this run writes its verdict, the newest summary is "running", never an older "no drift".
    write_json(latest, {"run_dir": str(folder), "verdict": "running", "retrain": False, "at": now.isoformat()})
    end = to_utc(window_end or now).to_pydatetime()
    start = end - dt.timedelta(hours=window_hours or monitor.window_hours)
    frame, unknown, note = read_window_task(at_root(monitor.log_dir), model, start, end)
    reference, why = read_reference_task(at_root(monitor.package_dir))
    inputs = package_inputs(at_root(monitor.package_dir), dataset.input_specs())
    version = model_version or reference_version(at_root(monitor.repository), model, at_root(monitor.package_dir))
    if reference is None:
        summary = DriftSummary(status="skipped", reason=why, rows=len(frame), model_version=version)
    else:
        summary = measure_drift_task(frame, reference, policy, max_rows=monitor.max_rows, seed=monitor.seed,
                                     data_span_hours=data_span_hours, model_version=version, inputs=inputs,
                                     time_column=dataset.time.column)  # fmt: skip
    summary = summary.model_copy(
        update={"unknown_label_ids": unknown, "window_start": start.isoformat(), "window_end": end.isoformat()}
    )
    if note:
        logger.warning("%s", note)
    html, report_note = None, ""
    if reference is not None:
        report_note = render_report(frame, reference, summary, folder / "drift_report.html", REPORT_ROWS, monitor.seed, inputs)
        html = None if report_note else str(folder / "drift_report.html")
    payload = {
        "as_of": (as_of or (end - dt.timedelta(microseconds=1)).date()).isoformat(),
        "window_months": policy.retrain_window_months,
        "model_name": model,
        "model_version": summary.model_version,
        "summary_json": str(folder / "drift_summary.json"),
    }
    emitted: list[bool] = []

    def on_retrain() -> None:
        emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": model_resource_id(model)},
                   payload={**payload, "reasons": [c.reason for c in summary.checks if not c.passed]})  # fmt: skip
        emitted.append(True)

    state_path = at_root(monitor.state_file)
    if emit:
        decision = decide_and_record(state_path, summary, policy, now, on_retrain)
    else:
        decision = decide(summary, policy, read_state(state_path), now)
    result = DriftCheckResult(
        summary=summary, decision=decision, event_emitted=bool(emitted), payload=payload if emitted else None,
        run_dir=str(folder), report_html=html, summary_json=str(folder / "drift_summary.json"), report_note=report_note,
    )  # fmt: skip
    write_json(folder / "drift_summary.json", result.model_dump(mode="json"))
    write_text(folder / "summary.md", summary_markdown(result))
    write_json(latest,
               {"run_dir": str(folder), "verdict": decision.verdict, "retrain": decision.retrain, "at": now.isoformat()})  # fmt: skip
    create_markdown_artifact(key=f"drift-check-{_artifact_key(model)}", markdown=summary_markdown(result),
                             description=f"drift check of {model}")  # fmt: skip
    if emitted:
        logger.info("drift: retrain requested for %s, as_of %s", model, payload["as_of"])
    logger.info("drift check: %s; %s", decision.verdict, "; ".join(decision.reasons))
    return result


def _artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
