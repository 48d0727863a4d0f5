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
        # One file per (model, UTC date). The date is a block's (one request's), so grouping costs
        # one `strftime` per request, not per row (per row it was 75% of a flush's time).
        groups: dict[tuple[str, str], list[_Block]] = {}
        for b in blocks:
            groups.setdefault((b.model, _utc(b.ts).strftime("%Y-%m-%d")), []).append(b)
        total = 0
        for (model, date), group in sorted(groups.items()):
            table = _table(group)
            self._seq += 1
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
            name = f"part-{stamp}-{self._seq:06d}.parquet"
            if self.log_url is not None:
                self._put(f"{model}/date={date}/{name}", table)
                total += table.num_rows
                continue
            folder = self.log_dir / model / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / name
            tmp = folder / f".{target.name}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, target)
            total += table.num_rows
        return total

    def _put(self, key: str, table: pa.Table) -> None:
        """Write one part file under the log URL (one object, visible once complete)."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.log_url)
        with fs.open(f"{root.rstrip('/')}/{key}", "wb") as fh:
            pq.write_table(table, fh)


_TS = pa.timestamp("us", tz="UTC")


def _utc(ts: dt.datetime) -> dt.datetime:
    """`ts` in UTC; a naive time is taken as UTC (the log's clock)."""
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def _per_block(values: list, index: pa.Array, type_: pa.DataType) -> pa.Array:
    """One value per block, repeated over the block's rows (an Arrow `take`, no Python per row)."""
    return pa.array(values, type=type_, from_pandas=True).take(index)


def _array(values: np.ndarray, type_: pa.DataType | None = None) -> pa.Array:
    """An Arrow array of `values` with NaN and None stored as null, as `Table.from_pandas` wrote them."""
    return pa.array(values, type=type_, from_pandas=True)


def _table(blocks: list[_Block]) -> pa.Table:
    """Concatenate blocks (same model and date) into one Arrow table, columns in the documented order.

    Columnar all the way: numeric feeds and scores are concatenated numpy arrays handed to Arrow
    without a copy, per-request values (id, time, model, latencies) are taken by block index, and
    only string columns convert element by element (in Arrow's C++ converter).
    """
    counts = np.fromiter((len(b.scores) for b in blocks), dtype=np.int64, count=len(blocks))
    index = pa.array(np.repeat(np.arange(len(blocks), dtype=np.int32), counts))
    columns: dict[str, pa.Array] = {
        "request_id": _per_block([b.request_id for b in blocks], index, pa.string()),
        "row": pa.array(np.concatenate([np.arange(c, dtype=np.int32) for c in counts])),
        "ts": _per_block([_utc(b.ts) for b in blocks], index, _TS),
        "model_name": _per_block([b.model for b in blocks], index, pa.string()),
        "model_version": _per_block([b.version for b in blocks], index, pa.string()),
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
        if len({p.dtype.kind for p in parts}) > 1:  # BYTES as str and as unicode; a column some blocks lack
            column = np.concatenate([p.astype(object) for p in parts])
            columns[name] = _array(column)  # inferred, None -> null
            continue
        column = parts[0] if len(parts) == 1 else np.concatenate(parts)
        columns[name] = _array(column, pa.string() if column.dtype.kind in "OU" else None)
    columns["score"] = _array(np.concatenate([b.scores.reshape(-1) for b in blocks]).astype(np.float32))
    columns["latency_ms"] = _per_block([b.latency_ms for b in blocks], index, pa.float32())
    columns["service_ms"] = _per_block([b.service_ms for b in blocks], index, pa.float32())
    return pa.table(columns)
