"""The prediction log's writer: every scored row, appended to rotated Parquet files by a background thread.

The format (layout, columns, durability, labels) and the readers live in `driftloop.predlog`,
the ground floor, because the release plane and the drift check read what the server writes.
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

@dataclass
class _Block:
    model: str
    version: str
    request_id: str
    ts: dt.datetime
    feeds: dict[str, np.ndarray]
    scores: np.ndarray
    latency_ms: float
    service_ms: float = float("nan")


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
        # A URL (s3://bucket/prefix, any fsspec protocol) writes through fsspec: an object store's
        # PUT is atomic, so readers never see half a file there either.
        self.log_url = str(log_dir) if "://" in str(log_dir) else None
        self.log_dir = Path(log_dir) if self.log_url is None else None
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
        service_ms: float = float("nan"),
    ) -> None:
        """Buffer one request's rows (cheap: no copy, no I/O).

        Args:
            model: model name.
            version: model version that scored the rows.
            request_id: the request's id.
            feeds: the input columns as scored, each `[n, 1]`.
            scores: float32 `[n, 1]`.
            latency_ms: the request's latency so far, ms (queue + service + the rest).
            service_ms: time inside `session.run` of the batch that scored the rows, ms (NaN: unknown).
            ts: answer time (UTC); default now.
        """
        block = _Block(
            model, version, request_id, ts or dt.datetime.now(dt.UTC), feeds, scores, latency_ms, service_ms
        )
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
                self._seq += 1
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
                name = f"part-{stamp}-{self._seq:06d}.parquet"
                table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
                if self.log_url is not None:
                    self._put(f"{model}/date={date}/{name}", table)
                    total += len(part)
                    continue
                folder = self.log_dir / model / f"date={date}"
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / name
                tmp = folder / f".{target.name}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, target)
                total += len(part)
        return total


    def _put(self, key: str, table: pa.Table) -> None:
        """Write one part file under the log URL (one object, visible once complete)."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.log_url)
        with fs.open(f"{root.rstrip('/')}/{key}", "wb") as fh:
            pq.write_table(table, fh)


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
    columns["service_ms"] = np.repeat(np.array([b.service_ms for b in blocks], dtype=np.float32), counts)
    return pd.DataFrame(columns)
