"""Fixtures of the release-plane tests: a temp git + DVC project, test packages, a live server.

The project is real: `git init`, `dvc init`, a local-folder DVC remote under tmp, a `dvc.yaml`
whose `package` stage outputs `artifacts/model` (its lock is written by `dvc commit`, standing in
for `dvc repro`), and the `artifacts:` entry GTO reads. Packages come from
`serving.testing.build_test_package`, with the gate verdict and lineage the build plane writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from dvc.repo import Repo

from driftloop.model_repository import registry_name
from driftloop.package import write_sha256sums
from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import build_test_package, records_payload, running_server, synthetic_rows
from tests.conftest import wait_for  # noqa: F401 - the release tests import it from here too

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
MODEL = "flight_delay"
ARTIFACT = "flight-delay"
GIT = ["git", "-c", "user.email=test@driftloop", "-c", "user.name=driftloop-test"]

DVC_YAML = {
    "stages": {"package": {"cmd": "echo built by the test", "outs": ["artifacts/model"]}},
    "artifacts": {ARTIFACT: {"path": "artifacts/model", "type": "model"}},
}


def release_params(tmp: Path) -> dict:
    """`release:` shrunk for tests: few requests, short polls, no grace period."""
    return {
        "artifact": ARTIFACT,
        "package_dir": "artifacts/model",
        "model": MODEL,
        "stable_stage": "prod",
        "canary_stage": "canary",
        "server_url": "http://127.0.0.1:9",
        "repository": str(tmp / "model_repository"),
        "log_dir": str(tmp / "logs"),
        "champion_dir": "champion/package",
        "strategy": "canary",
        "canary_weight": 50,
        "min_requests": 150,
        "analysis_timeout_s": 30,
        "poll_interval_s": 0.3,
        "baseline_window_s": 600,
        "max_error_rate_increase": 0.01,
        "max_p99_latency_ratio": 2.0,
        "latency_slack_ms": 8.0,  # a loaded 2-core test machine: p99 of 150 requests is noisy
        "max_score_psi": 0.25,
        "label_wait_s": 1.0,  # the test traffic carries no labels: PSI decides after a short wait
        "keep_previous_s": 0,
        "http_timeout_s": 10,
    }


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> Path:
    """Built once: good v1/v2, an inverted, a slow and a gate-failed package."""
    root = tmp_path_factory.mktemp("release_packages")
    specs = {
        "v1": {"version_weight": 1.0},
        "v2": {"version_weight": 1.1},
        "v3": {"version_weight": 0.95},
        "inverted": {"version_weight": 1.0, "inverted": True},
        # slow by construction: 256 [1, 1024] x [1024, 1024] matmuls = 537 MFLOP a row, >= 2.1 ms on
        # one core of any CPU (peak fp32 of a 4 GHz core with two AVX-512 FMA units: 256 GFLOP/s);
        # v1's graph is ~10^4 times cheaper (0.07 ms p50 here). Measured here: ~53 ms a row.
        "slow": {"version_weight": 1.0, "slow": True, "slow_layers": 256, "slow_width": 1024},
    }
    for name, kwargs in specs.items():
        gated(build_test_package(root / name, model_name=MODEL, **kwargs), "pass")
    gated(build_test_package(root / "failed", model_name=MODEL, version_weight=1.2), "fail")
    return root


def gated(folder: Path, verdict: str) -> Path:
    """Add the build plane's `gate.verdict` to model_card.json and re-write SHA256SUMS."""
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text())
    card["gate"] = {"verdict": verdict, "rules": []}
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    write_sha256sums(folder)
    return folder


class Project:
    """A temp git + DVC project; `build(kind)` puts a package in artifacts/model and commits it."""

    def __init__(self, root: Path, packages: Path) -> None:
        self.root = root
        self.packages = packages
        self.params = root / "params.yaml"

    def git(self, *args: str) -> str:
        return subprocess.run([*GIT, *args], cwd=self.root, check=True, capture_output=True, text=True).stdout

    def build(self, kind: str, commit: bool = True) -> Path:
        target = self.root / "artifacts" / "model"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.packages / kind, target)
        # `dvc commit -f package` writes dvc.lock and caches the outs, as `dvc repro` would: the call
        # the command makes (dvc/commands/commit.py), in this process and from the project's folder
        # as the command runs (DVC resolves targets and params from the cwd); a dvc CLI start is ~1 s
        with contextlib.chdir(self.root), Repo(str(self.root)) as repo:
            repo.commit("package", force=True)
        if commit:
            self.git("add", "dvc.lock", "dvc.yaml")
            self.git("commit", "-qm", f"build {kind}")
        return target

    def plane(self, url: str):
        from driftloop.release import open_plane

        return open_plane(self.root, server_url=url)

    def register(self, plane, kind: str) -> str:
        """Build the `kind` package, commit it and register it; returns its registry version."""
        from driftloop.release import register_package

        self.build(kind)
        return register_package(plane.registry, plane.package_dir).version

    def v1_in_prod(self, plane) -> str:
        """The one "v1 in prod" setup every release test starts from: v1 built, registered, released."""
        from driftloop.release import release_version

        v1 = self.register(plane, "v1")
        release_version(plane, v1)
        return v1


