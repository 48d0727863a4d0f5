"""The flow's stage order comes from dvc.yaml itself; retries happen on transient errors only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import flows.training as training
from flows.dag import StageFailed, StageResult, exit_code_of, is_transient, stage_order

ROOT = Path(__file__).resolve().parents[2]


def _under(path: str, out: str) -> bool:
    return path == out or path.startswith(out.rstrip("/") + "/")


def test_stage_order_agrees_with_dvc_yaml():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    order = stage_order(ROOT)
    assert sorted(order) == sorted(spec)
    outs = {
        name: [next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", []) + s.get("metrics", [])]
        for name, s in spec.items()
    }
    pos = {name: i for i, name in enumerate(order)}
    for name, s in spec.items():
        for dep in s.get("deps", []):
            for producer, paths in outs.items():
                if any(_under(dep, p) for p in paths):
                    assert pos[producer] < pos[name], f"{producer} must run before {name} ({dep})"
    assert order[:2] == ["params", "snapshot"] and order[-1] == "package"


def test_exit_codes_decide_what_is_transient():
    from dvc.exceptions import ReproductionError
    from dvc.stage.exceptions import StageCmdFailedError

    def failed(code: int) -> ReproductionError:
        try:
            try:
                raise StageCmdFailedError("python -m tasks.gate", code)
            except StageCmdFailedError as inner:
                raise ReproductionError("failed to reproduce 'gate'") from inner
        except ReproductionError as exc:
            return exc

    assert exit_code_of(failed(2)) == 2 and not is_transient(failed(2), 2)  # DriftloopError: gate, validation
    assert exit_code_of(failed(137)) == 137 and is_transient(failed(137), 137)  # killed (OOM)
    assert is_transient(failed(1), 1)  # a crash with a traceback may be a flaky file system
    assert is_transient(OSError("disk"), None)
    assert not is_transient(ValueError("bad pipeline"), None)


@pytest.mark.parametrize(("transient", "calls"), [(True, 3), (False, 1)])
def test_stage_task_retries_only_transient_failures(monkeypatch, prefect_harness, transient, calls):
    seen = []

    def fake(root, stage, force=False):
        seen.append(stage)
        raise StageFailed(stage, "boom", 137 if transient else 2, transient)

    monkeypatch.setattr(training, "reproduce_stage", fake)
    task = training.run_dvc_stage.with_options(retry_delay_seconds=0)
    from prefect import flow

    @flow
    def one() -> StageResult:
        return task(".", "train")

    with pytest.raises(StageFailed):
        one()
    assert len(seen) == calls


def test_commit_to_branch_leaves_head_index_and_worktree_alone(tmp_path):
    import subprocess

    from flows.gitrecord import commit_to_branch

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (tmp_path / "params.yaml").write_text("data: {as_of: 2013-03-31}\n")
    (tmp_path / "reports" / "plots").mkdir(parents=True)
    (tmp_path / "reports" / "gate.json").write_text("{}\n")
    (tmp_path / "reports" / "plots" / "old.csv").write_text("x\n")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD")
    (tmp_path / "params.yaml").write_text("data: {as_of: 2013-08-31}\n")
    (tmp_path / "reports" / "drift").mkdir()
    (tmp_path / "reports" / "drift" / "state.json").write_text("{}\n")
    (tmp_path / "reports" / "plots" / "old.csv").unlink()  # an output the run no longer writes
    (tmp_path / "reports" / "plots" / "champion.csv").write_text("y\n")  # a new output file
    outputs = ["params.yaml", "dvc.lock", "reports/gate.json", "reports/plots"]
    sha = commit_to_branch(tmp_path, "driftloop/runs", outputs, "run")
    assert git("rev-parse", "HEAD") == head and git("rev-parse", "driftloop/runs") == sha
    assert "2013-08-31" in git("show", f"{sha}:params.yaml")
    recorded = git("ls-tree", "-r", "--name-only", sha).splitlines()
    assert recorded == ["params.yaml", "reports/gate.json", "reports/plots/champion.csv"]  # new in, gone out
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert status.splitlines() == [" M params.yaml", " D reports/plots/old.csv", "?? reports/drift/", "?? reports/plots/champion.csv"]  # nothing staged
    assert commit_to_branch(tmp_path, "driftloop/runs", outputs, "again") == sha  # nothing new: the same commit


def test_git_outputs_are_the_outputs_dvc_does_not_cache(tmp_path):
    import subprocess
    import sys

    from flows.gitrecord import git_outputs

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)  # this venv's DVC, PATH or not
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: 'true'\n    outs:\n      - models\n      - reports/plots:\n          cache: false\n"
        "    metrics:\n      - reports/m.json:\n          cache: false\n    plots:\n      - reports/p.csv\n"
    )
    assert git_outputs(tmp_path) == ["reports/m.json", "reports/plots"]


def test_a_stage_run_prints_no_git_add_hint(tmp_path, capfd, caplog):
    import logging

    from flows.dag import reproduce_stage
    from tests.flows.conftest import copy_repo

    root = copy_repo(tmp_path / "repo")  # small params: the `params` stage reruns (under a second)
    with caplog.at_level(logging.INFO):
        assert reproduce_stage(root, "params").ran
    said = capfd.readouterr()
    text = said.out + said.err + caplog.text
    assert "params" in text or caplog.records  # DVC did log the run ...
    assert "git add" not in text  # ... without its per-stage "To track the changes with git" hint
