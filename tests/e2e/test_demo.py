"""`driftloop demo` end to end on the small params: the whole loop, unattended, and nothing left running.

The demo runs in a subprocess on a copy of the built project, with a real model server, a real
Prefect server (SQLite), the deployments and the replay; its release and policy settings are
shrunk here (a one-month retrain window, a 50-request canary) so the loop closes in about two
minutes on 2 busy cores, most of it the Prefect server's first start and the retraining run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from commands.demo import MARKER, marked_pids
from tests.conftest import wait_for
from tests.e2e.conftest import copy_built, e2e_env

pytestmark = pytest.mark.slow


def demo_process(project, workdir, demo_id: str, *extra: str) -> subprocess.Popen:
    env = {**e2e_env(), MARKER: demo_id, "PYTHONPATH": str(project), "COLUMNS": "100"}
    return subprocess.Popen([sys.executable, "-m", "commands.main", "demo", "--root", str(project), "--workdir",
                             str(workdir), "--rows", "3000", "--drift-months", "7", "--keep-previous-s", "1", *extra], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def shrink(project) -> None:
    """The demo's settings for a short run: one-month retrain, a small canary (only `params` reruns)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["policy"].update(retrain_window_months=1)  # July alone (August alone fails validate: wind_gust 90.5% null)
    params["release"].update(min_requests=50, min_labelled_rows=500, label_wait_s=5, analysis_timeout_s=180,
                             canary_weight=50)  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_the_demo_closes_the_loop_and_stops_everything(built, tmp_path):
    project = copy_built(built, tmp_path / "project")
    shrink(project)
    demo_id = uuid.uuid4().hex
    proc = demo_process(project, tmp_path / "demo" / "project", demo_id)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(out)  # the steps and their timings (pytest -rP shows them)
    assert proc.returncode == 0, out[-6000:]
    assert "verdict drift, retrain True" in out
    assert "retraining run COMPLETED" in out and "prod is now v0.0.2 (was v0.0.1)" in out
    history = out[out.index("driftloop history"):]
    assert "v0.0.2" in history and "prod" in history
    assert max(len(line) for line in history.splitlines()) <= 100  # the history fits 100 columns
    assert not marked_pids(demo_id)


def test_ctrl_c_stops_every_process_the_demo_started(built, tmp_path):
    project = copy_built(built, tmp_path / "project")
    demo_id = uuid.uuid4().hex
    proc = demo_process(project, tmp_path / "demo" / "project", demo_id)
    seen = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # the second step starts the model server and the Prefect server
            seen.append(line)
            if "2. model server" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        # both servers' processes exist
        wait_for(lambda: len(marked_pids(demo_id)) >= 2, 120, f"both servers' processes; output: {''.join(seen)}",
                 interval_s=0.2)
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not marked_pids(demo_id)
