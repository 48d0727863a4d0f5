"""Stage `validate`: a Great Expectations 1.x suite over the snapshot, generated from the declaration.

Nothing here names a column: `build_suites` turns `dataset` (driftloop/dataset.py) into
expectations, per table:
    - the column set (the declared `columns`, else every column the declaration reads);
    - the main table's row count >= `dataset.min_rows`;
    - every constraint of a feature of that table and of a `checks:` entry: not null (unless
      `nullable`; `max_null_fraction` bounds the nulls of a nullable one), `min`/`max`, `allowed`,
      `regex`, each with its `mostly`;
    - no null in the key, the time column, the local-date columns, the join keys and the row id's
      columns; the label column null on at most `label.max_unknown_fraction` of the rows;
    - the `key` compound-unique;
    - a join key that is a feature carries the feature's `allowed` set into the joined table.
Types are checked on pandas dtypes (`check_types`: GX cannot say "any integer").

Why `mostly`: real tables have known outliers and gaps (the default dataset: one wind speed of
1048 mph, gusts ~80% null), so ranges and null fractions are batch-level checks with a tolerance, not
row-level vetoes, where the declaration says so.

Beyond single tables, one cross-table fact per join: the share of main rows whose `on` columns
find a row of the joined table, the exact join `features` makes, must reach `join.min_coverage`
(0% when the two tables write a key differently, e.g. time zones). An empty table is reported
alone, as "0 rows", first.

The suite runs in an ephemeral GX context (nothing is written outside the declared output). Every
expectation's result is written to the JSON report; if any failed, the stage exits non-zero with
one message listing every failure (table, column, expectation, observed, expected). The report
records the snapshot it judged (the manifest's sha256s): `features` refuses a report that failed
or that belongs to another snapshot.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config import load_section
from driftloop.dataset import Constraint, Dataset
from driftloop.errors import DataError, ValidationFailed
from driftloop.io import read_json, write_json
from driftloop.stage import run_stage
from tasks.snapshot import read_snapshot

log = logging.getLogger(__name__)

_KIND = {"BYTES": "O", "INT64": "i", "FP32": "f"}
"""Expected pandas dtype kind per feature datatype: i = integer, f = numeric, O = string."""


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


def _constraints(dataset: Dataset, table: str) -> dict[str, Constraint]:
    """Every column of `table` with declared constraints: its features (not derived) and its `checks`."""
    main = dataset.main_table
    out: dict[str, Constraint] = {n: f for n, f in dataset.features.items() if (f.table or main) == table and f.derive is None}
    out.update(dataset.tables[table].checks)
    if table != main:  # a join key that is a feature of the main table carries its allowed set
        for col in dataset.tables[table].join.keys:
            feat = dataset.features.get(col)
            if feat is not None and feat.allowed is not None and col not in out:
                out[col] = Constraint(allowed=feat.allowed, mostly=feat.mostly)
    return out


def required_not_null(dataset: Dataset, table: str) -> list[str]:
    """Columns of `table` that may hold no null: key, join keys, time and local-date columns, row id columns."""
    spec = dataset.tables[table]
    cols = [*spec.key, *(spec.join.keys if spec.join else [])]
    if table == dataset.main_table:
        cols += [dataset.time.column, *(dataset.time.local_date or [])]
        cols += [c for j in dataset.joins.values() for c in j.keys]
        cols += [f for f in dataset.row_id_fields() if f != "date"]
    else:
        present = spec.columns or dataset.source_columns(table)
        cols += [c for c in (dataset.time.column, *(dataset.time.local_date or [])) if c in present]
    return list(dict.fromkeys(cols))


def build_suites(dataset: Dataset) -> dict[str, list]:
    """The expectations per declared table, as GX 1.x expectation objects (see the module docstring)."""
    import great_expectations.expectations as gxe

    suites: dict[str, list] = {}
    for table, spec in dataset.tables.items():
        exps: list = [gxe.ExpectTableColumnsToMatchSet(column_set=list(spec.columns or dataset.source_columns(table)), exact_match=False)]
        if table == dataset.main_table:
            exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=dataset.min_rows))
        constraints = _constraints(dataset, table)
        not_null = set(required_not_null(dataset, table))
        for col, c in constraints.items():
            mostly = {"mostly": c.mostly} if c.mostly < 1 else {}
            if c.min is not None or c.max is not None:
                exps.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=c.min, max_value=c.max, **mostly))
            if c.allowed is not None:
                exps.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(c.allowed), **mostly))
            if c.regex is not None:
                exps.append(gxe.ExpectColumnValuesToMatchRegex(column=col, regex=c.regex, **mostly))
            if not c.nullable:
                not_null.add(col)
            elif c.max_null_fraction is not None and col not in not_null:
                exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1 - c.max_null_fraction))
        if table == dataset.main_table and dataset.label.column not in not_null:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=dataset.label.column, mostly=1 - dataset.label.max_unknown_fraction))
        if len(spec.key) == 1:  # GX's compound expectation wants two columns or more
            exps.append(gxe.ExpectColumnValuesToBeUnique(column=spec.key[0]))
        elif spec.key:
            exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.key)))
        exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in sorted(not_null)]
        suites[table] = exps
    return suites


def column_kinds(dataset: Dataset, table: str) -> dict[str, str]:
    """Expected dtype kind per column of `table` (`check_types`): features by datatype, range
    checks numeric, regex checks strings, the label column as its rule's value, 3 local-date columns integers."""
    kinds: dict[str, str] = {}
    for col, c in dataset.tables[table].checks.items():
        if c.min is not None or c.max is not None:
            kinds[col] = "f"
        elif c.regex is not None:
            kinds[col] = "O"
    if table == dataset.main_table:
        if len(dataset.time.local_date or []) == 3:
            kinds.update({c: "i" for c in dataset.time.local_date})
        kinds[dataset.label.column] = "O" if isinstance(dataset.label.value, str) else "f"
    main = dataset.main_table
    kinds.update({n: _KIND[f.dtype] for n, f in dataset.features.items() if (f.table or main) == table and f.derive is None})
    return kinds


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


