"""flows.replay against a real server: every row scored and logged, labels arrive in chunks and join."""

from __future__ import annotations

import time

import pandas as pd

from driftloop.predlog import read_log, read_log_with_labels
from flows.replay import replay, replay_rows
from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import build_test_package, running_server


def test_replay_scores_logs_and_labels_summer_flights(nycflights13, dataset, tmp_path):
    flights, weather = nycflights13
    rows = replay_rows({"flights": flights, "weather": weather}, dataset, [7]).sample(n=300, random_state=0).sort_values("time_hour")
    build_test_package(tmp_path / "repo" / "flight-delay" / "1", model_name="flight-delay")
    settings = ServeSettings(repository=tmp_path / "repo", log_dir=tmp_path / "logs", flush_interval_s=0.2)
    app = create_app(settings)
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
    with running_server(app) as url:
        result = replay(url, "flight-delay", rows, features=dataset.feature_names, batch=10, log_dir=tmp_path / "logs", label_every=7)
        deadline = time.monotonic() + 30  # the log flushes every 0.2 s: poll for the rows, bounded
        while len(read_log(tmp_path / "logs", "flight-delay", start, pd.Timestamp.now(tz="UTC"))) < 300:
            assert time.monotonic() < deadline, "the prediction log never held the 300 replayed rows"
            time.sleep(0.05)
    assert result["rows"] == 300 and result["requests"] == 30 and result["versions"] == {"1": 300}
    label_files = sorted((tmp_path / "logs" / "flight-delay" / "labels").glob("*.parquet"))
    assert len(label_files) == 5  # 30 requests in chunks of 7: 4 full + the rest
    log = read_log_with_labels(tmp_path / "logs", "flight-delay", start, pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=5))
    assert len(log) == 300 and log["label"].notna().all()
    assert log["label"].sum() == rows["label"].sum()
