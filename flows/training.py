"""The training flow: the build plane's DVC DAG, stage by stage, then the release plane.

What it does, in order:
1. Writes the snapshot window (`data.as_of`, `data.window_months`) into `params.yaml` (comments
   kept, written atomically). The window lives where `dvc repro` reads it, so a flow run and a
   plain `dvc repro` of the same params produce the same `dvc.lock` and outputs.
2. Runs every stage of `dvc.yaml` through DVC, one Prefect task per stage, in the order DVC's own
   graph gives (`flows.dag.stage_order`): no second list of stages exists. A stage DVC finds up
   to date is skipped by DVC (cached). Stages retry only on transient errors (a crash, an
   OSError, a held lock); a `DriftloopError` (stage exit code 2: failed validation, a gate
   rejection, bad params) never retries.
3. Publishes Prefect artifacts: the gate's rules as a markdown table, the key metrics, the
   window and the reports' paths.
4. A gate rejection is a normal outcome: the flow completes with `verdict="reject"` and the rules
   that failed. A pass registers the package and releases it through the release plane.
5. Optionally records the run's `params.yaml` + `dvc.lock` + every output DVC leaves to git as a
   commit on a branch (`flows.gitrecord`), without touching HEAD or the working tree.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from driftloop.config import DataParams, load_section, parse_section, read_params_file
from driftloop.errors import DriftloopError
from driftloop.gate_report import GATE_REPORT, GateReport
from driftloop.paths import PACKAGE_DIR
from flows.dag import USER_ERROR_EXIT, StageFailed, StageResult, reproduce_stage, stage_order, stage_outs
from flows.release_adapter import ReleaseOutcome, register_and_release
from flows.sweep import SweepResult, run_sweep

METRICS_REPORT = "reports/metrics.json"
REPORT_LINKS: tuple[str, ...] = (
    "reports/validation.json",
    "reports/features.json",
    "reports/train_metrics.json",
    "reports/parity.json",
    "reports/evaluation.json",
    "reports/metrics.json",
    GATE_REPORT,
    f"{PACKAGE_DIR}/model_card.md",
)


class TrainingWindow(BaseModel):
    """The snapshot window a training run takes (the `data` section's `as_of` and `window_months`).

    Attributes:
        as_of: last local date of the window, inclusive.
        window_months: calendar months ending at `as_of` (1..24).
    """

    model_config = ConfigDict(frozen=True)

    as_of: dt.date
    window_months: int = Field(ge=1, le=24)


class TrainingResult(BaseModel):
    """What a training run ended with.

    Attributes:
        verdict: "pass" (packaged), "reject" (the gate said no: a normal outcome).
        reason: one line for people.
        window: the window trained on.
        chosen: the candidate the gate chose, when it passed.
        stages: stage name -> "ran" | "cached".
        metrics: the chosen candidate's test metrics (roc_auc, pr_auc, log_loss, brier, ece).
        failed_rules: "candidate: rule: reason" for every failed rule when rejected.
        release: what the release plane did.
        record_commit: sha of the branch commit recording the run, when one was made.
        sweep: the sweep's trials and best configuration, when the run swept.
    """

    verdict: Literal["pass", "reject"]
    reason: str
    window: TrainingWindow
    chosen: str | None = None
    stages: dict[str, str] = {}
    metrics: dict[str, float | None] = {}
    failed_rules: list[str] = []
    release: ReleaseOutcome | None = None
    record_commit: str | None = None
    sweep: SweepResult | None = None


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a stage only when its failure is transient."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StageFailed):
        return exc.transient
    return isinstance(exc, OSError)


@task(name="set-window")
def set_window(root: str, window: TrainingWindow) -> dict[str, Any]:
    """Write the window into `root/params.yaml`'s `data` section (comments kept, atomic).

    Args:
        root: project root.
        window: the window to write.

    Returns:
        The `data` section as it was before (for the log).

    Raises:
        ParamsError: params.yaml is missing or invalid, or the window is out of range.
    """
    from ruamel.yaml import YAML

    from driftloop.io import write_text

    path = Path(root) / "params.yaml"
    raw = read_params_file(path)
    before = dict(raw.get("data") or {})
    parse_section("data", {**before, "as_of": window.as_of, "window_months": window.window_months}, DataParams)
    yaml = YAML()  # round-trip: keeps comments and key order
    yaml.preserve_quotes = True
    doc = yaml.load(path.read_text())
    doc["data"]["as_of"] = window.as_of.isoformat()
    doc["data"]["window_months"] = window.window_months
    import io

    buf = io.StringIO()
    yaml.dump(doc, buf)
    write_text(path, buf.getvalue())
    get_run_logger().info(
        "window: as_of %s, %d month(s) (was %s, %s)",
        window.as_of, window.window_months, before.get("as_of"), before.get("window_months"),
    )  # fmt: skip
    return before


@task(name="dvc-stage", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_transient)
def run_dvc_stage(root: str, stage: str, force: bool = False) -> StageResult:
    """Reproduce one DVC stage (serialized with every other DVC call of this process).

    Args:
        root: project root.
        stage: stage name in dvc.yaml.
        force: run even when DVC finds the stage up to date.

    Returns:
        Whether the stage's command ran and how long the DVC call took (s).

    Raises:
        StageFailed: the stage failed; `transient` decides whether Prefect retries.
    """
    from flows.tracing import stage_span

    logger = get_run_logger()
    start = time.perf_counter()
    with stage_span(f"stage {stage}", stage=stage) as span:
        try:
            result = reproduce_stage(root, stage, force=force)
        except StageFailed as exc:
            if not (exc.exit_code == USER_ERROR_EXIT and _gate_rejected(root, stage)):
                raise
            # the package stage turned the gate's reject into a rejection card and exit code 2: a
            # recorded outcome, so this task completes (Prefect would log a Failed task otherwise)
            result = StageResult(stage=stage, ran=True, seconds=time.perf_counter() - start, rejected=True)
        span.set_attribute("driftloop.ran", result.ran)
    what = "gate rejection recorded" if result.rejected else "ran" if result.ran else "up to date"
    logger.info("stage %s: %s in %.2f s", stage, what, result.seconds)
    return result


def gate_markdown(gate: GateReport, window: TrainingWindow | None = None) -> str:
    """The gate report as markdown: verdict, chosen candidate, one table row per rule.

    Args:
        gate: the typed `reports/gate.json`.
        window: the run's window, shown above the table when given.

    Returns:
        Markdown text.
    """

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = [f"# Gate: **{gate.verdict}**", ""]
    if window is not None:
        lines += [f"Window: {window.window_months} month(s) ending {window.as_of.isoformat()}", ""]
    lines += [f"Chosen candidate: `{gate.chosen or 'none'}`", ""]
    lines += ["| candidate | rule | value | threshold | passed | reason |", "|---|---|---|---|---|---|"]
    for r in gate.rules:
        reason = r.reason.replace("|", "\\|")
        lines.append(
            f"| {r.candidate or gate.chosen or '-'} | {r.name} | {fmt(r.value)} | "
            f"{fmt(r.threshold)} | {'yes' if r.passed else '**no**'} | {reason} |"
        )
    return "\n".join(lines) + "\n"


@task(name="publish-reports")
def publish_reports(root: str, window: TrainingWindow, ran: dict[str, str]) -> GateReport | None:
    """Publish the gate table, the key metrics and the reports' paths as Prefect artifacts.

    Args:
        root: project root.
        window: the run's window.
        ran: stage -> "ran" | "cached".

    Returns:
        The gate report (None when the gate never ran).
    """
    from driftloop.io import read_json

    rootp = Path(root).resolve()
    gate_path = rootp / GATE_REPORT
    gate = GateReport.read(gate_path) if gate_path.is_file() else None
    if gate is not None:
        create_markdown_artifact(key="gate-report", markdown=gate_markdown(gate, window), description=GATE_REPORT)
    metrics_path = rootp / METRICS_REPORT
    if metrics_path.is_file():
        metrics = read_json(metrics_path)
        rows = [
            {"candidate": name, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}}
            for name, m in metrics.items()
        ]
        create_table_artifact(key="key-metrics", table=rows, description="reports/metrics.json (test split)")
    # autolinks: rich (the Prefect CLI's printer) reads "[reports/...]" as a markup tag
    links = [f"- {p}: <file://{rootp / p}>" for p in REPORT_LINKS if (rootp / p).exists()]
    stages = "\n".join(f"| {s} | {how} |" for s, how in ran.items())
    create_markdown_artifact(
        key="training-run",
        markdown=(
            f"# Training run\n\nWindow: {window.window_months} month(s) ending {window.as_of}\n\n"
            f"| stage | |\n|---|---|\n{stages}\n\n## Reports\n" + "\n".join(links) + "\n"
        ),
        description="window, stages, report links",
    )
    return gate


@task(name="register-and-release")
def release_package(root: str, commit: str | None, release: bool, server_url: str | None) -> ReleaseOutcome:
    """Register the package and release it through the release plane (`flows.release_adapter`).

    Args:
        root: project root.
        commit: the commit recording this run's dvc.lock (None: the registry searches HEAD).
        release: False registers only.
        server_url: the model server; None = params `release.server_url`.

    Returns:
        The release plane's outcome (a release-plane error is "failed", never an exception).
    """
    logger = get_run_logger()
    outcome = register_and_release(
        root, Path(root) / PACKAGE_DIR, commit=commit, release=release, server_url=server_url,
        on_progress=logger.info,  # install, canary, every analysis check: visible in the flow run's log
    )  # fmt: skip
    reason = outcome.reason if outcome.reason.startswith(outcome.status) else f"{outcome.status}: {outcome.reason}"
    logger.info("release: %s", reason)
    return outcome


@task(name="record-run")
def record_run(root: str, branch: str, window: TrainingWindow, verdict: str) -> str:
    """Commit params.yaml, dvc.lock and every output DVC leaves to git onto `branch`.

    HEAD, the index and the working tree are untouched. The outputs are those `dvc.yaml` declares
    with `cache: false` (reports, plots, curves), new files included, so the branch's checkout is
    what `dvc status` calls up to date.

    Returns:
        The sha of the commit that records the run (an existing one when nothing changed).
    """
    from flows.gitrecord import commit_to_branch, git_outputs

    commit = commit_to_branch(
        root, branch, ["params.yaml", "dvc.lock", *git_outputs(root)],
        f"driftloop: training run, window {window.window_months} month(s) to {window.as_of} ({verdict})",
    )  # fmt: skip
    get_run_logger().info("recorded the run on %s at %s (`git checkout %s && dvc pull` reproduces it)",
                          branch, commit[:7], commit[:7])  # fmt: skip
    return commit


def _resolve_window(root: str, as_of: dt.date | None, window_months: int | None) -> TrainingWindow:
    data = load_section(Path(root) / "params.yaml", "data", DataParams)
    return TrainingWindow(as_of=as_of or data.as_of, window_months=window_months or data.window_months)


@flow(name="training", log_prints=False)
def training_flow(
    as_of: dt.date | None = None,
    window_months: int | None = None,
    root: str = ".",
    register_version: bool = True,
    release: bool = True,
    force: bool = False,
    record_branch: str | None = "driftloop/runs",
    server_url: str | None = None,
    sweep: bool | None = None,
) -> TrainingResult | State:
    """Run the build plane (dvc.yaml, stage by stage) on a snapshot window, then register and release.

    One run at a time per working copy (`flows.runlock`): while another training run, or a `dvc`
    command, works in `root`, this run changes nothing and ends Cancelled at once, its message
    naming the run (or pid) that holds the lock.

    Args:
        as_of: last day of the snapshot window; None keeps params.yaml's `data.as_of`.
        window_months: months in the window; None keeps params.yaml's `data.window_months`.
        root: the project root (git + DVC repository) to run in.
        register_version: register a passing package with the registry (GTO).
        release: release the registered version to the server (canary, analysis, promotion).
        force: rerun every stage even when DVC finds it up to date.
        record_branch: commit the run's params.yaml, dvc.lock and reports onto this branch
            (HEAD and the working tree untouched); the registry tags that commit. None or ""
            records nothing, and registration then needs dvc.lock committed on HEAD.
        server_url: the model server; None = params `release.server_url`.
        sweep: run the hyperparameter sweep (`flows.sweep.run_sweep`, params `sweep:`, on Dask)
            right after the stage that writes the features, and train on its best configuration
            (written into params.yaml's `train.<family>`); None = params `sweep.enabled`.

    Returns:
        The run's `TrainingResult`; a gate rejection is `verdict="reject"`, not an exception.
        Refused (the lock is held): a Cancelled state whose message names the holder; a direct
        call then raises `prefect.exceptions.CancelledRun` with that message.

    Raises:
        StageFailed: a stage failed for any reason other than a gate rejection (validation,
            data, a bug), after retries when the failure was transient.
        ParamsError: params.yaml is invalid or the window is out of range.
    """
    from prefect.states import Cancelled

    from flows.runlock import TrainingBusy, current_holder, training_lock
    from flows.tracing import stage_span

    logger = get_run_logger()
    root = os.fspath(Path(root).resolve())
    window = _resolve_window(root, as_of, window_months)
    try:
        with training_lock(root, current_holder(f"{window.window_months} month(s) to {window.as_of}")):
            # the run's span: each stage's span (`run_dvc_stage`) is its child
            with stage_span("training", as_of=window.as_of.isoformat(), window_months=window.window_months) as span:
                result = _train(root, window, register_version, release, force, record_branch, server_url, sweep)
                span.set_attribute("driftloop.verdict", result.verdict)
                return result
    except TrainingBusy as exc:
        logger.warning("%s", exc)
        return Cancelled(message=str(exc))


def _train(
    root: str, window: TrainingWindow, register_version: bool, release: bool, force: bool,
    record_branch: str | None, server_url: str | None, sweep: bool | None,
) -> TrainingResult:  # fmt: skip
    """The training flow's body, run while the project lock is held (arguments as in `training_flow`)."""
    logger = get_run_logger()
    set_window(root, window)
    ran: dict[str, str] = {}
    rejected = False
    order = stage_order(root)
    sweep_after = _features_stage(root) if _sweep_on(root, sweep) else None
    swept = None
    for stage in order:
        result = run_dvc_stage.with_options(task_run_name=f"dvc-{stage}")(root, stage, force)
        if result.rejected:
            ran[stage] = "rejected"
            rejected = True
            break
        ran[stage] = "ran" if result.ran else "cached"
        if stage == sweep_after:
            swept = run_sweep(root)
            # The sweep edited params.yaml: the stages so far see it again (only the whole-file
            # params check reruns; snapshot .. features read no train key), so dvc.lock stays whole.
            for earlier in order[: order.index(stage) + 1]:
                run_dvc_stage.with_options(task_run_name=f"dvc-{earlier}-after-sweep")(root, earlier, False)
    gate = publish_reports(root, window, ran)
    rejected = rejected or gate is None or not gate.passed
    verdict = "reject" if rejected else "pass"
    commit = record_run(root, record_branch, window, verdict) if record_branch else None
    if rejected:
        failed = gate.failed_lines() if gate is not None else []
        logger.warning("gate rejected every candidate; nothing packaged or released:\n  %s", "\n  ".join(failed))
        result = TrainingResult(
            verdict="reject", reason="gate rejected every candidate", window=window, stages=ran,
            failed_rules=failed, record_commit=commit, sweep=swept,
        )  # fmt: skip
    else:
        outcome = release_package(root, commit, release, server_url) if register_version else None
        how = f"release: {outcome.status} ({outcome.reason})" if outcome else "registration disabled"
        result = TrainingResult(
            verdict="pass", reason=f"gate passed; {how}", window=window, chosen=gate.chosen, stages=ran,
            metrics=gate.chosen_metrics or {}, release=outcome, record_commit=commit, sweep=swept,
        )  # fmt: skip
    logger.info("training: %s (%s)", result.verdict, result.reason)
    return result


def _sweep_on(root: str, sweep: bool | None) -> bool:
    if sweep is not None:
        return sweep
    from driftloop.config import SweepParams

    return load_section(Path(root) / "params.yaml", "sweep", SweepParams).enabled


def _features_stage(root: str) -> str:
    """The stage that writes `data/features` (the sweep's input).

    Raises:
        StageFailed: no stage of dvc.yaml writes it (not transient).
    """
    for name, outs in stage_outs(root).items():
        if "data/features" in outs:
            return name
    raise StageFailed("sweep", "no stage of dvc.yaml writes data/features, the sweep's input", exit_code=None, transient=False)


def _gate_rejected(root: str, stage: str) -> bool:
    """True when `stage` is the package stage (the one that writes `PACKAGE_DIR`) and the report
    says "reject": the gate stage itself exits 0 on a rejection, and the package stage turns it
    into a rejection card and exit code 2. The gate ran (or was cached) earlier in this run, so
    the report on disk is this run's."""
    path = Path(root) / GATE_REPORT
    if PACKAGE_DIR not in stage_outs(root).get(stage, []) or not path.is_file():
        return False
    try:
        return not GateReport.read(path).passed
    except DriftloopError:
        return False
