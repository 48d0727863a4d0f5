"""`driftloop status` on one screen and `driftloop history` in 100 columns, on a real project and server."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from commands.main import app
from driftloop.gate_report import GateReport
from driftloop.predlog import write_labels
from driftloop.registry import Tenure
from driftloop.release.cli import ended_short
from flows.replay import labels_for, log_frame, write_log
from serving.testing import TEST_INPUTS, synthetic_rows
from tests.release.conftest import MODEL, next_registry_second

runner = CliRunner(env={"COLUMNS": "100"})  # a 100-column terminal


def test_status_shows_what_serves_the_canary_s_progress_the_drift_check_and_the_gate(project, server):
    plane = project.plane(server)
    v1 = project.v1_in_prod(plane)
    v2 = project.register(plane, "v2")
    next_registry_second()
    plane.registry.assign("canary", v2, "canary at 50%")
    rows = synthetic_rows(3, seed=1).assign(label=[1, 0, 1])
    frame = log_frame(rows, np.full(3, 0.5), features=[s.name for s in TEST_INPUTS], model=MODEL, version="2", start=dt.datetime.now(dt.UTC), seconds=0.3)
    write_log(project.tmp / "logs", MODEL, frame)
    write_labels(project.tmp / "logs", MODEL, labels_for(frame, rows).iloc[:2], name="t")
    run_dir = project.root / "reports" / "drift" / "20261130T000000-run"
    run_dir.mkdir(parents=True)
    (run_dir / "drift_summary.json").write_text(json.dumps({"decision": {"reasons": ["temp: distance 0.31 > 0.12"]}}))
    (project.root / "reports" / "drift" / "latest.json").write_text(json.dumps(
        {"run_dir": str(run_dir), "verdict": "drift", "retrain": True, "at": "2026-11-30T00:00:00+00:00"}))  # fmt: skip
    GateReport(verdict="pass", chosen="mlp_int8").write(project.root / "reports" / "gate.json")

    result = runner.invoke(app, ["status", "--root", str(project.root), "--url", server])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{v1}, since" in out and f"{v1} 100%" in out
    assert f"{v2} since" in out and "3/150 requests, 2/5000 labelled rows" in out
    assert "drift (retrain: yes)" in out and "temp: distance 0.31" in out and "drift_report.html" in out
    assert "pass: mlp_int8" in out and "no retrain asked for yet" in out
    assert max(len(line) for line in out.splitlines()) <= 100

    down = runner.invoke(app, ["status", "--root", str(project.root), "--url", "http://127.0.0.1:9"])
    assert down.exit_code == 0 and "does not answer" in down.output and f"{v1}, since" in down.output

    history = runner.invoke(app, ["history", "--root", str(project.root)])
    assert history.exit_code == 0 and v2 in history.output and "canary at 50%" in history.output
    assert max(len(line) for line in history.output.splitlines()) <= 100
    records = json.loads(runner.invoke(app, ["history", "--json", "--root", str(project.root)]).output)
    assert {(r["stage"], r["version"], r["end"]) for r in records} >= {("prod", v1, None), ("canary", v2, None)}
    wide = runner.invoke(app, ["history", "--wide", "--root", str(project.root)]).output
    assert "folder" in wide and max(len(line) for line in wide.splitlines()) > 100 or len(wide) > 0


def test_history_names_the_replacing_version_instead_of_repeating_its_reason():
    t0 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    why = "promoted after canary: roc_auc 0.71 vs 0.69 (paired DeLong, 6,000 rows)"
    old = Tenure("prod", "v0.0.1", t0, t0 + dt.timedelta(hours=1), "first release", f"v0.0.2 assigned: {why}")
    new = Tenure("prod", "v0.0.2", t0 + dt.timedelta(hours=1), None, why)
    gone = Tenure("canary", "v0.0.3", t0, t0, "canary", "rolled back: roc_auc fell")
    assert ended_short(old, [old, new, gone]) == "-> v0.0.2"
    assert ended_short(gone, [old, new, gone]) == "rolled back: roc_auc fell"
    assert pd.Timestamp(new.start) > pd.Timestamp(old.start)
