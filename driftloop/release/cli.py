"""`driftloop register | release | rollback | history`: the release plane's commands (thin shells).

Each command loads `params.yaml` `release:`, builds a `ReleasePlane` (GTO registry on the project
repo, the server's URL) and calls one function of the `driftloop.release` package. A `DriftloopError` prints
`error: <message>` on stderr and exits 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from driftloop.errors import DriftloopError

log = logging.getLogger(__name__)

RootOpt = Annotated[Path, typer.Option(help="project root: the git repo with dvc.yaml")]
ParamsOpt = Annotated[Path | None, typer.Option(help="params file; default <root>/params.yaml")]
UrlOpt = Annotated[
    str | None, typer.Option(help="model server URL; default $DRIFTLOOP_SERVER_URL, else release.server_url")
]


def _plane(root: Path, params: Path | None, url: str | None):
    from driftloop.release import open_plane

    return open_plane(root, params_path=params, server_url=url)


def _folder(version: str) -> str:
    """The integer version folder the server knows a registry version by (`v0.0.7` -> `7`)."""
    from driftloop.model_repository import StateError, version_number

    try:
        return str(version_number(version))
    except StateError:
        return "-"


def _run(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a DriftloopError becomes one `error:` line and exit code 1."""
    try:
        return fn()
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def register(
    package: Annotated[Path | None, typer.Option(help="package folder; default release.package_dir")] = None,
    version: Annotated[str | None, typer.Option(help="semver, e.g. v1.2.0; default: bump the latest")] = None,
    bump: Annotated[str, typer.Option(help="major | minor | patch, when --version is not given")] = "patch",
    root: RootOpt = Path("."),
    params: ParamsOpt = None,
) -> None:
    """Register the gated package as a GTO version (files pushed to the DVC remote first).

    Refuses a package whose gate verdict is not `pass` or whose files do not match SHA256SUMS.
    The tag sits on the commit whose dvc.lock produced the package; its message carries the gate
    verdict and the lineage id.

    Example:

        dvc repro && git commit -am "build" && driftloop register --bump minor
    """
    _logging()

    def go():
        from driftloop.release import register_package

        plane = _plane(root, params, None)
        folder = package or plane.package_dir
        return register_package(plane.registry, folder, version=version, bump=bump)

    out = _run(go)
    Console().print(
        f"registered [bold]{out.version}[/] at {out.commit[:7]} (gate {out.verdict}, lineage {out.lineage_id}, "
        f"{out.pushed} files pushed)"
    )


def release(
    version: Annotated[str, typer.Argument(help="a registered version, e.g. v1.2.0")],
    strategy: Annotated[
        str | None, typer.Option(help="canary | blue-green; default release.strategy")
    ] = None,
    weight: Annotated[float | None, typer.Option(help="canary share of traffic, percent")] = None,
    keep_previous_s: Annotated[
        float | None, typer.Option(help="seconds the old stable stays loaded after a promotion")
    ] = None,
    url: UrlOpt = None,
    root: RootOpt = Path("."),
    params: ParamsOpt = None,
) -> None:
    """Release a version on the running server: canary (or blue-green), analysis, promote or roll back.

    Exit code 0 when promoted, 3 when the analysis rolled it back, 1 on an error (nothing changed).

    Example:

        driftloop serve --log-dir logs/predictions &   # the analysis reads this log
        driftloop release v1.2.0 --strategy canary --weight 10
    """
    _logging()
    console = Console()

    def go():
        from driftloop.release import release_version

        plane = _plane(root, params, url)
        return release_version(
            plane,
            version,
            strategy=strategy,
            weight=weight,
            keep_previous_s=keep_previous_s,
            on_progress=console.print,
        )

    out = _run(go)
    console.print(f"[bold]{out.decision}[/] {out.version}; traffic now {out.traffic}")
    if out.decision != "promoted":
        raise typer.Exit(3)


def rollback(
    reason: Annotated[str, typer.Option(help="why; recorded in the registry")] = "manual rollback",
    url: UrlOpt = None,
    root: RootOpt = Path("."),
    params: ParamsOpt = None,
) -> None:
    """Put the previous prod version back on the server and in the registry, without a rebuild.

    Example:

        driftloop rollback --reason "complaints about late flights marked on time"
    """
    _logging()
    console = Console()

    def go():
        from driftloop.release import rollback_release

        return rollback_release(_plane(root, params, url), reason=reason, on_progress=console.print)

    out = _run(go)
    console.print(f"rolled back {out.previous} -> [bold]{out.version}[/]; traffic now {out.traffic}")


def history(
    at: Annotated[str | None, typer.Option(help="ISO-8601 time (naive = UTC): what served then")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="every column, reasons unabridged (about 250 columns)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the tenures as JSON (ISO-8601 UTC times)")] = False,
    root: RootOpt = Path("."),
    params: ParamsOpt = None,
) -> None:
    """Which version held which stage, from when to when, and why.

    Fits 100 columns: a tenure's reason once (the row it started), and how it ended as
    "-> v0.0.2" when the next holder replaced it. --wide shows every reason in full, --json the
    records for scripts.

    Example:

        driftloop history
        driftloop history --wide
        driftloop history --at 2026-11-29T14:05:00Z
    """

    def go():
        from driftloop.release import parse_time, served_at

        plane = _plane(root, params, None)
        if at is not None:
            return plane, served_at(plane, parse_time(at))
        return plane, plane.tenures()

    plane, out = _run(go)
    if at is not None:
        for stage, version in out.items():
            line = f"{stage}: {version or '-'}" + (f" (version folder {_folder(version)})" if version else "")
            typer.echo(line)
        return
    if as_json:
        typer.echo(json.dumps([tenure_record(t) for t in out], indent=2))
        return
    console = Console(width=250 if wide else 100)
    if wide:
        table = Table("stage", "version", "folder", "from (UTC)", "to (UTC)", "why", "ended by", box=box.SQUARE)
    else:  # 100 columns: 7 + 8 + 11 + 11 + 38 + 15 and one space each side; a longer reason ends in ...
        table = Table(box=None, pad_edge=False)
        for name, width in (("stage", 7), ("version", 8), ("from (UTC)", 11), ("to (UTC)", 11), ("why", 38),
                            ("ended", 15)):  # fmt: skip
            table.add_column(name, width=width, no_wrap=True, overflow="ellipsis")
    fmt = "%Y-%m-%d %H:%M:%S" if wide else "%m-%d %H:%M"
    for t in out:
        table.add_row(
            t.stage,
            t.version,
            *([_folder(t.version)] if wide else []),
            t.start.strftime(fmt),
            t.end.strftime(fmt) if t.end else "now",
            t.why,
            t.ended_by if wide else ended_short(t, out),
        )
    console.print(table)


def ended_short(tenure, tenures) -> str:
    """How a tenure ended, without repeating the reason the next row shows: "-> v0.0.2" when a later
    tenure of the same stage started with the message that ended this one; the message otherwise."""
    for later in tenures:
        if later.stage == tenure.stage and tenure.ended_by == f"{later.version} assigned: {later.why}":
            return f"-> {later.version}"
    return tenure.ended_by


def tenure_record(t) -> dict[str, Any]:
    """A tenure as a JSON-ready dict (times ISO-8601 UTC, end null while open)."""
    return {
        "stage": t.stage,
        "version": t.version,
        "folder": _folder(t.version),
        "start": t.start.isoformat(),
        "end": t.end.isoformat() if t.end else None,
        "why": t.why,
        "ended_by": t.ended_by,
    }
