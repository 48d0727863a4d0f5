"""`pip install driftloop[serve]` alone serves a package: no torch, DVC, Prefect, GX or Evidently.

A fresh virtualenv gets `driftloop[serve]` from a copy of this checkout (so no build/ or egg-info
lands in the work tree), resolved from pyproject.toml and held to `requirements-serve.lock`'s pins. uv
installs from its cache when warm (the pip/uv cache is reused on purpose: the test checks what is
installed and imported, not the network). The installed `driftloop serve` then answers
`/v2/health/ready` and an inference over real HTTP on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.testing import build_test_package, records_payload, synthetic_rows
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TRAINING_STACK = ("torch", "dvc", "prefect", "great_expectations", "evidently", "sklearn", "gto", "skl2onnx")
SOURCES = ("pyproject.toml", "README.md", "driftloop", "serving", "commands", "tasks", "flows")


def _uv() -> list[str]:
    exe = shutil.which("uv", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "uv"]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    pytest.importorskip("uv")
    tmp = tmp_path_factory.mktemp("serve-install")
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    py = ["--python", str(venv / "bin" / "python")]
    # resolved from pyproject.toml's `serve` extra (so a training dependency added to the base would be
    # installed and caught below), constrained to the lock's pins
    _run([*_uv(), "pip", "install", "-q", *py, "-c", str(ROOT / "requirements-serve.lock"), f"{src}[serve]"], tmp)
    return venv


def test_the_serve_extra_installs_no_training_stack(serve_venv):
    listed = json.loads(_run([*_uv(), "pip", "list", "--format", "json", "--python", str(serve_venv / "bin" / "python")],
                             serve_venv))  # fmt: skip
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"onnxruntime", "fastapi", "uvicorn", "driftloop"} <= names
    assert not names & {"torch", "dvc", "prefect", "great-expectations", "evidently", "scikit-learn", "gto", "skl2onnx"}
    # and the server's import graph pulls in nothing of it (nor does the CLI that serves)
    code = ("import sys, serving.app, serving.repository, commands.main; "
            f"print([m for m in {TRAINING_STACK!r} if m in sys.modules])")  # fmt: skip
    assert _run([str(serve_venv / "bin" / "python"), "-c", code], serve_venv.parent).strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serve_install_serves_a_package_over_http(serve_venv, tmp_path):
    repo = tmp_path / "model_repository"
    build_test_package(repo / "flight_delay" / "1", model_name="flight_delay")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DRIFTLOOP_API_KEY")}
    proc = subprocess.Popen(
        [str(serve_venv / "bin" / "driftloop"), "serve", "--repository", str(repo), "--port", str(port),
         "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.2)
        assert ready, f"not ready (exit {proc.poll()})"
        rows = synthetic_rows(3, seed=1)
        r = httpx.post(f"{url}/v1/models/flight_delay:predict", json=records_payload(rows), timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 3 and all(0.0 <= p <= 1.0 for p in body["predictions"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
