"""One server address for every command: --url > DRIFTLOOP_SERVER_URL > release.server_url, and a
server that does not answer is one `error:` line naming the address tried and the setting to change."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from driftloop.address import ENV_VAR, server_address
from driftloop.errors import ParamsError
from tests.conftest import wait_for


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_option_beats_the_environment_which_beats_params(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"release": {"server_url": "http://127.0.0.1:9001/"}}))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert server_address(params).url == "http://127.0.0.1:9001"
    assert server_address(params).setting.startswith("release.server_url in params.yaml")
    assert server_address(tmp_path / "absent.yaml").url == "http://127.0.0.1:8080"
    monkeypatch.setenv(ENV_VAR, "http://localhost:9002")
    address = server_address(params)
    assert (address.url, address.setting, address.host, address.port) == ("http://localhost:9002", ENV_VAR, "localhost", 9002)
    assert server_address(params, url="http://127.0.0.1:9003").url == "http://127.0.0.1:9003"
    monkeypatch.setenv(ENV_VAR, "localhost:9002")  # no scheme
    with pytest.raises(ParamsError, match=f"{ENV_VAR}: 'localhost:9002' is not a server address"):
        server_address(params)


def test_release_against_a_closed_port_is_one_error_line_naming_the_address_and_the_setting(project, monkeypatch):
    port = closed_port()
    plane = project.plane(f"http://127.0.0.1:{port}")
    v1 = project.register(plane, "v1")
    monkeypatch.setenv(ENV_VAR, f"http://127.0.0.1:{port}")
    result = CliRunner().invoke(app, ["release", v1, "--root", str(project.root)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"http://127.0.0.1:{port}" in lines[0] and ENV_VAR in lines[0] and "Traceback" not in result.output


def test_replay_against_a_closed_port_is_one_error_line(tmp_path, monkeypatch):
    from flows.replay import main

    port = closed_port()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"release": {"server_url": f"http://127.0.0.1:{port}"}}))
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params)])
    message = str(exc.value.code)
    assert message.startswith("error: replay: the model server at") and "does not answer" in message and "\n" not in message
    assert f"http://127.0.0.1:{port}" in message and "release.server_url in params.yaml" in message


def test_serve_listens_where_the_environment_says(tmp_path):
    port = closed_port()
    env = {**os.environ, ENV_VAR: f"http://127.0.0.1:{port}", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "commands.main", "serve", "--repository", str(tmp_path / "repo")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        def live() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(live, 60, "serve listening on the port of DRIFTLOOP_SERVER_URL", interval_s=0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
