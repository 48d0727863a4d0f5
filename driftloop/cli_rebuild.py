"""`driftloop rebuild VERSION`: rebuild a registered version from its commit and snapshot (thin shell).

Exit status: 0 when it reproduces (bit-identical, or scores within tolerance with the reason
stated), 1 when it does not, 2 when the rebuild could not be attempted (one `error:` line).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from driftloop.errors import DriftloopError


def rebuild(
    version: Annotated[str, typer.Argument(help="registered version, e.g. v0.0.3")],
    root: Annotated[Path, typer.Option(help="project root: the git repo with dvc.yaml and the registry's tags")] = Path("."),
    params: Annotated[Path | None, typer.Option(help="params file; default <root>/params.yaml")] = None,
    workdir: Annotated[Path | None, typer.Option(help="scratch folder (new or empty); default a temp folder")] = None,
    keep: Annotated[bool, typer.Option(help="keep the scratch folder (always kept when it does not reproduce)")] = False,
    tolerance: Annotated[float, typer.Option(help="max |p| difference on the reference sample")] = 1e-6,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Rebuild VERSION in a scratch clone (its commit, `dvc pull` of the snapshot, `dvc repro`) and compare.

    Lineage inputs must be equal; then every package file's sha256, or else the scores on the
    package's reference sample within --tolerance, with the reason each file differs.

    Example:

        driftloop rebuild v0.0.3            # exit 0: reproduces; 1: does not; 2: could not try
    """
    from driftloop.config import ReleaseParams, load_section
    from driftloop.rebuild import rebuild_version, remove_workdir

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rel = load_section(params or root / "params.yaml", "release", ReleaseParams)
        report = rebuild_version(root, version, artifact=rel.artifact, package_dir=rel.package_dir,
                                 workdir=workdir, tolerance=tolerance)  # fmt: skip
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        console = Console(width=160)
        table = Table(title=f"rebuild {report.version} at {report.commit}")
        for col in ("check", "subject", "value", "verdict", "reason"):
            table.add_column(col, overflow="fold")
        for c in report.checks:
            value = "" if c.value is None else f"{c.value:.3g}"
            table.add_row(c.name, c.subject or "", value, "ok" if c.passed else "[bold red]differs[/]", c.reason)
        console.print(table)
        console.print(f"{report.version} ({report.candidate}): [bold]{report.how}[/]; scratch {report.workdir}")
    if report.reproduced and not keep:
        remove_workdir(report)
    raise typer.Exit(0 if report.reproduced else 1)
