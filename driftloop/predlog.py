"""The prediction log's format and its readers (the server's writer is `serving.predlog.PredictionLog`).

Layout:
    <log_dir>/<model>/date=YYYY-MM-DD/part-<UTC yyyymmddThhmmssffffff>-<seq>.parquet   predictions
    <log_dir>/<model>/labels/*.parquet | *.csv                                           labels, later

A prediction file has one row per scored row:
    request_id     string           the request's id (header `x-request-id`, or generated)
    row            int32            the row's index within its request (0 for single-row requests)
    ts             timestamp[us, UTC] when the server answered
    model_name     string
    model_version  string
    <columns>      the model's raw input columns, as scored (BYTES -> string, INT64, FP32 with NaN)
    score          float32          the predicted probability
    latency_ms     float32          the request's latency inside the server, ms
    service_ms     float32          time inside `session.run` of the batch that scored the row, ms
                                    (the version's own cost, without queueing; NaN in older files)

Each file is written to a temporary name in the same folder and renamed into place, so a reader
never sees half a file; hidden (`.`-prefixed) temporaries are ignored by `read_log`.

Durability: rows are buffered in memory and written every `flush_interval_s` seconds, when
`max_rows_per_file` rows are buffered, and on graceful shutdown (SIGTERM / lifespan shutdown
calls `close()`). A `kill -9` (or a power cut) loses at most the unflushed buffer, i.e. the rows
answered in the last `flush_interval_s` seconds (plus those of a write in progress); files already
renamed into place are complete.

Labels arrive later, joined by request id (and row): Parquet or CSV files under
`<log_dir>/<model>/labels/` with columns `request_id` (string), `label` (0/1), `observed_at`
(ISO-8601 timestamp, UTC) and optionally `row` (int, default 0). When a row is labelled twice, the
latest `observed_at` wins. `read_log_with_labels` returns a log window with a `label` column.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.io import write_parquet

LOG_FIXED_COLUMNS = ("request_id", "row", "ts", "model_name", "model_version", "score")
LABEL_COLUMNS = ("request_id", "label", "observed_at")


def to_utc(value: dt.datetime | str | pd.Timestamp) -> pd.Timestamp:
    """A timezone-aware UTC timestamp; naive times are taken as UTC (the log's clock)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_log(
    log_dir: str | os.PathLike[str],
    model: str,
    start: dt.datetime | str | pd.Timestamp,
    end: dt.datetime | str | pd.Timestamp,
) -> pd.DataFrame:
    """Read the prediction log of `model` for `start <= ts < end` (naive times are taken as UTC).

    Args:
        log_dir: the log root.
        model: model name.
        start: window start, inclusive.
        end: window end, exclusive.

    Returns:
        The rows (columns as in the module docstring), sorted by `ts`; empty (no columns beyond
        the fixed ones) when nothing was logged in the window.
    """
    start_ts, end_ts = to_utc(start), to_utc(end)
    root = Path(log_dir) / model
    frames = []
    if root.is_dir():
        for folder in sorted(root.glob("date=*")):
            day = folder.name.removeprefix("date=")
            try:
                day_ts = pd.Timestamp(day).tz_localize("UTC")
            except ValueError:
                continue
            if day_ts + pd.Timedelta(days=1) <= start_ts or day_ts >= end_ts:
                continue
            for path in sorted(folder.glob("part-*.parquet")):
                frames.append(pd.read_parquet(path))
    if not frames:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=object)
                for c in LOG_FIXED_COLUMNS
            }
        )
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[(frame["ts"] >= start_ts) & (frame["ts"] < end_ts)]
    return frame.sort_values(["ts", "request_id", "row"], kind="stable").reset_index(drop=True)


def read_labels(log_dir: str | os.PathLike[str], model: str) -> pd.DataFrame:
    """Read every label file of `model` (`<log_dir>/<model>/labels/*.parquet|*.csv`).

    Returns:
        Columns `request_id` (str), `row` (int64), `label` (float64, 0/1), `observed_at`
        (UTC timestamp); one row per (request_id, row), the latest observation kept.

    Raises:
        ValueError: a label file lacks `request_id`, `label` or `observed_at`.
    """
    folder = Path(log_dir) / model / "labels"
    frames = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif path.suffix == ".csv":
                frame = pd.read_csv(path, dtype={"request_id": str})
            else:
                continue
            missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: label file lacks column(s) {', '.join(missing)}")
            frames.append(frame)
    if not frames:
        return pd.DataFrame(
            {
                "request_id": pd.Series(dtype=object),
                "row": pd.Series(dtype=np.int64),
                "label": pd.Series(dtype=np.float64),
                "observed_at": pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    labels = pd.concat(frames, ignore_index=True)
    if "row" not in labels:
        labels["row"] = 0
    labels["row"] = labels["row"].fillna(0).astype(np.int64)
    labels["request_id"] = labels["request_id"].astype(str)
    labels["label"] = labels["label"].astype(np.float64)
    labels["observed_at"] = pd.to_datetime(labels["observed_at"], utc=True)
    labels = labels.sort_values("observed_at", kind="stable").drop_duplicates(
        ["request_id", "row"], keep="last"
    )
    return labels[["request_id", "row", "label", "observed_at"]].reset_index(drop=True)


def write_labels(
    log_dir: str | os.PathLike[str], model: str, labels: pd.DataFrame, name: str | None = None
) -> Path:
    """Write a label file in the documented format (atomically); for tests and label feeders.

    Args:
        log_dir: the log root.
        model: model name.
        labels: columns `request_id`, `label`, `observed_at`, optionally `row`.
        name: file name stem; default a UTC timestamp.

    Returns:
        The file's path.
    """
    stem = name or dt.datetime.now(dt.UTC).strftime("labels-%Y%m%dT%H%M%S%f")
    path = Path(log_dir) / model / "labels" / f"{stem}.parquet"
    write_parquet(path, labels)
    return path


def read_log_with_labels(
    log_dir: str | os.PathLike[str],
    model: str,
    start: dt.datetime | str | pd.Timestamp,
    end: dt.datetime | str | pd.Timestamp,
) -> pd.DataFrame:
    """The log window joined with labels by (request_id, row); unlabelled rows get NaN.

    Returns:
        `read_log(...)` plus `label` (float64, NaN = not labelled yet) and `observed_at`.
    """
    frame = read_log(log_dir, model, start, end)
    labels = read_labels(log_dir, model)
    if frame.empty:
        frame["label"] = pd.Series(dtype=np.float64)
        frame["observed_at"] = pd.Series(dtype="datetime64[ns, UTC]")
        return frame
    frame["row"] = frame["row"].astype(np.int64)
    return frame.merge(labels, on=["request_id", "row"], how="left")