@pytest.fixture
def project(tmp_path, packages) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    remote = tmp_path / "dvc-remote"
    remote.mkdir()
    p = Project(root, packages)
    p.git("init", "-q", "-b", "main")
    # `dvc init` then `dvc remote add -d local <remote>`: the calls those commands make (dvc/commands/
    # init.py, remote.py), in this process; the same .dvc/ and .dvc/config, without two dvc CLI starts
    with Repo.init(str(root)) as repo, repo.config.edit("repo") as conf:
        conf["remote"]["local"] = {"url": str(remote)}
        conf["core"]["remote"] = "local"
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump({"release": release_params(tmp_path)}, sort_keys=False))
    (root / ".gitignore").write_text("/champion/package/\n")
    p.git("add", "-A")
    p.git("commit", "-qm", "init")
    p.remote = remote  # type: ignore[attr-defined]
    p.tmp = tmp_path  # type: ignore[attr-defined]
    return p


@pytest.fixture
def server(project) -> Iterator[str]:
    """A live server over the project's (empty) model repository, logging predictions; yields its URL."""
    repo = project.tmp / "model_repository"
    repo.mkdir(exist_ok=True)
    settings = ServeSettings(
        repository=repo, log_dir=project.tmp / "logs", flush_interval_s=0.2, max_queue_delay_ms=0.5
    )
    with running_server(create_app(settings)) as url:
        yield url


class TrafficLoop:
    """Single-row records requests with fresh request ids, in a thread; counts answers per version (semver)."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.lock = threading.Lock()
        rows = synthetic_rows(200, seed=11)
        self.bodies = [records_payload(rows.iloc[[i]]) for i in range(len(rows))]
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.stop_event.is_set():
                i += 1
                try:
                    resp = client.post(
                        f"/v1/models/{MODEL}:predict",
                        json=self.bodies[i % len(self.bodies)],
                        headers={"x-request-id": uuid.uuid4().hex},
                    )
                    ok = resp.status_code == 200
                    what = (
                        registry_name(resp.headers.get("x-model-version", "?"))
                        if ok
                        else f"{resp.status_code} {resp.text[:80]}"
                    )
                except httpx.HTTPError as exc:
                    ok, what = False, repr(exc)
                with self.lock:
                    if ok:
                        self.versions[what] = self.versions.get(what, 0) + 1
                    else:
                        self.failures.append(what)

    def __enter__(self) -> TrafficLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def traffic(server) -> type[TrafficLoop]:
    return TrafficLoop


def next_registry_second() -> None:
    """Wait until the wall clock enters a new second: registry (git tag) times have 1 s resolution."""
    import time

    start = int(time.time())
    wait_for(lambda: int(time.time()) > start, 5.0, "the next second")


def logged_rows(log_dir: Path, version: str) -> int:
    """Rows of `version` in the prediction log so far."""
    from driftloop.predlog import read_log

    frame = read_log(log_dir, MODEL, "2000-01-01", "2100-01-01")
    return int((frame["model_version"].astype(str).map(registry_name) == version).sum()) if len(frame) else 0


def served_traffic(url: str) -> dict[str, float]:
    """The server's traffic split in registry terms: {semver: percent} ({} when nothing is loaded)."""
    from driftloop.model_repository import registry_name

    resp = httpx.get(f"{url}/v2/repository/models/{MODEL}/traffic")
    if resp.status_code == 404:
        return {}
    return {registry_name(k): v for k, v in resp.json()["traffic_pct"].items()}


def ready_versions(url: str) -> list[str]:
    """Versions the server has loaded (READY), in registry terms."""
    from driftloop.model_repository import registry_name

    index = httpx.get(f"{url}/v2/repository/index").json()
    return [registry_name(r["version"]) for r in index if r["name"] == MODEL and r["state"] == "READY"]


def folder_of(repository: Path, version: str) -> Path:
    """`<repository>/<model>/<number>/` of a registry version."""
    from driftloop.model_repository import version_number

    return repository / MODEL / str(version_number(version))