def join_coverage(main: pd.DataFrame, joined: pd.DataFrame, on: list[str]) -> dict[str, Any]:
    """Share of `main` rows whose `on` values equal a `joined` row's, as `features` joins.

    Keys compare as Python values (a str never equals a Timestamp), so this never raises on
    mismatched types. Returns `fraction` (0..1, None without rows or key columns), `rows`,
    `joined`, and one example of each key column in each table (to show a format mismatch).
    """
    if not set(on) <= set(main.columns) or not set(on) <= set(joined.columns) or main.empty:
        return {"fraction": None, "rows": len(main), "joined": 0, "examples": {}}
    keys = set(zip(*(joined[c].tolist() for c in on), strict=True))
    hits = sum(k in keys for k in zip(*(main[c].tolist() for c in on), strict=True))
    examples = {side: {c: repr(f[c].dropna().iloc[0]) if f[c].notna().any() else None for c in on}
                for side, f in (("main", main), ("joined", joined))}  # fmt: skip
    return {"fraction": hits / len(main), "rows": len(main), "joined": hits, "examples": examples}


def validate_snapshot(tables: dict[str, pd.DataFrame], dataset: Dataset) -> dict:
    """Run the generated suites, the type checks and the cross-table join checks.

    Args:
        tables: the snapshot's tables, {name: frame}, every table of `dataset.tables`.
        dataset: the declaration.

    Returns:
        The report: `success`, `failures` (list of str), `tables` (per table its `rows` and every
        expectation with `expectation`, `column`, `success`, `observed`, `kwargs`), and
        `cross_table` (one `<table>_join_coverage` entry per join). A table with 0 rows is the
        only failure reported (every other check would fail for that one reason).
    """
    empty = [t for t in dataset.tables if tables[t].empty]
    if empty:
        failures = [f"{t}: 0 rows; the snapshot holds no {t}: check dataset.source and the window" for t in empty]
        report_tables = {t: {"rows": len(tables[t]), "expectations": []} for t in dataset.tables}
        return {"success": False, "failures": failures, "tables": report_tables, "cross_table": []}
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    failures: list[Failure] = [f for t in dataset.tables for f in check_types(t, tables[t], column_kinds(dataset, t))]
    report: dict[str, Any] = {"tables": {}}
    suites = build_suites(dataset)
    for table in dataset.tables:
        frame = tables[table]
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
    report["cross_table"] = []
    main_name = dataset.main_table
    for name, join in dataset.joins.items():
        cov = join_coverage(tables[main_name], tables[name], join.keys)
        ok = cov["fraction"] is not None and cov["fraction"] >= join.min_coverage
        report["cross_table"].append({"check": f"{name}_join_coverage", "table": name, "key": join.keys, "success": ok,
                                      "min_fraction": join.min_coverage, **cov})  # fmt: skip
        if not ok and cov["fraction"] is not None:
            ex = cov["examples"]
            shown = ", ".join(f"{c}: {main_name} {ex['main'][c]}, {name} {ex['joined'][c]}" for c in join.keys)
            failures.append(Failure(
                f"{main_name} x {name}", "+".join(join.keys), f"{name}_join_coverage",
                f"{cov['fraction']:.1%} of {cov['rows']} {main_name} rows find their {name} row ({shown})",
                f">= {join.min_coverage:.1%} (dataset.tables.{name}.join.min_coverage); write the keys the same way in both tables",
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
        dataset = load_section(args.params, "dataset", Dataset)
        report = validate_snapshot(read_snapshot(args.snapshot, dataset), dataset)
        report["snapshot"] = read_json(args.snapshot / "manifest.json")["sha256"]
        write_json(args.report, report)
        if not report["success"]:
            n = len(report["failures"])
            raise ValidationFailed(f"{n} expectation(s) failed: " + "; ".join(report["failures"]) + f" (report: {args.report})")
        n = sum(len(t["expectations"]) for t in report["tables"].values())
        joins = ", ".join(f"{c['table']} {100 * c['fraction']:.2f}%" for c in report["cross_table"])
        log.info("validate: %d expectations and the join coverage (%s) passed", n, joins or "no join")

    run_stage("validate", body)


if __name__ == "__main__":
    main()
