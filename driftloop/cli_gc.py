"""`driftloop gc [--dry-run]`: compact and expire the prediction log, retire model folders, `dvc gc` (thin shell).

Exit status: 0 done (or listed), 2 when it could not plan (one `error:` line).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from driftloop.errors import DriftloopError


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted and the bytes freed; touch nothing")] = False,
    root: Annotated[Path, typer.Option(help="project root: the git + DVC repository")] = Path("."),
    params: Annotated[Path | None, typer.Option(help="params file; default <root>/params.yaml")] = None,
    dvc: Annotated[bool, typer.Option(help="also `dvc gc` the cache (every git tag and the last retention.keep_runs commits kept)")] = True,
) -> None:
    """Delete what nothing needs: compact past log days into daily files, expire days older than
    retention.log_days (never the drift window or an open canary's; labels joined first), remove
    retired model folders (never stable, canary or the rollback target), and `dvc gc` keeping every
    registered version. Without --dry-run it deletes exactly what --dry-run lists.

    Example:

        driftloop gc --dry-run      # what, why, and the bytes freed
        driftloop gc
    """
    from driftloop.config import RetentionParams, load_section
    from driftloop.lifecycle import execute, plan_gc

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(width=200)
    root = root.resolve()
    try:
        plan = plan_gc(root, params, with_dvc=dvc)
        keep_runs = load_section(params or root / "params.yaml", "retention", RetentionParams).keep_runs
    except (DriftloopError, RuntimeError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    table = Table("action", "path", "bytes", "why")
    for a in plan.actions:
        table.add_row(a.kind, str(a.path.relative_to(root) if a.path.is_relative_to(root) else a.path), _human(a.bytes), a.reason)
    console.print(table)
    for line in plan.kept:
        console.print(f"kept: {line}")
    console.print(f"{'would free' if dry_run else 'freeing'} {_human(plan.bytes)} in {len(plan.actions)} action(s)")
    if dry_run:
        return
    try:
        done = execute(plan, root=root, keep_runs=keep_runs)
    except (OSError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    console.print(f"freed {_human(done['freed_bytes'])}; daily files written {_human(done['written_bytes'])}")
