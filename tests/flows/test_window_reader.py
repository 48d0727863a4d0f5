"""The streaming log reader (`driftloop.predlog.sample_window`) against the reader it replaced.

- Below `max_rows` nothing is sampled, and the drift check's summary from the new reader equals,
  field for field, the summary from the old one (`flows.monitoring.load_window`, which loads the
  whole window) on a seeded log of two versions with labels, late labels and stray labels.
- Above it, every count (rows, versions, span, labelled rows, unknown labels) still covers the
  whole window, exactly as the old reader's; the sample is a subset of the version's rows with
  their labels, and the same whatever the batch size (it depends on the seed only).
- It reads only what it needs: a filesystem that counts bytes shows that the day folders outside
  the window are never opened, that an unrequested wide column is not read, and that a one-hour
  window inside a day file reads a fraction of what the whole day reads (row groups skipped).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from driftloop.config import PolicyParams
from driftloop.predlog import sample_window, write_labels
from flows.monitoring import load_window, measure_drift
from flows.replay import labels_for, log_frame, replay_rows, write_log
from tests.conftest import default_dataset

MODEL = "flight-delay"
FEATURES = default_dataset().feature_names
CONTRACT = {"inputs": default_dataset().input_specs(), "time_column": default_dataset().time.column}
END = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def toy_score(rows: pd.DataFrame) -> np.ndarray:
    z = (rows["hour"].to_numpy() - 14) / 5 + 3 * np.nan_to_num(rows["precip"].to_numpy())
    return (1 / (1 + np.exp(-z))).astype(np.float32)


@pytest.fixture(scope="module")
def rows_and_reference(flights_weather):
    """Labelled July flights (the window) and a 3,000-row winter reference, both scored by a toy score."""
    flights, weather = flights_weather
    tables, dataset = {"flights": flights, "weather": weather}, default_dataset()
    july = replay_rows(tables, dataset, [7]).sample(n=6000, random_state=0).reset_index(drop=True)
    winter = replay_rows(tables, dataset, [2]).sample(n=3000, random_state=0).reset_index(drop=True)
    winter["score"] = toy_score(winter)
    winter["split"] = np.where(winter["time_hour"] >= "2013-02-20", "test", "train")
    return july, winter


def write_window(root, july: pd.DataFrame) -> int:
    """Two versions over 3 days before END, labels for 2/3 of v1's rows, 7 stray labels, 1 relabel."""
    a, b = july.iloc[:4000], july.iloc[4000:]
    log_a = log_frame(a, toy_score(a), features=FEATURES, model=MODEL, version="v1", start=END - dt.timedelta(days=3),
                      seconds=3 * 86400 - 10, request_prefix="a")  # fmt: skip
    log_b = log_frame(b, toy_score(b), features=FEATURES, model=MODEL, version="v2", start=END - dt.timedelta(days=2),
                      seconds=86400, request_prefix="b")  # fmt: skip
    early = log_frame(a.head(50), toy_score(a.head(50)), features=FEATURES, model=MODEL, version="v1",
                      start=END - dt.timedelta(days=9), seconds=60, request_prefix="early")  # fmt: skip
    in_window = len(write_log(root, MODEL, log_a, rows_per_file=1500)) + len(write_log(root, MODEL, log_b, rows_per_file=1500))
    write_log(root, MODEL, early)
    labels = labels_for(log_a, a, observed_at=END - dt.timedelta(hours=5))
    labels = labels[np.arange(len(labels)) % 3 != 0]
    write_labels(root, MODEL, labels, name="l1")
    relabel = labels.head(1).assign(label=1 - labels["label"].iloc[0], observed_at=END - dt.timedelta(hours=1))
    write_labels(root, MODEL, relabel, name="l2")
    stray = pd.DataFrame({"request_id": [f"nobody-{i}" for i in range(7)], "row": 0, "label": 1.0,
                          "observed_at": END - dt.timedelta(hours=2)})  # fmt: skip
    write_labels(root, MODEL, stray, name="l3")
    return in_window


def test_summary_equals_the_old_readers_when_the_window_fits(tmp_path, rows_and_reference):
    july, reference = rows_and_reference
    files = write_window(tmp_path, july)
    start = END - dt.timedelta(days=4)
    frame, unknown, note = load_window(tmp_path, MODEL, start, END)
    old = measure_drift(frame, reference, PolicyParams(), model_version="v1", **CONTRACT)
    window = sample_window(tmp_path, MODEL, start, END, columns=list(reference.columns), model_version="v1")
    new = measure_drift(window.frame, reference, PolicyParams(), model_version="v1", window=window, **CONTRACT)
    assert old.status == "checked" and old.rows == 4000 and old.other_versions == {"v2": 2000}
    assert new.model_dump() == old.model_dump()
    assert (window.unknown_labels, window.note) == (unknown, note) and unknown == 7
    assert window.files == files  # the "early" rows' day folder (9 days back) was never listed
    assert "latency_ms" not in window.columns_read and "latency_ms" not in window.frame


