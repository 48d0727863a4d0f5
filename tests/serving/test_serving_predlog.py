"""The prediction log: every acknowledged row on disk after shutdown; windows and labels."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.predlog import read_labels, read_log, read_log_with_labels, write_labels
from serving.predlog import PredictionLog
from serving.testing import FEATURES, TEST_INPUTS, records_payload, synthetic_rows, v2_payload

MODEL = "flight_delay"
WIDE = ("2000-01-01", "2100-01-01")


def _feeds(n, seed=0):
    from driftloop.schema import feeds_for

    return feeds_for(synthetic_rows(n, seed=seed), TEST_INPUTS)


def test_rotation_window_and_labels(tmp_path):
    plog = PredictionLog(tmp_path, flush_interval_s=60, max_rows_per_file=5)
    plog.start()
    day1 = dt.datetime(2013, 3, 1, 23, 59, 59, tzinfo=dt.UTC)
    day2 = dt.datetime(2013, 3, 2, 0, 0, 1, tzinfo=dt.UTC)
    for i in range(4):
        plog.append(
            model=MODEL,
            version="1",
            request_id=f"a{i}",
            feeds=_feeds(3, i),
            scores=np.full((3, 1), 0.25, np.float32),
            latency_ms=1.5,
            ts=day1,
        )
    plog.append(
        model=MODEL,
        version="2",
        request_id="b0",
        feeds=_feeds(2),
        scores=np.full((2, 1), 0.75, np.float32),
        latency_ms=2.0,
        ts=day2,
    )
    plog.close()
    files = sorted((tmp_path / MODEL).rglob("part-*.parquet"))
    assert {f.parent.name for f in files} == {"date=2013-03-01", "date=2013-03-02"}
    assert not list((tmp_path / MODEL).rglob(".*tmp"))
    everything = read_log(tmp_path, MODEL, *WIDE)
    assert len(everything) == 14 and plog.rows_written == 14
    assert list(everything.columns[:5]) == ["request_id", "row", "ts", "model_name", "model_version"]
    assert set(FEATURES) <= set(everything.columns) and {"score", "latency_ms"} <= set(everything.columns)
    assert everything["ts"].dt.tz is not None
    only_day2 = read_log(tmp_path, MODEL, "2013-03-02", "2013-03-03")
    assert list(only_day2["request_id"]) == ["b0", "b0"] and list(only_day2["row"]) == [0, 1]
    assert read_log(tmp_path, MODEL, "2014-01-01", "2014-02-01").empty
    assert read_log(tmp_path, "other", *WIDE).empty
    # Labels: Parquet and CSV; the latest observation wins; row defaults to 0.
    write_labels(
        tmp_path,
        MODEL,
        pd.DataFrame(
            {
                "request_id": ["a0", "a1"],
                "row": [0, 2],
                "label": [1, 0],
                "observed_at": ["2013-03-05T00:00:00Z"] * 2,
            }
        ),
    )
    (tmp_path / MODEL / "labels" / "late.csv").write_text(
        "request_id,label,observed_at\na0,0,2013-03-09T00:00:00Z\nb0,1,2013-03-09T00:00:00Z\n"
    )
    labels = read_labels(tmp_path, MODEL)
    assert len(labels) == 3 and labels.set_index(["request_id", "row"]).loc[("a0", 0), "label"] == 0
    joined = read_log_with_labels(tmp_path, MODEL, *WIDE)
    assert len(joined) == 14 and joined["label"].notna().sum() == 3
    got = joined.dropna(subset=["label"]).set_index(["request_id", "row"])["label"].to_dict()
    assert got == {("a0", 0): 0.0, ("a1", 2): 0.0, ("b0", 0): 1.0}


@pytest.mark.slow
def test_graceful_shutdown_keeps_every_acknowledged_row(make_repo, start_server, tmp_path):
    logdir = tmp_path / "predlog"
    client = start_server(make_repo({"1": "v1"}), log_dir=logdir, flush_interval_s=300)
    frame = synthetic_rows(7, seed=11)
    acked: dict[str, int] = {}
    for i in range(30):
        rid = f"req-{i:03d}"
        n = 1 + i % 3
        if i % 2:
            r = client.post(
                f"/v1/models/{MODEL}:predict",
                json=records_payload(frame.iloc[:n]),
                headers={"x-request-id": rid},
            )
        else:
            r = client.post(
                f"/v2/models/{MODEL}/infer", json=v2_payload(frame.iloc[:n]), headers={"x-request-id": rid}
            )
        assert r.status_code == 200
        acked[rid] = n
    # An invalid request is not logged.
    assert client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"carrier": 1}]}).status_code == 400
    assert not list(logdir.rglob("part-*.parquet"))  # nothing flushed yet (300 s interval)
    start_server.stop()
    log = read_log(logdir, MODEL, *WIDE)
    assert log.groupby("request_id").size().to_dict() == acked
    assert (log["model_version"] == "1").all() and log["score"].between(0, 1).all()
    assert (log["latency_ms"] > 0).all()
    first = log[log["request_id"] == "req-002"].sort_values("row")
    assert list(first["carrier"]) == list(frame["carrier"].iloc[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_flushes_the_log(make_repo, tmp_path):
    repo = make_repo({"1": "v1"})
    logdir = tmp_path / "predlog"
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DRIFTLOOP_API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "serving.cli",
        "--repository",
        str(repo),
        "--port",
        str(port),
        "--log-dir",
        str(logdir),
        "--flush-interval-s",
        "300",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read().decode() if proc.poll() is not None else "timeout"
            )
            time.sleep(0.1)
        payload = records_payload(synthetic_rows(2))
        ids = []
        with httpx.Client(base_url=base) as client:
            for _ in range(20):
                r = client.post(f"/v1/models/{MODEL}:predict", json=payload)
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit here.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = read_log(logdir, MODEL, *WIDE)
    assert sorted(log["request_id"].unique()) == sorted(ids) and len(log) == 40
