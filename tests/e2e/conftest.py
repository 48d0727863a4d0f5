"""One `dvc repro` shared by the end-to-end modules: a temp copy of the project, built once per run
(once for both xdist workers).

`dvc repro` of the small params is the costliest step of the suite, so it runs once; a module that
changes the project (params, git history, registry tags) works on its own copy (`copy_built`),
whose DVC cache comes along, so nothing reruns that did not change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, small_params


def e2e_env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stage cmds run this venv's python
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=e2e_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def copy_project_files(dest: Path) -> Path:
    """The project's files as git sees them (tracked and untracked, not ignored) into `dest`, without
    tests, benchmarks, reports or dvc.lock: a project that has never been built."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for rel in files:
        if rel.startswith(("tests/", "bench/", "reports/")) or rel == "dvc.lock" or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


@dataclass(frozen=True)
class Built:
    """The built project (never changed after the build) and its `dvc repro`'s result."""

    root: Path
    repro: subprocess.CompletedProcess


def build(dest: Path) -> subprocess.CompletedProcess:
    """The project's files (as git sees them) into `dest`, one commit, small params, `dvc repro` run."""
    copy_project_files(dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dvc("repro", cwd=dest)


@pytest.fixture(scope="session")
def built(tmp_path_factory, worker_id) -> Built:
    """A temp copy of the project's files (as git sees them), one commit, small params, `dvc repro` run once.

    Once per run, not once per xdist worker: under `pytest -n 2` the workers share the run's temp
    folder, and the first worker to ask builds there under a file lock while the other waits for it
    (pytest-xdist's documented recipe for session fixtures); a repro costs ~50 s of CPU.
    """
    if worker_id == "master":  # not under xdist
        dest = tmp_path_factory.mktemp("built") / "project"
        return Built(dest, build(dest))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "built"  # the run's folder, above every worker's own
    done = shared / "repro.json"
    with FileLock(f"{shared}.lock", timeout=900):
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed half-way in the other worker
            proc = build(shared / "project")
            fields = {"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
            (shared / "repro.json.tmp").write_text(json.dumps(fields))
            (shared / "repro.json.tmp").replace(done)
    return Built(shared / "project", subprocess.CompletedProcess(**json.loads(done.read_text())))


def copy_built(built: Built, dest: Path) -> Path:
    """A copy of the built project (git history, DVC cache and outputs included) at `dest`."""
    shutil.copytree(built.root, dest, symlinks=True)
    return dest
