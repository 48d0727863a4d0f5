"""The training flow on a one-month window in a temp copy of the repo: every stage of dvc.yaml
through DVC, a pass that registers (GTO tag on the recorded commit), then a stricter gate that
rejects as a normal outcome with only the gate rerun."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess

import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from driftloop.gate_report import GateReport
from flows.dag import stage_order
from flows.tracing import set_tracer
from flows.training import gate_markdown, training_flow
from serving.tracing import Tracing
from tests.conftest import ROOT
from tests.flows.conftest import copy_repo


def _set_gate(root, floor: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gates"]["min_roc_auc"] = floor
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_gate_markdown_lists_every_rule():
    gate = GateReport.parse({"verdict": "reject", "chosen": None, "rules": [
        {"candidate": "mlp", "name": "min_roc_auc", "value": 0.61, "threshold": 0.65, "passed": False, "reason": "a | b"}]})
    md = gate_markdown(gate)
    assert "| mlp | min_roc_auc | 0.61 | 0.65 | **no** | a \\| b |" in md and "**reject**" in md


class RunLog(logging.Handler):
    """Every record the flow and its tasks send through Prefect's run loggers, in this process.

    A handler on the `prefect.flow_runs` and `prefect.task_runs` loggers themselves: what Prefect's
    API log handler on those loggers ships to the server (the UI's run log). Read here, not from the
    server, whose log worker ships in batches on its own thread: polling it was order-dependent
    across tests in one worker. Neither propagation nor a logger disabled by an earlier
    `logging.config` call changes what this sees.
    """

    NAMES = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> RunLog:
        self._saved = []
        for name in self.NAMES:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.disabled, logger.level))
            logger.disabled = False
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for logger, disabled, level in self._saved:
            logger.removeHandler(self)
            logger.disabled, logger.level = disabled, level

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_training_flow_pass_then_reject(tmp_path, prefect_harness, monkeypatch):
    root = copy_repo(tmp_path / "repo")
    # the sweep's Dask worker processes import flows.sweep from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    _set_gate(root, 0.5)  # a one-month window scores ~0.60 ROC AUC: let it pass first
    # The parameters the drift trigger maps from an event payload (see test_trigger.py).
    spans = InMemorySpanExporter()
    tracing = Tracing(spans, service_name="driftloop-flows")  # the flows' spans, as DRIFTLOOP_TRACING=1 makes them
    set_tracer(tracing.tracer)
    try:
        with RunLog() as run_log:
            result = training_flow(as_of=dt.date(2013, 2, 14), window_months=1, root=str(root), release=False)
    finally:
        set_tracer(None)
    assert result.verdict == "pass", result.reason
    assert list(result.stages) == stage_order(root) and set(result.stages.values()) == {"ran"}
    # the run's span, with one child span per stage, in order, each saying it ran
    tracing.provider.force_flush()
    (run,) = [s for s in spans.get_finished_spans() if s.name == "training"]
    assert dict(run.attributes) == {"driftloop.as_of": "2013-02-14", "driftloop.window_months": 1, "driftloop.verdict": "pass"}
    assert run.parent is None and run.resource.attributes["service.name"] == "driftloop-flows"
    stages = [s for s in spans.get_finished_spans() if s.name.startswith("stage ")]
    assert [s.name for s in stages] == [f"stage {stage}" for stage in stage_order(root)]
    assert [dict(s.attributes) for s in stages] == [{"driftloop.stage": stage, "driftloop.ran": True} for stage in stage_order(root)]
    for stage in stages:
        assert stage.parent.span_id == run.context.span_id and stage.context.trace_id == run.context.trace_id
        assert run.start_time <= stage.start_time <= stage.end_time <= run.end_time
    assert (root / "artifacts" / "model" / "reference.parquet").is_file()
    card = yaml.safe_load((root / "artifacts" / "model" / "model_card.json").read_text())
    assert card["data"]["window"] == {"start": "2013-01-15", "end": "2013-02-14"}
    assert result.release is not None and result.release.status == "registered", result.release
    assert result.release.commit == result.record_commit
    # the flow run's log: registration and the record, no DVC git hints
    registered = f"registered {result.release.version} at {result.record_commit[:7]}"
    recorded = f"recorded the run on driftloop/runs at {result.record_commit[:7]}"
    logged = run_log.text
    assert registered in logged and recorded in logged, logged[-3000:]
    assert "git add" not in logged
    branch = subprocess.run(["git", "rev-parse", "driftloop/runs"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert branch == result.record_commit
    head_lock = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=root, capture_output=True, text=True).stdout
    run_lock = subprocess.run(["git", "show", f"{branch}:dvc.lock"], cwd=root, capture_output=True, text=True).stdout
    assert run_lock == (root / "dvc.lock").read_text() and run_lock != head_lock  # HEAD untouched
    assert "2013-02-14" in subprocess.run(["git", "show", f"{branch}:params.yaml"], cwd=root, capture_output=True, text=True).stdout
    # the record holds every output DVC leaves to git, new files included, as they are on disk
    from flows.gitrecord import git_outputs

    recorded = subprocess.run(["git", "ls-tree", "-r", "--name-only", branch], cwd=root, capture_output=True,
                              text=True).stdout.split()  # fmt: skip
    on_disk = {p.relative_to(root).as_posix() for out in git_outputs(root)
               for p in ([root / out] if (root / out).is_file() else (root / out).rglob("*")) if p.is_file()}  # fmt: skip
    assert on_disk and on_disk <= set(recorded), sorted(on_disk - set(recorded))
    check_readme_commit_commands(root, result.record_commit, tmp_path / "shared.git")

    _set_gate(root, 0.99)
    # ... and the run sweeps first, as params.yaml's `sweep:` asks (one trial on a 1-worker LocalCluster,
    # a space of today's value: train.hgb stays the same, so no training stage reruns)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sweep"].update(enabled=True, trials=1, workers=1, space={"hgb": {"max_leaf_nodes": {"choice": [31]}}})
    assert params["train"]["hgb"]["max_leaf_nodes"] == 31
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with RunLog() as run_log:
        rejected = training_flow(root=str(root), release=False)
    assert rejected.sweep is not None and [t.config for t in rejected.sweep.trials] == [{"max_leaf_nodes": 31}]
    assert 0.5 < rejected.sweep.best.valid_roc_auc < 1 and rejected.sweep.best.cpu_s > 0
    assert rejected.verdict == "reject" and rejected.release is None
    assert "Failed" not in run_log.text and "gate rejection recorded" in run_log.text, run_log.text[-3000:]
    assert rejected.stages["gate"] == "ran" and rejected.stages["package"] == "rejected"
    # `params` checks the edited params.yaml (a second, cheap); nothing else before gate reruns
    assert all(v == "cached" for k, v in rejected.stages.items() if k not in ("params", "gate", "package"))
    assert (root / "artifacts" / "model" / "REJECTED").is_file()  # the old package is gone
    assert not (root / "artifacts" / "model" / "model.onnx").exists()
    # every candidate is rejected by the floor; other rules may fail too (e.g. INT8 batch invariance)
    candidates = {r.split(":")[0] for r in rejected.failed_rules}
    assert candidates and candidates == {r.split(":")[0] for r in rejected.failed_rules if ": min_roc_auc:" in r}


def readme_commit_commands() -> list[str]:
    """The commands of the README's "After the loop: what to commit" block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("To make `main` follow production")[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def check_readme_commit_commands(root, record_commit: str, remote) -> None:
    """Run the README's commands, as written, after a recorded and registered run: `main` then is
    the run's commit with a clean working tree, and the shared remote has both branches and every tag."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout  # run's copies
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run([*git, "remote", "add", "origin", str(remote)], cwd=root, check=True)
    commands = readme_commit_commands()
    assert len(commands) == 3 and commands[-1].startswith("git push"), commands
    for command in commands:
        out = subprocess.run(command, shell=True, cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, f"{command}: {out.stderr}"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == ""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert head == record_commit  # a fast-forward onto the recorded run
    local_tags = set(subprocess.run(["git", "tag"], cwd=root, capture_output=True, text=True).stdout.split())
    shared = subprocess.run(["git", "ls-remote", str(remote)], capture_output=True, text=True).stdout
    refs = {line.split()[1] for line in shared.splitlines() if not line.endswith("^{}")}
    assert {"refs/heads/main", "refs/heads/driftloop/runs"} <= refs
    assert local_tags and {f"refs/tags/{t}" for t in local_tags} <= refs, (local_tags, refs)
