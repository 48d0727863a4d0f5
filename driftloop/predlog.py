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
from pydantic import BaseModel

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
) -> Path | str:
    """Write a label file in the documented format (atomically); for tests and label feeders.

    Args:
        log_dir: the log root: a folder, or a URL (`s3://bucket/prefix`: one object, written by fsspec).
        model: model name.
        labels: columns `request_id`, `label`, `observed_at`, optionally `row`.
        name: file name stem; default a UTC timestamp.

    Returns:
        The file's path.
    """
    stem = name or dt.datetime.now(dt.UTC).strftime("labels-%Y%m%dT%H%M%S%f")
    if "://" in str(log_dir):
        fs, root = log_filesystem(log_dir)
        key = f"{root.rstrip('/')}/{model}/labels/{stem}.parquet"
        with fs.open(key, "wb") as fh:
            labels.to_parquet(fh, index=False)
        return f"{str(log_dir).rstrip('/')}/{model}/labels/{stem}.parquet"
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


# ----------------------------------------------------------------------------- streaming window reader

SAMPLE_KEY_COLUMNS = ("request_id", "row", "ts", "model_version")
"""Columns `sample_window` always reads: the join key, the clock and the version."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (Steele, Lea, Flood 2014): a bijection that spreads bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def key_hash(request_id: np.ndarray, row: np.ndarray) -> np.ndarray:
    """uint64 hash of each (request_id, row) pair: pandas' `hash_array` of the id, mixed with the row.

    `request_id` must hold `str` objects (an int 7 and a str "7" hash differently).

    Two different keys collide with probability 2**-64 per pair (about 3e-8 among 1M keys); a
    collision can at worst attach one label to one wrong row.
    """
    ids = pd.util.hash_array(np.asarray(request_id, dtype=object), categorize=False)
    with np.errstate(over="ignore"):
        return _splitmix64(ids ^ (np.asarray(row, dtype=np.uint64) * _GOLDEN))


def log_filesystem(log_dir: str | os.PathLike[str]):
    """(fsspec filesystem, root path without protocol) for a log root: a local path or a URL (`s3://...`).

    Raises:
        ImportError: the URL's protocol needs a package that is not installed (s3fs for `s3://`).
    """
    import fsspec

    return fsspec.core.url_to_fs(str(log_dir))


def _log_files(fs, root: str, model: str, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    """Part files of the day folders that overlap [start, end), in name order (the server's write order)."""
    base = f"{root.rstrip('/')}/{model}"
    files: list[str] = []
    try:
        folders = sorted(p for p in fs.ls(base, detail=False) if p.rstrip("/").rsplit("/", 1)[-1].startswith("date="))
    except (FileNotFoundError, NotADirectoryError):
        return files
    for folder in folders:
        day = folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("date=")
        try:
            day_ts = pd.Timestamp(day).tz_localize("UTC")
        except ValueError:
            continue
        if day_ts + pd.Timedelta(days=1) <= start or day_ts >= end:
            continue
        names = fs.ls(folder, detail=False)
        files += sorted(p for p in names if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet"))
    return files


def _label_chunks(fh, parquet: bool, path: str, chunk_rows: int = 65_536):
    """A label file in chunks of at most `chunk_rows` rows: (request ids as str objects, row int64,
    label float64, observed_at as int64 ns since the epoch, UTC; naive times taken as UTC).

    Raises:
        ValueError: the file lacks `request_id`, `label` or `observed_at`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def check(names: list[str]) -> None:
        missing = [c for c in LABEL_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}: label file lacks column(s) {', '.join(missing)}")

    if parquet:
        source = pq.ParquetFile(fh)
        check(source.schema_arrow.names)
        wanted = [c for c in (*LABEL_COLUMNS, "row") if c in source.schema_arrow.names]
        chunks = (pa.Table.from_batches([b]) for b in source.iter_batches(batch_size=chunk_rows, columns=wanted))
    else:
        chunks = (pa.Table.from_pandas(f, preserve_index=False)
                  for f in pd.read_csv(fh, dtype={"request_id": str}, chunksize=chunk_rows))  # fmt: skip
    for i, table in enumerate(chunks):
        if i == 0 and not parquet:
            check(table.column_names)
        n = table.num_rows
        ids = table["request_id"].cast(pa.string()).to_numpy(zero_copy_only=False)
        rows = (pc.fill_null(table["row"], 0).cast(pa.int64()).to_numpy(zero_copy_only=False)
                if "row" in table.column_names else np.zeros(n, np.int64))  # fmt: skip
        observed = table["observed_at"]
        if pa.types.is_timestamp(observed.type):
            ns = observed.cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        else:
            ns = pd.to_datetime(observed.to_pandas(), utc=True).to_numpy(dtype="datetime64[ns]").view(np.int64)
        yield ids, rows, table["label"].cast(pa.float64()).to_numpy(zero_copy_only=False), ns


class _LabelIndex:
    """The labels of one model reduced to sorted key hashes (24 bytes a label: key, label, observed_at; no strings kept)."""

    def __init__(self, keys: np.ndarray, labels: np.ndarray, observed_ns: np.ndarray) -> None:
        self.keys, self.labels, self.observed_ns = keys, labels, observed_ns
        self.seen = np.zeros(len(keys), dtype=bool)

    @classmethod
    def read(cls, fs, root: str, model: str) -> _LabelIndex:
        """Read `<root>/<model>/labels/*.parquet|*.csv` in chunks, keeping hashes (latest `observed_at` wins).

        Raises:
            ValueError: a label file lacks `request_id`, `label` or `observed_at`.
        """

        folder = f"{root.rstrip('/')}/{model}/labels"
        try:
            names = sorted(fs.ls(folder, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        keys, labels, observed = [], [], []
        for path in names:
            name = path.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith((".parquet", ".csv")):
                continue
            with fs.open(path, "rb") as fh:
                for ids, rows, label, observed_ns in _label_chunks(fh, name.endswith(".parquet"), path):
                    keys.append(key_hash(ids, rows))
                    labels.append(label)
                    observed.append(observed_ns)
        if not keys:
            return cls(np.empty(0, np.uint64), np.empty(0), np.empty(0, np.int64))
        k, lab, obs = np.concatenate(keys), np.concatenate(labels), np.concatenate(observed)
        order = np.lexsort((np.arange(len(k)), obs, k))  # by key, then observed_at, then file order
        k, lab, obs = k[order], lab[order], obs[order]
        last = np.append(k[1:] != k[:-1], True)  # the latest observation of each key
        return cls(k[last], lab[last], obs[last])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Label of each key (float64, NaN = none); marks the keys found as seen."""
        out = np.full(len(keys), np.nan)
        if not len(self.keys):
            return out
        # Sorted queries walk the sorted index in order: several times faster than random ones.
        order = np.argsort(keys)
        pos = np.empty(len(keys), np.int64)
        pos[order] = np.minimum(np.searchsorted(self.keys, keys[order]), len(self.keys) - 1)
        hit = self.keys[pos] == keys
        out[hit] = self.labels[pos[hit]]
        self.seen[pos[hit]] = True
        return out

    def unseen_between(self, start: pd.Timestamp, end: pd.Timestamp) -> int:
        """Labels observed in [start, end) whose key no row looked up."""
        in_window = (self.observed_ns >= start.value) & (self.observed_ns < end.value)
        return int((in_window & ~self.seen).sum())


def _scan(fs, files: list[str], want: list[str], start: pd.Timestamp, end: pd.Timestamp, batch_rows: int,
          read: list[str]):  # fmt: skip
    """Record batches of `want` (those each file has) with `start <= ts < end`, one file at a time.

    Row groups whose `ts` statistics fall outside the window are not read. (A pyarrow dataset
    scan does the same, but its read-ahead let memory creep with the number of files: 44 -> 190 MB
    over 2M rows here, where this loop stays flat.) Appends every column read to `read`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    lo, hi = start.value // 1000, end.value // 1000  # microseconds since the epoch, UTC
    for path in files:
        with fs.open(path, "rb") as fh:
            source = pq.ParquetFile(fh)
            names = source.schema_arrow.names
            cols = [c for c in want if c in names]
            read.extend(c for c in cols if c not in read)
            ts_index = source.metadata.schema.names.index("ts")
            groups = []
            for i in range(source.metadata.num_row_groups):
                stats = source.metadata.row_group(i).column(ts_index).statistics
                if stats is not None and stats.has_min_max:
                    first, last = pd.Timestamp(stats.min), pd.Timestamp(stats.max)
                    first = first.tz_localize("UTC") if first.tzinfo is None else first
                    last = last.tz_localize("UTC") if last.tzinfo is None else last
                    if last < start or first >= end:
                        continue
                groups.append(i)
            if not groups:
                continue
            for batch in source.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols):
                ts = batch.column("ts").cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
                inside = (ts >= lo) & (ts < hi)
                if inside.all():
                    yield batch
                elif inside.any():
                    yield batch.filter(pa.array(inside))


class WindowSample(BaseModel):
    """A log window read by `sample_window`: a seeded sample plus counts over every row of the window.

    Attributes:
        frame: at most `max_rows` rows of the judged version(s), sorted by (ts, request_id, row):
            the key columns, the requested columns the log has, and `label` (float64, NaN = none).
        versions: rows in the window per model version (every version).
        rows: rows of the judged version (all versions when none was named), before sampling.
        span_hours: hours from the first to the last `ts` of those rows (0 for fewer than two).
        labelled_rows: those rows whose label has arrived.
        unknown_labels: label rows observed in the window whose (request_id, row) no window row has.
        note: why the label files were ignored, when they were unreadable ("" otherwise).
        columns_read: the columns the scan read from the files.
        files: part files scanned (after pruning day folders outside the window).
    """

    model_config = {"arbitrary_types_allowed": True}

    frame: pd.DataFrame
    versions: dict[str, int]
    rows: int
    span_hours: float
    labelled_rows: int
    unknown_labels: int
    note: str = ""
    columns_read: list[str]
    files: int


def sample_window(
    log_dir: str | os.PathLike[str],
    model: str,
    start: dt.datetime | str | pd.Timestamp,
    end: dt.datetime | str | pd.Timestamp,
    *,
    columns: list[str] | tuple[str, ...] = (),
    model_version: str | None = None,
    max_rows: int = 20_000,
    seed: int = 0,
    batch_rows: int = 16_384,
    filesystem=None,
) -> WindowSample:
    """Read a window of the log in bounded memory: only the needed columns and row groups, sampled while read.

    The day folders outside [start, end) are never listed; within the files, the row groups
    whose `ts` statistics miss the window are skipped, only `SAMPLE_KEY_COLUMNS` plus `columns`
    are read, in record batches of `batch_rows`, one file at a time. The sample
    is a bottom-k sample: each row's priority is a seeded hash of its (request_id, row), and the
    `max_rows` rows with the lowest priorities are kept (a uniform sample without replacement
    that does not depend on file or batch order). Memory: O(max_rows + batch_rows) rows of the
    log, plus 24 bytes per label row (labels are kept as key hashes, `_LabelIndex`).

    Args:
        log_dir: the log root: a local path or an fsspec URL such as `s3://bucket/prefix`.
        model: model name.
        start: window start, inclusive (naive = UTC).
        end: window end, exclusive (naive = UTC).
        columns: columns to read besides the key columns (those the log lacks are left out).
        model_version: sample and count only this version's rows (others are only counted in
            `versions`); None = every version.
        max_rows: sample size.
        seed: sampling seed.
        batch_rows: rows per record batch (bounds the memory of one read).
        filesystem: an fsspec filesystem to read through; None = from `log_dir`.

    Returns:
        A `WindowSample`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    start_ts, end_ts = to_utc(start), to_utc(end)
    if filesystem is None:
        filesystem, root = log_filesystem(log_dir)
    else:
        root = str(log_dir)
    filesystem.invalidate_cache()  # s3fs caches listings per instance: a long-lived process must see new files
    try:
        labels, note = _LabelIndex.read(filesystem, root, model), ""
    except (ValueError, OSError) as exc:
        labels, note = _LabelIndex(np.empty(0, np.uint64), np.empty(0), np.empty(0, np.int64)), f"labels ignored: {exc}"
    files = _log_files(filesystem, root, model, start_ts, end_ts)
    want = list(dict.fromkeys([*SAMPLE_KEY_COLUMNS, *columns]))
    read: list[str] = []
    batches = _scan(filesystem, files, want, start_ts, end_ts, batch_rows, read)
    seed_mix = _splitmix64(np.array([seed], dtype=np.uint64) + _GOLDEN)[0]
    versions: dict[str, int] = {}
    rows = labelled = 0
    ts_min, ts_max = None, None
    kept: list[pa.Table] = []
    kept_rows, threshold = 0, np.uint64(np.iinfo(np.uint64).max)

    def compact() -> None:
        nonlocal kept, kept_rows, threshold
        pool = pa.concat_tables(kept, promote_options="permissive")  # files may lack a column
        if pool.num_rows > max_rows:
            order = np.argpartition(pool["_priority"].to_numpy(), max_rows - 1)[:max_rows]
            pool = pool.take(pa.array(order))
            threshold = np.uint64(pool["_priority"].to_numpy().max())
        kept, kept_rows = [pool], pool.num_rows

    # Batches stay Arrow; only the request ids become Python strings (to hash them), so the
    # per-row cost of the scan is a hash and a comparison, and only sampled rows reach pandas.
    for batch in batches:
        if batch.num_rows == 0:
            continue
        version = batch.column("model_version").cast(pa.string())
        for item in pc.value_counts(version).to_pylist():
            versions[str(item["values"])] = versions.get(str(item["values"]), 0) + int(item["counts"])
        key = key_hash(batch.column("request_id").to_numpy(zero_copy_only=False), batch.column("row").to_numpy())
        label = labels.lookup(key)  # every version: a label for any window row is not "unknown"
        if model_version is None:
            mine = np.ones(batch.num_rows, bool)
        else:
            mine = pc.fill_null(pc.equal(version, model_version), False).to_numpy(zero_copy_only=False)
        if not mine.any():
            continue
        rows += int(mine.sum())
        labelled += int(np.count_nonzero(~np.isnan(label[mine])))
        ts = batch.column("ts").cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)[mine]
        ts_min = ts.min() if ts_min is None else min(ts_min, ts.min())
        ts_max = ts.max() if ts_max is None else max(ts_max, ts.max())
        with np.errstate(over="ignore"):
            priority = _splitmix64(key ^ seed_mix)
        take = mine & (priority <= threshold)
        if take.any():
            chosen = pa.Table.from_batches([batch.filter(pa.array(take))])
            chosen = chosen.append_column("label", pa.array(label[take])).append_column("_priority", pa.array(priority[take]))
            kept.append(chosen)
            kept_rows += chosen.num_rows
            if kept_rows > 2 * max_rows:
                compact()
    if kept:
        compact()
        sample = kept[0].drop_columns(["_priority"]).to_pandas()
    else:
        names = read or [c for c in want if c in LOG_FIXED_COLUMNS]
        sample = pd.DataFrame({c: pd.Series(dtype=object) for c in names}).assign(label=pd.Series(dtype=np.float64))
    if len(sample):
        sample["row"] = sample["row"].astype(np.int64)
        sample = sample.sort_values(["ts", "request_id", "row"], kind="stable").reset_index(drop=True)
    span = float((ts_max - ts_min) / 3.6e9) if rows >= 2 else 0.0  # microseconds -> hours
    return WindowSample(
        frame=sample, versions=versions, rows=rows, span_hours=span, labelled_rows=labelled,
        unknown_labels=labels.unseen_between(start_ts, end_ts), note=note, columns_read=read, files=len(files),
    )  # fmt: skip
