"""End to end: `dvc repro` in a temp copy of the repo on a short window, with a real DVC cache and remote."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftloop.errors import PackageError
from driftloop.gate_report import GateReport
from driftloop.io import read_json
from driftloop.package import verify_package
from tests.conftest import small_params
from tests.e2e.conftest import Built, copy_built, dvc

pytestmark = pytest.mark.slow


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def repo(built: Built, tmp_path_factory) -> Path:
    """This module's own copy of the session's built project (its tests change params)."""
    return copy_built(built, tmp_path_factory.mktemp("repo") / "project")


@pytest.fixture(scope="module")
def first_repro(built: Built):
    return built.repro


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
    assert card["git"]["commit"] is None  # the registry names the tagged commit, never the card
    assert len(card["environment"]["lockfile_sha256"]) == 64


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


def _set(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params[section]
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_returning_to_known_params_runs_nothing(repo, first_repro):
    """Issue 11, "Speed": every stage's run is in DVC's run-cache, so going back restores, never reruns."""
    before = yaml.safe_load((repo / "params.yaml").read_text())["train"]["hgb"]["max_iter"]
    gate_before = (repo / "reports" / "gate.json").read_text()
    _set(repo, "train", "hgb.max_iter", before - 10)
    assert "train" in ran_stages(dvc("repro", cwd=repo))
    _set(repo, "train", "hgb.max_iter", before)
    back = dvc("repro", cwd=repo)
    assert ran_stages(back) == [], back.stdout
    assert "Stage 'gate' is cached - skipping run" in back.stdout
    assert (repo / "reports" / "gate.json").read_text() == gate_before
    assert "up to date" in dvc("status", cwd=repo).stdout
    verify_package(repo / "artifacts" / "model")


def test_a_rejected_gate_leaves_nothing_releasable(repo, first_repro):
    """Issue 11, "After a rejection": no package (a rejection card that verify/register refuse); dvc status says so."""
    _set(repo, "gates", "min_roc_auc", 0.99)
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0
    assert "error: package: no candidate passed every rule" in proc.stderr + proc.stdout
    gate = GateReport.read(repo / "reports" / "gate.json")
    assert gate.verdict == "reject" and gate.chosen is None
    # every candidate fails the floor; on a busy machine a measured rule (p99 latency) may fail as well
    failed = [r for r in gate.rules if not r.passed]
    assert {r.candidate for r in failed if r.name == "min_roc_auc"} == set(gate.candidates)
    folder = repo / "artifacts" / "model"
    assert (folder / "REJECTED").is_file() and not (folder / "model.onnx").exists()
    assert "REJECTED" in (folder / "model_card.md").read_text()
    with pytest.raises(PackageError, match="rejected"):
        verify_package(folder)  # register and the server both verify first
    status = dvc("status", cwd=repo).stdout
    assert "package:" in status and "gate:" not in status  # the verdict is recorded; the package is not built
    # back to the passing floor: the old package comes back from the run-cache, nothing retrains
    _set(repo, "gates", "min_roc_auc", small_params()["gates"]["min_roc_auc"])
    again = dvc("repro", cwd=repo)
    assert set(ran_stages(again)) <= {"package"}
    verify_package(folder)
