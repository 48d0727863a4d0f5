"""Faults and bad input: each gives one clear `error:` line, exit code 1, and changes nothing."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from typer.testing import CliRunner

from commands.main import app
from driftloop.registry import holder
from driftloop.release import ReleaseLock, ReleaseLocked, register_package, release_version

MODEL = "flight_delay"
runner = CliRunner()


def cli(project, *args: str, url: str | None = None):
    return runner.invoke(app, [*args, "--root", str(project.root), *(["--url", url] if url else [])])


def state(project, url: str | None) -> tuple:
    """Everything a failed command must leave as it was: tags, traffic, model repository, champion."""
    traffic = httpx.get(f"{url}/v2/repository/models/{MODEL}/traffic").json() if url else None
    repo = project.tmp / "model_repository"
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.is_dir() else []
    champion = project.root / "champion" / "package" / "signature.json"
    return (project.git("tag", "-n9"), traffic, files, champion.read_text() if champion.is_file() else None)


@pytest.fixture
def live(project, server):
    """v1 registered and released (prod), v2 registered."""
    plane = project.plane(server)
    project.build("v1")
    v1 = register_package(plane.registry, plane.package_dir).version
    release_version(plane, v1)
    project.build("v2")
    v2 = register_package(plane.registry, plane.package_dir).version
    return plane, v1, v2


def assert_clean_error(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_unknown_version(project, server, live):
    before = state(project, server)
    assert_clean_error(cli(project, "release", "v9.9.9", url=server), "v9.9.9", "no such version")
    assert_clean_error(cli(project, "release", "not-a-version", url=server), "no such version")
    assert state(project, server) == before


def test_files_missing_from_the_remote(project, server, live):
    plane, v1, v2 = live
    shutil.rmtree(project.remote)
    project.remote.mkdir()
    shutil.rmtree(project.root / ".dvc" / "cache")  # as on a machine that never built v2
    before = state(project, server)
    assert_clean_error(cli(project, "release", v2, url=server), v2, "missing")
    assert state(project, server) == before
    assert not (project.tmp / "model_repository" / MODEL / v2).exists()


def test_server_down(project, server, live):
    plane, v1, v2 = live
    before = state(project, server)
    assert_clean_error(cli(project, "release", v2, url="http://127.0.0.1:9"), "does not answer")
    assert_clean_error(cli(project, "rollback", url="http://127.0.0.1:9"), "nothing to roll back to")
    assert state(project, server) == before


def test_server_down_on_rollback(project, server, live, traffic):
    plane, v1, v2 = live
    with traffic(server):
        assert release_version(plane, v2, keep_previous_s=0).decision == "promoted"
    before = state(project, server)
    assert_clean_error(cli(project, "rollback", url="http://127.0.0.1:9"), "does not answer")
    assert state(project, server) == before
    assert holder(plane.tenures(), "prod") == v2


def test_second_release_is_refused_while_one_runs(project, server, live):
    plane, v1, v2 = live
    before = state(project, server)
    with ReleaseLock(plane.repository / ".release.lock"):
        assert_clean_error(cli(project, "release", v2, url=server), "another release")
        assert_clean_error(cli(project, "rollback", url=server), "another release")
        with pytest.raises(ReleaseLocked):
            release_version(plane, v2)
    assert state(project, server) == before


def test_stale_lock_of_a_dead_process_is_taken_over(project, tmp_path):
    lock = tmp_path / ".release.lock"
    lock.write_text("999999999\n")  # no such pid
    with ReleaseLock(lock):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_release_of_the_current_prod_is_refused(project, server, live):
    plane, v1, v2 = live
    before = state(project, server)
    assert_clean_error(cli(project, "release", v1, url=server), "already holds prod")
    assert state(project, server) == before


def test_history_bad_time(project):
    assert_clean_error(cli(project, "history", "--at", "yesterday-ish"), "ISO-8601")


def test_every_command_help_shows_an_example():
    for command in ("register", "release", "rollback", "history"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, command
