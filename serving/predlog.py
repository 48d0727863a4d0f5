"""The prediction log: every scored row, appended to rotated Parquet files by a background thread.

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
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("request_id", "label", "observed_at")


@dataclass
class _Block:
    model: str
    version: str
    request_id: str
    ts: dt.datetime
    feeds: dict[str, np.ndarray]
    scores: np.ndarray
    latency_ms: float


class PredictionLog:
    """Buffer scored rows and write them to Parquet from a background thread.

    Args:
        log_dir: root folder of the log.
        flush_interval_s: the most time rows stay in memory, seconds.
        max_rows_per_file: a file is written as soon as this many rows are buffered.
        on_pending: called with the buffered row count after each change; for metrics.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        flush_interval_s: float = 2.0,
        max_rows_per_file: int = 100_000,
        on_pending=None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.flush_interval_s = flush_interval_s
        self.max_rows_per_file = max_rows_per_file
        self._on_pending = on_pending
        self._buffer: list[_Block] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self.rows_written = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="driftloop-predlog", daemon=True)
        self._thread.start()

    def append(
        self,
        *,
        model: str,
        version: str,
        request_id: str,
        feeds: dict[str, np.ndarray],
        scores: np.ndarray,
        latency_ms: float,
        ts: dt.datetime | None = None,
    ) -> None:
        """Buffer one request's rows (cheap: no copy, no I/O).

        Args:
            model: model name.
            version: model version that scored the rows.
            request_id: the request's id.
            feeds: the input columns as scored, each `[n, 1]`.
            scores: float32 `[n, 1]`.
            latency_ms: the request's latency so far, ms.
            ts: answer time (UTC); default now.
        """
        block = _Block(model, version, request_id, ts or dt.datetime.now(dt.UTC), feeds, scores, latency_ms)
        with self._lock:
            self._buffer.append(block)
            self._rows += len(scores)
            full = self._rows >= self.max_rows_per_file
        if full:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        """Rows buffered and not yet written."""
        return self._rows

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep the writer alive; the next flush retries
                log.exception("prediction log: flush failed; rows stay buffered")

    def flush(self) -> int:
        """Write every buffered row now (one file per model and date).

        Returns:
            Rows written.

        Raises:
            OSError: the log folder cannot be written (the rows are put back in the buffer).
        """
        with self._write_lock:
            with self._lock:
                blocks, self._buffer = self._buffer, []
                self._rows = 0
            if self._on_pending:
                self._on_pending(0)
            if not blocks:
                return 0
            try:
                written = self._write(blocks)
            except Exception:
                with self._lock:
                    self._buffer[:0] = blocks
                    self._rows += sum(len(b.scores) for b in blocks)
                raise
            self.rows_written += written
            return written

    def close(self) -> None:
        """Stop the writer thread and flush what is buffered (graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()
        log.info("prediction log closed; %d rows written in total", self.rows_written)

    def _write(self, blocks: list[_Block]) -> int:
        by_model: dict[str, list[_Block]] = {}
        for b in blocks:
            by_model.setdefault(b.model, []).append(b)
        total = 0
        for model, group in by_model.items():
            frame = _frame(group)
            dates = frame["ts"].dt.strftime("%Y-%m-%d")
            for date, part in frame.groupby(dates, sort=True):
                folder = self.log_dir / model / f"date={date}"
                folder.mkdir(parents=True, exist_ok=True)
                self._seq += 1
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
                target = folder / f"part-{stamp}-{self._seq:06d}.parquet"
                tmp = folder / f".{target.name}.tmp"
                table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
                pq.write_table(table, tmp)
                os.replace(tmp, target)
                total += len(part)
        return total


def _frame(blocks: list[_Block]) -> pd.DataFrame:
    """Concatenate blocks (same model) into one frame, columns in the documented order."""
    counts = np.array([len(b.scores) for b in blocks])
    columns: dict[str, object] = {
        "request_id": np.repeat(np.array([b.request_id for b in blocks], dtype=object), counts),
        "row": np.concatenate([np.arange(c, dtype=np.int32) for c in counts]),
        "ts": pd.to_datetime(
            np.repeat(np.array([b.ts.replace(tzinfo=None) for b in blocks], dtype="datetime64[us]"), counts)
        ).tz_localize("UTC"),
        "model_name": np.repeat(np.array([b.model for b in blocks], dtype=object), counts),
        "model_version": np.repeat(np.array([b.version for b in blocks], dtype=object), counts),
    }
    names: list[str] = []
    for b in blocks:
        for name in b.feeds:
            if name not in names:
                names.append(name)
    for name in names:
        parts = [
            b.feeds[name].reshape(-1) if name in b.feeds else np.full(len(b.scores), None) for b in blocks
        ]
        columns[name] = np.concatenate(parts)
    columns["score"] = np.concatenate([b.scores.reshape(-1) for b in blocks]).astype(np.float32)
    columns["latency_ms"] = np.repeat(np.array([b.latency_ms for b in blocks], dtype=np.float32), counts)
    return pd.DataFrame(columns)


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
                for c in ("request_id", "row", "ts", "model_name", "model_version", "score")
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
    from driftloop.io import write_parquet

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
