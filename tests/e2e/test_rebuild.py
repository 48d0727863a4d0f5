"""End to end: register a version built by `dvc repro`, then rebuild it from its tag in a fresh clone.

The project is a temp copy of this repo (small params), with its own git history, GTO tags and a
local-folder DVC remote. `driftloop register` pushes what the tagged commit's dvc.lock names;
`driftloop rebuild` clones, checks out the tag, pulls the snapshot into an empty cache, reruns
every other stage and compares with the registered package.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from driftloop.rebuild import compare_lineage, compare_package, lock_stages
from tests.e2e.conftest import Built, copy_built, dvc, e2e_env, run

pytestmark = pytest.mark.slow
runner = CliRunner()


def _run(cmd: list[str], cwd: Path) -> str:
    return run(cmd, cwd).stdout


@pytest.fixture(scope="module")
def project(built: Built, tmp_path_factory) -> Path:
    """A copy of the session's built project, its build committed and registered as v0.0.1."""
    dest = copy_built(built, tmp_path_factory.mktemp("rebuild") / "project")
    _run(["git", "add", "-A"], dest)  # dvc.lock and the reports DVC leaves to git
    _run(["git", "commit", "-qm", "build"], dest)
    result = runner.invoke(app, ["register", "--root", str(dest)], env=e2e_env())
    assert result.exit_code == 0, result.output
    return dest


def test_a_tag_checks_out_and_pulls_in_a_fresh_clone(project, tmp_path):
    """Everything the tagged commit's dvc.lock names is on the remote: checkout + pull + status clean."""
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    _run(["git", "checkout", "-q", "flight-delay@v0.0.1"], clone)
    remote = project / "storage" / "dvc-remote"
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=clone)
    assert not (clone / ".dvc" / "cache").exists()
    dvc("pull", cwd=clone)
    for out in ("data/snapshot", "data/features", "models/native", "models/onnx", "models/candidates", "artifacts/model"):
        assert any((clone / out).iterdir()), out
    assert "up to date" in dvc("status", cwd=clone).stdout


@pytest.fixture(scope="module")
def rebuilt(project, tmp_path_factory):
    work = tmp_path_factory.mktemp("rebuild-work") / "w"
    result = runner.invoke(app, ["rebuild", "v0.0.1", "--root", str(project), "--workdir", str(work), "--keep",
                                 "--json"], env=e2e_env())  # fmt: skip
    return result, work


def test_rebuild_reproduces_the_registered_version_from_an_empty_cache(rebuilt, project):
    result, work = rebuilt
    assert result.exit_code == 0, result.output
    report = json.loads((work / "rebuild.json").read_text())
    assert report["reproduced"] and report["how"] in ("bit-identical", "within tolerance")
    assert report["commit"] == _run(["git", "rev-list", "-n1", "flight-delay@v0.0.1"], project).strip()
    print(json.dumps(report, indent=1))  # shown when an assertion below fails
    assert report["pulled"] == ["params", "snapshot"]
    assert report["ran"] == ["validate", "features", "train", "export", "optimize", "evaluate", "gate", "package"]
    checks = report["checks"]
    lineage = [c for c in checks if c["name"] == "lineage"]
    assert all(c["passed"] for c in lineage)  # one per stage, and the model card's params against the commit's
    assert [c["subject"] for c in lineage if c["subject"] != "params.yaml"] == report["pulled"] + report["ran"]
    assert [c for c in lineage if c["subject"] == "params.yaml"], lineage
    files = {c["subject"]: c for c in checks if c["name"] == "file_sha256"}
    assert set(files) == {"model.onnx", "signature.json", "model_card.json", "model_card.md", "reference.parquet", "SHA256SUMS"}
    assert all(c["passed"] or c["reason"] for c in files.values())  # every difference says why
    if report["how"] == "within tolerance":
        scores = next(c for c in checks if c["name"] == "scores")
        assert scores["passed"] and scores["value"] <= 1e-6
        if report["rebuilt_candidate"] == report["candidate"]:  # the card differs in its measured fields only
            assert files["model_card.json"]["passed"] or "built_at" in files["model_card.json"]["reason"]
        else:  # the gate ranks by measured throughput: another candidate may win on a busy machine
            assert any(c["name"] == "candidate" and report["candidate"] in c["reason"] for c in checks)
    # the clone started from an empty cache: it holds the pulled snapshot and what the rebuild made
    assert (work / "repo" / "models" / "native").is_dir() and (work / "repo" / "data" / "snapshot").is_dir()


def test_a_different_graph_or_a_changed_input_does_not_reproduce(rebuilt, project):
    """The verdict's two halves fail when broken: another model's scores, and an edited param."""
    _, work = rebuilt
    registered = work / "registered"
    card = json.loads((registered / "model_card.json").read_text())
    candidates = json.loads((work / "repo" / "models" / "candidates" / "candidates.json").read_text())["candidates"]
    other = next(n for n in candidates if n.split("_")[0] != card["candidate"].split("_")[0])  # the other family
    checks, diff = compare_package(registered, None, work / "repo" / "models" / "candidates" / candidates[other]["file"],
                                   [], card)  # fmt: skip
    assert diff > 1e-3 and not next(c for c in checks if c.name == "scores").passed
    lock = lock_stages(yaml.safe_load((work / "repo" / "dvc.lock").read_text()))
    edited = copy.deepcopy(lock)
    train_params = edited["train"]["params"]["params.yaml"]  # {"train": {...}, "dataset.features": {...}}: the
    train_params[next(k for k in ("train.seed", "train") if k in train_params)] = "changed"  # key train alone reads
    assert [c.subject for c in compare_lineage(lock, edited) if not c.passed] == ["train"]


def test_rebuild_of_an_unknown_version_is_one_error_line(project, tmp_path):
    result = runner.invoke(app, ["rebuild", "v9.9.9", "--root", str(project), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "error: " in result.output and "no such version" in result.output
    assert "Traceback" not in result.output
