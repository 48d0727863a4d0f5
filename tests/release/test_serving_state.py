"""What the server serves is what the registry says, across every restart (issue 8, section 1).

Each failing input of the issue is a test here, with a real server process where a restart or a
`kill -9` is the point: the persisted serving state (`<repository>/<model>/config.pbtxt`, Triton's
specific version policy, plus `traffic.json`) decides what a started server serves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from driftloop.model_repository import (
    ServingState,
    StateError,
    read_state,
    release_in_progress,
    version_name,
    version_number,
    write_state,
)
from driftloop.registry import holder
from driftloop.release import ReleaseError, ReleaseLock, open_plane, release_version
from serving.repository import ModelRepository
from serving.testing import build_test_package
from tests.release.conftest import MODEL, TrafficLoop, folder_of, ready_versions, served_traffic, wait_for

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- the format
def test_semver_and_version_folder_map_both_ways():
    assert version_number("v0.0.7") == 7 and version_number("1.2.3") == 1_002_003
    assert version_name(7) == "v0.0.7" and version_name("1002003") == "v1.2.3"
    for v in ("v0.0.1", "v0.1.0", "v2.0.0", "v999.999.999"):
        assert version_name(version_number(v)) == v
    ordered = ["v0.0.9", "v0.0.10", "v0.1.0", "v1.0.0"]
    assert sorted(ordered, key=version_number) == ordered  # numbers sort as versions do
    for bad in ("v0.0.0", "v1.1000.0", "latest", "v1.2"):
        with pytest.raises(StateError):
            version_number(bad)


def test_state_round_trips_through_triton_config(tmp_path):
    state = ServingState(model=MODEL, stable="v0.0.7", canary="v0.0.8", weights={"v0.0.7": 95, "v0.0.8": 5})
    write_state(tmp_path, state)
    text = (tmp_path / MODEL / "config.pbtxt").read_text()
    assert "version_policy: { specific: { versions: [7, 8] } }" in text
    assert '"7=v0.0.7 8=v0.0.8"' in text  # both names, in the folder's metadata
    assert read_state(tmp_path, MODEL) == state
    assert sorted(p.name for p in (tmp_path / MODEL).iterdir()) == ["config.pbtxt", "traffic.json"]  # no temp left
    assert state.served(release_running=True) == {"7": 95.0, "8": 5.0}
    assert state.served(release_running=False) == {"7": 100.0}  # a dead release's canary takes nothing
    assert read_state(tmp_path, "never-released") is None
    (tmp_path / MODEL / "config.pbtxt").write_text('name: "x"\n')
    with pytest.raises(StateError, match="version_policy"):
        read_state(tmp_path, MODEL)


def test_release_in_progress_follows_the_kernel_lock(tmp_path):
    assert not release_in_progress(tmp_path)
    with ReleaseLock(tmp_path / ".release.lock"):
        assert release_in_progress(tmp_path)
    assert not release_in_progress(tmp_path)


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory) -> Path:
    """A model repository with integer folders 1, 2, 3 (3 is the newest on disk)."""
    repo = tmp_path_factory.mktemp("state_repo")
    for n, w in ((1, 1.0), (2, 1.1), (3, 0.95)):
        build_test_package(repo / MODEL / str(n), model_name=MODEL, version_weight=w)
    return repo


def test_start_serves_the_state_not_the_newest_folder(three_versions, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(three_versions, repo)
    write_state(repo, ServingState(model=MODEL, stable="v0.0.2", canary="v0.0.3",
                                   weights={"v0.0.2": 90, "v0.0.3": 10}))  # fmt: skip
    server = ModelRepository(repo, warmup_rows=1)
    server.load_all()
    assert server.traffic(MODEL) == {"2": 100.0}  # no release runs: the canary is not served
    assert [mv.version for mv in server.loaded()[MODEL]] == ["2"]
    with ReleaseLock(repo / ".release.lock"):  # its release still runs: the canary keeps its weight
        during = ModelRepository(repo, warmup_rows=1)
        during.load_all()
        assert during.traffic(MODEL) == {"2": 90.0, "3": 10.0}
    stateless = ModelRepository(three_versions, warmup_rows=1)
    stateless.load_all()  # no state: Triton's default policy, the newest that loads
    assert stateless.traffic(MODEL) == {"3": 100.0}


# ------------------------------------------------------------------------------- a real server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`driftloop serve` in its own process, on a fixed port, so it can be killed and restarted."""

    def __init__(self, repository: Path, log_dir: Path) -> None:
        self.repository, self.log_dir, self.port = repository, log_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        import httpx

        args = ["serve", "--repository", str(self.repository), "--port", str(self.port),
                "--log-dir", str(self.log_dir), "--flush-interval-s", "0.2", "--log-level", "warning"]  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-m", "commands.main", *args], cwd=ROOT, env=_env())

        def up() -> bool:
            assert self.proc.poll() is None, "the server exited at start"
            try:
                return httpx.get(f"{self.url}/v2/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the server to start")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.proc = None


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture
def live_process(project):
    """A real server process over the project's model repository, with v1 in prod and v2 registered."""
    server = ServerProcess(project.tmp / "model_repository", project.tmp / "logs").start()
    try:
        plane = project.plane(server.url)
        v1 = project.v1_in_prod(plane)
        v2 = project.register(plane, "v2")
        yield server, plane, v1, v2
    finally:
        server.stop(signal.SIGKILL)


def canary_recorded(plane, version: str) -> bool:
    state = read_state(plane.repository, MODEL)
    return state is not None and state.canary == version


