"""End to end: `dvc repro` in a temp copy of the repo on a short window, with a real DVC cache and remote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from driftloop.io import read_json
from driftloop.package import verify_package
from tests.conftest import ROOT, small_params

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stage cmds run this venv's python
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A temp copy of the project's files (as git sees them), its own git repo and a small params.yaml."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for rel in files:
        if rel.startswith(("tests/", "bench/", "reports/")) or rel == "dvc.lock" or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="module")
def first_repro(repo):
    return dvc("repro", cwd=repo)


def test_repro_builds_a_gated_verified_package(repo, first_repro):
    assert ran_stages(first_repro) == ["params", "snapshot", "validate", "features", "train", "export", "optimize",
                                       "evaluate", "gate", "package"]  # fmt: skip
    gate = read_json(repo / "reports" / "gate.json")
    assert gate["verdict"] == "pass" and gate["chosen"]
    signature = verify_package(repo / "artifacts" / "model")
    card = read_json(repo / "artifacts" / "model" / "model_card.json")
    assert card["lineage_id"] == signature.lineage_id
    assert card["candidate"] == gate["chosen"]
    assert card["data"]["window"] == {"start": "2013-01-15", "end": "2013-02-14"}
    assert len(card["git"]["commit"]) == 40


def test_second_repro_does_nothing(repo, first_repro):
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc) == [] and "up to date" in proc.stdout


def test_changing_a_gate_key_reruns_only_gate_and_package(repo, first_repro):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gates"]["max_size_bytes"] = 30_000_000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc) == ["params", "gate", "package"]  # params: the whole-file check, cheap


def test_push_then_pull_restores_the_package(repo, first_repro):
    dvc("push", cwd=repo)
    shutil.rmtree(repo / "artifacts" / "model")
    dvc("cache", "dir", "--local", str(repo / ".dvc" / "other-cache"), cwd=repo)  # an empty cache: pull must use the remote
    try:
        dvc("pull", "artifacts/model", cwd=repo)
    finally:
        dvc("config", "--local", "--unset", "cache.dir", cwd=repo)
    verify_package(repo / "artifacts" / "model")


def test_a_rejected_gate_writes_its_report_and_no_package(repo, first_repro):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gates"]["min_roc_auc"] = 0.99
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (repo / "artifacts" / "model" / "SHA256SUMS").read_text()
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0
    assert "error: gate: no candidate passed every rule" in proc.stderr + proc.stdout
    gate = read_json(repo / "reports" / "gate.json")
    assert gate["verdict"] == "reject" and gate["chosen"] is None
    assert all(r["name"] == "min_roc_auc" and not r["passed"] for r in gate["rules"])
    assert (repo / "artifacts" / "model" / "SHA256SUMS").read_text() == before  # the old package was not touched
