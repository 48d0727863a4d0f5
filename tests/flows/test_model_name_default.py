"""The replay and the deployments take the model's name from params.yaml, not a hard-coded "flight-delay"."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from driftloop.predlog import read_log
from flows.deployments import default_model_name
from flows.replay import main as replay_main
from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import build_test_package, running_server
from tests.conftest import ROOT, wait_for


def _params(tmp_path, **sections) -> str:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] |= values
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_replay_sends_to_release_model_by_default(tmp_path):
    build_test_package(tmp_path / "repo" / "churn" / "1", model_name="churn")
    app = create_app(ServeSettings(repository=tmp_path / "repo", log_dir=tmp_path / "logs", flush_interval_s=0.2))
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
    with running_server(app) as url:
        params = _params(tmp_path, release={"model": "churn", "server_url": url})
        replay_main(["--params", params, "--months", "7", "--max-rows", "40", "--batch", "20", "--log-dir", str(tmp_path / "logs")])
        wait_for(lambda: len(read_log(tmp_path / "logs", "churn", start, pd.Timestamp.now(tz="UTC"))) >= 40,
                 30, "the 40 replayed rows in churn's prediction log", interval_s=0.05)  # fmt: skip


def test_deployments_watch_package_model_name_by_default(tmp_path):
    _params(tmp_path, package={"model_name": "churn"})
    assert default_model_name(str(tmp_path)) == "churn"
    (tmp_path / "params.yaml").write_text("package: {model_name: Bad Name}\n")
    with pytest.raises(SystemExit, match=r"^error: deployments: .*package.model_name.*pass --model NAME"):
        default_model_name(str(tmp_path))