def assert_interrupted(plane, v1: str, v2: str) -> None:
    """Prod unchanged, the canary deprecated with the reason, its folder gone, the state = prod only."""
    tenures = plane.tenures()
    assert holder(tenures, "prod") == v1 and holder(tenures, "canary") is None
    info = plane.registry.get(v2)
    assert info.deprecated and "interrupted" in info.deprecation, info.deprecation
    assert not folder_of(plane.repository, v2).exists()
    assert read_state(plane.repository, MODEL) == ServingState(model=MODEL, stable=v1, weights={v1: 100.0})


@pytest.mark.slow
def test_server_killed_mid_analysis_then_restarted_serves_prod(project, live_process):
    """Issue 8 (a): prod v1, release v2 at 5%, kill -9 the server during the analysis, restart it."""
    server, plane, v1, v2 = live_process
    errors: list[BaseException] = []

    def run() -> None:
        try:
            release_version(plane, v2, weight=5)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: served_traffic(server.url).get(v2) == 5.0, 60, "the canary to take 5%")
    assert canary_recorded(plane, v2)
    server.stop(signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive() and errors and "does not answer" in str(errors[0])
    assert_interrupted(plane, v1, v2)
    server.start()
    assert served_traffic(server.url) == {v1: 100.0} and ready_versions(server.url) == [v1]
    result = runner.invoke(app, ["history", "--at", "now", "--root", str(project.root)])
    assert f"prod: {v1}" in result.output and "canary: -" in result.output


@pytest.mark.slow
def test_release_process_killed_mid_analysis(project, live_process):
    """The release process gets kill -9: a restarted server serves prod; the next rollback ends the canary."""
    server, plane, v1, v2 = live_process
    cmd = [sys.executable, "-m", "commands.main", "release", v2, "--weight", "5",
           "--root", str(project.root), "--url", server.url]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: served_traffic(server.url).get(v2) == 5.0, 60, "the canary to take 5%")
        assert release_in_progress(plane.repository)
    finally:
        proc.kill()
        proc.wait(30)
    assert not release_in_progress(plane.repository)  # the kernel freed the lock with its holder
    server.stop(signal.SIGTERM)
    server.start()
    assert served_traffic(server.url) == {v1: 100.0}  # its release is gone: the canary takes nothing
    result = runner.invoke(app, ["rollback", "--root", str(project.root), "--url", server.url])
    assert result.exit_code == 0, result.output
    assert "interrupted" in result.output
    assert_interrupted(plane, v1, v2)
    assert served_traffic(server.url) == {v1: 100.0}


@pytest.mark.slow
def test_older_version_promoted_then_sigterm_restart_serves_it(project, live_process):
    """Issue 8 (b): v2 in prod, promote the older v1 over it, SIGTERM restart: v1 serves."""
    server, plane, v1, v2 = live_process
    with TrafficLoop(server.url):
        assert release_version(plane, v2, keep_previous_s=0).decision == "promoted"
        outcome = release_version(plane, v1, keep_previous_s=0)
    assert outcome.decision == "promoted", outcome.reasons
    assert holder(plane.tenures(), "prod") == v1
    server.stop(signal.SIGTERM)
    server.start()
    assert served_traffic(server.url) == {v1: 100.0} and ready_versions(server.url) == [v1]


def test_an_existing_folder_of_another_package_is_replaced(project, server):
    """A folder of the same version number that holds another lineage never serves as that version."""
    plane = project.plane(server)
    v1 = project.register(plane, "v1")
    impostor = folder_of(plane.repository, v1)
    shutil.copytree(project.packages / "inverted", impostor)
    release_version(plane, v1)
    assert (impostor / "SHA256SUMS").read_bytes() == (project.packages / "v1" / "SHA256SUMS").read_bytes()


def test_an_artifact_not_declared_in_dvc_yaml_is_refused(project):
    params = yaml.safe_load(project.params.read_text())
    params["release"]["artifact"] = "other-model"
    project.params.write_text(yaml.safe_dump(params))
    with pytest.raises(ReleaseError, match="not declared under `artifacts:`"):
        open_plane(project.root)
    result = runner.invoke(app, ["release", "v0.0.1", "--root", str(project.root)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "release.artifact" in lines[0] and "flight-delay" in lines[0]


def test_a_repository_from_before_integer_folders_migrates_on_the_next_release(project, packages):
    """A prod version in a semver-named folder (no serving state): the next release takes over."""
    from serving.app import create_app
    from serving.config import ServeSettings
    from serving.testing import running_server

    repo = project.tmp / "model_repository"
    settings = ServeSettings(repository=repo, log_dir=project.tmp / "logs", flush_interval_s=0.2)
    with running_server(create_app(settings)) as url:
        plane = project.plane(url)
        v1 = project.v1_in_prod(plane)
    folder_of(repo, v1).rename(repo / MODEL / v1)  # the old layout: <model>/v0.0.1/, no state
    for name in ("config.pbtxt", "traffic.json"):
        (repo / MODEL / name).unlink()
    with running_server(create_app(settings)) as url:
        assert served_traffic(url) == {v1: 100.0}  # legacy folder, served as "v0.0.1"
        plane = project.plane(url)
        v2 = project.register(plane, "v2")
        with TrafficLoop(url) as loop:
            outcome = release_version(plane, v2, keep_previous_s=0)
        assert outcome.decision == "promoted", outcome.reasons
        assert loop.failures == []
    with running_server(create_app(settings)) as url:
        assert served_traffic(url) == {v2: 100.0} and ready_versions(url) == [v2]

