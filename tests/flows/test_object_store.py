"""Object storage: the DVC remote, the prediction log and the labels on an S3 API.

The S3 API is real HTTP on loopback: `moto` in server mode (`ThreadedMotoServer`), reached the
way users reach theirs, through the usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) and `s3://` URLs; nothing in the code knows it is moto.

- The model server logs predictions to `s3://driftloop/logs`, labels are written there, and the
  drift check flow (monitor.log_dir = that URL) reads the window back: every row, every label.
- A project whose default DVC remote is `s3://driftloop/dvc`: `driftloop register` pushes the
  package there; with the local cache and the workspace copy gone, `dvc pull` brings it back, and
  `driftloop release` fetches the version from the remote and releases it to a live server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from driftloop.predlog import sample_window, write_labels
from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import (
    build_test_package,
    build_test_repository,
    records_payload,
    running_server,
    synthetic_rows,
)

MODEL = "flight_delay"
BUCKET = "driftloop"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, the AWS environment pointing at it, one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield boto3.client("s3")
    finally:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_server_logs_to_s3_and_the_drift_check_reads_it(s3, tmp_path, prefect_harness):
    from flows.monitoring import drift_check_flow

    repo = build_test_repository(tmp_path / "repo")
    url_log = f"s3://{BUCKET}/logs"
    settings = ServeSettings(repository=repo, log_dir=url_log, flush_interval_s=0.2)
    rows = synthetic_rows(40, seed=3)
    with running_server(create_app(settings)) as url:
        for i in range(4):  # 4 requests of 10 rows
            r = httpx.post(f"{url}/v1/models/{MODEL}:predict", json=records_payload(rows.iloc[10 * i : 10 * i + 10]),
                           headers={"x-request-id": f"req-{i}"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
    parts = keys(s3, f"logs/{MODEL}/date=")
    assert parts and all(k.endswith(".parquet") and "/part-" in k for k in parts)  # shutdown flushed to S3
    labels = {"request_id": ["req-0"] * 10 + ["req-2"] * 5, "row": list(range(10)) + list(range(5)),
              "label": [1] * 15, "observed_at": [dt.datetime.now(dt.UTC)] * 15}  # fmt: skip
    import pandas as pd

    written = write_labels(url_log, MODEL, pd.DataFrame(labels), name="batch-1")
    assert written == f"{url_log}/{MODEL}/labels/batch-1.parquet" and keys(s3, f"logs/{MODEL}/labels/")

    now = dt.datetime.now(dt.UTC)
    window = sample_window(url_log, MODEL, now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1), columns=["score"])
    assert window.rows == 40 and window.labelled_rows == 15 and window.versions == {"1": 40}

    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    shutil.copytree(repo / MODEL / "1", root / "pkg", dirs_exist_ok=True)
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["monitor"].update(log_dir=url_log, package_dir=str(root / "pkg"), repository=str(repo),
                             reports_dir=str(root / "reports"), state_file=str(root / "reports" / "state.json"))  # fmt: skip
    params["package"]["model_name"] = MODEL
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = drift_check_flow(root=str(root), window_end=now + dt.timedelta(minutes=1), window_hours=1, emit=False)
    s = result.summary
    assert s.model_version == "1" and s.rows == 40 and s.labelled_rows == 15, s


def run(cmd: list[str], cwd: Path) -> str:
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # dvc of this venv
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr[-2000:]}"
    return out.stdout


def test_register_and_release_commands_with_the_dvc_remote_on_s3(s3, tmp_path):
    """`driftloop register` pushes the package to the S3 remote; after `dvc pull` from it, `driftloop
    release` (no local cache) fetches the version from S3 and the live server loads those bytes. Both
    commands run through their typer app (`commands.main`), the S3 endpoint only in their environment."""
    import re

    from typer.testing import CliRunner

    from commands.main import app
    from tests.release.conftest import DVC_YAML, GIT, gated, release_params

    root = tmp_path / "project"
    root.mkdir()
    git = [*GIT]
    run([*git, "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-q", "-d", "store", f"s3://{BUCKET}/dvc"], root)  # endpoint: AWS_ENDPOINT_URL
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    params = {"release": {**release_params(tmp_path), "min_requests": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/champion/package/\n")
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-qm", "init"], root)
    package = gated(build_test_package(root / "artifacts" / "model", model_name=MODEL), "pass")
    sums = (package / "SHA256SUMS").read_text()
    run(["dvc", "commit", "-q", "-f", "package"], root)
    run([*git, "add", "dvc.lock", "dvc.yaml"], root)
    run([*git, "commit", "-qm", "build v1"], root)

    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    cli = CliRunner()

    def driftloop(*args: str) -> str:  # the `driftloop` command line, its environment only the usual AWS_* variables
        result = cli.invoke(app, list(args), env={**aws, "COLUMNS": "200"})
        assert result.exit_code == 0, f"driftloop {' '.join(args)}: {result.output[-2000:]} {result.exception!r}"
        return result.output
    (tmp_path / "model_repository").mkdir()
    settings = ServeSettings(repository=tmp_path / "model_repository", flush_interval_s=0.2)
    with running_server(create_app(settings)) as url:
        out = driftloop("register", "--root", str(root))  # pushes to S3
        version = re.search(r"registered (v\S+) at", out).group(1)
        assert keys(s3, "dvc/files/md5/")
        # `dvc pull` in a workspace without the cache or the package: back from S3.
        shutil.rmtree(root / ".dvc" / "cache")
        shutil.rmtree(root / "artifacts" / "model")
        run(["dvc", "pull", "-q"], root)
        assert (root / "artifacts" / "model" / "SHA256SUMS").read_text() == sums
        # `driftloop release` fetches the version from the remote (no cache again) and serves it.
        shutil.rmtree(root / ".dvc" / "cache")
        out = driftloop("release", version, "--root", str(root), "--url", url)
        assert f"promoted {version}" in out, out
        ready = httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=10)
        assert ready.status_code == 200
        copy = next((tmp_path / "model_repository" / MODEL).glob("*/SHA256SUMS"))
        assert copy.read_text() == sums