def test_counts_cover_the_whole_window_and_the_sample_is_seeded(tmp_path, rows_and_reference):
    july, reference = rows_and_reference
    write_window(tmp_path, july)
    start = END - dt.timedelta(days=4)
    frame, unknown, _ = load_window(tmp_path, MODEL, start, END)
    mine = frame[frame["model_version"] == "v1"]
    cols = list(reference.columns)
    small = sample_window(tmp_path, MODEL, start, END, columns=cols, model_version="v1", max_rows=500, seed=3, batch_rows=256)
    big = sample_window(tmp_path, MODEL, start, END, columns=cols, model_version="v1", max_rows=500, seed=3)
    other = sample_window(tmp_path, MODEL, start, END, columns=cols, model_version="v1", max_rows=500, seed=4)
    assert small.rows == len(mine) == 4000 and small.versions == {"v1": 4000, "v2": 2000}
    assert small.labelled_rows == int(mine["label"].notna().sum()) and small.unknown_labels == unknown
    span = (mine["ts"].max() - mine["ts"].min()) / pd.Timedelta(hours=1)
    assert small.span_hours == pytest.approx(span)
    assert len(small.frame) == 500 and small.frame["request_id"].is_unique
    pd.testing.assert_frame_equal(small.frame, big.frame)  # the batch size does not change the sample
    assert set(other.frame["request_id"]) != set(small.frame["request_id"])
    joined = small.frame.merge(mine[["request_id", "label"]], on="request_id", suffixes=("", "_old"))
    assert len(joined) == 500 and joined["label"].equals(joined["label_old"])  # a subset of v1, same labels
    summary = measure_drift(small.frame, reference, PolicyParams(), model_version="v1", window=small, **CONTRACT)
    assert summary.rows == 4000 and summary.rows_compared == 500 and summary.other_versions == {"v2": 2000}


class CountingFS(LocalFileSystem):
    """The local filesystem, counting the bytes read from each file (fsspec; pyarrow reads through it)."""

    cachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_read: dict[str, int] = {}

    def _open(self, path, mode="rb", **kwargs):
        fh = super()._open(path, mode, **kwargs)
        fs, name, raw_read = self, self._strip_protocol(path), fh.read

        def read(*args):
            data = raw_read(*args)
            fs.bytes_read[name] = fs.bytes_read.get(name, 0) + len(data)
            return data

        fh.read = read
        return fh


def test_reads_only_the_requested_columns_and_time_range(tmp_path):
    rng = np.random.default_rng(0)
    n = 24 * 500  # one day, 500 rows an hour
    for day in range(5):
        first = pd.Timestamp("2026-02-20", tz="UTC") + pd.Timedelta(days=day)
        frame = pd.DataFrame({
            "request_id": [f"d{day}-{i}" for i in range(n)], "row": np.zeros(n, np.int32),
            "ts": (first + pd.to_timedelta(np.arange(n) * (86400 / n), unit="s")).astype("datetime64[us, UTC]"),
            "model_name": MODEL, "model_version": "v1", "score": rng.random(n).astype(np.float32),
            "padding": [rng.bytes(64).hex() for _ in range(n)],  # incompressible, never requested
        })  # fmt: skip
        folder = tmp_path / MODEL / f"date={first:%Y-%m-%d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet", row_group_size=500)
    target = tmp_path / MODEL / "date=2026-02-22" / "part-0.parquet"
    meta = pq.ParquetFile(target).metadata

    def column_bytes(*names: str) -> int:
        index = [meta.schema.column(j).name for j in range(meta.num_columns)]
        return sum(meta.row_group(i).column(index.index(c)).total_compressed_size
                   for i in range(meta.num_row_groups) for c in names)  # fmt: skip

    padding_bytes = column_bytes("padding")
    assert padding_bytes > 0.8 * target.stat().st_size

    day_fs = CountingFS()
    day = sample_window(tmp_path, MODEL, "2026-02-22", "2026-02-23", columns=["score"], filesystem=day_fs)
    assert day.rows == n and list(day_fs.bytes_read) == [str(target)]  # other days' files never opened
    assert "padding" not in day.frame and day_fs.bytes_read[str(target)] < padding_bytes / 4

    hour_fs = CountingFS()
    hour = sample_window(tmp_path, MODEL, "2026-02-22T05:00", "2026-02-22T06:00", columns=["score"], filesystem=hour_fs)
    assert hour.rows == 500 and list(hour_fs.bytes_read) == [str(target)]
    # Both read the same footers; the day also reads the key columns and score of 23 more row groups.
    needed = column_bytes("request_id", "row", "ts", "model_version", "score")
    assert hour_fs.bytes_read[str(target)] < day_fs.bytes_read[str(target)] - 0.9 * needed * 23 / 24
