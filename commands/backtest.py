"""`driftloop backtest`: what would each retraining policy have done to us over a span of history?

A thin shell over `flows.backtest.run_backtest`: options to a `BacktestConfig`, a rich progress
bar (policy, day, retrains so far), one `error:` line for bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from driftloop.errors import DriftloopError


def _pairs(items: list[str] | None, what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {item!r}: expected KEY=VALUE, e.g. train.hgb.max_iter=50")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def backtest(
    start: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="first replayed day")] = dt.datetime(2013, 4, 1),
    end: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="last replayed day")] = dt.datetime(2013, 12, 31),
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="never | monthly | weekly | drift (repeatable; default all)")
    ] = None,
    rows_per_day: Annotated[int | None, typer.Option(help="sample this many flights per day (default all)")] = None,
    label_delay_days: Annotated[int, typer.Option(help="labels of day d arrive at the end of day d + this")] = 0,
    window_months: Annotated[int, typer.Option(help="months of every build's window")] = 3,
    build: Annotated[
        list[str] | None, typer.Option("--set", help="params.yaml override (builds and drift policy), KEY=VALUE (repeatable)")
    ] = None,
    release: Annotated[
        list[str] | None, typer.Option("--release", help="release: override for the canary, KEY=VALUE (repeatable)")
    ] = None,
    root: Annotated[Path, typer.Option(help="project root (params.yaml, dvc.yaml, data source)")] = Path("."),
    out: Annotated[Path, typer.Option(help="folder of backtest.json and backtest.html")] = Path("reports/backtest"),
    work: Annotated[Path | None, typer.Option(help="scratch and resume state; default <out>/work")] = None,
    fresh: Annotated[bool, typer.Option(help="discard a previous run's state instead of resuming it")] = False,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    workers: Annotated[
        int, typer.Option(min=0, help="Dask worker processes running the policies in parallel (0: one after another here)")
    ] = 2,
    dask_address: Annotated[
        str | None, typer.Option(help="an existing Dask scheduler, tcp://host:8786 (instead of a local cluster)")
    ] = None,
    initial_package: Annotated[
        Path | None, typer.Option(help="start from this package (built on the window before START)", hidden=True)
    ] = None,
) -> None:
    """Replay history day by day through the real loop and compare retraining policies.

    Every policy starts from the model built on the months before START; each day's flights go to
    the model server, labels follow, the policy decides, retrains are built (dvc.yaml's stages),
    gated against the champion and released by canary. Writes OUT/backtest.json and
    OUT/backtest.html (renders offline). The policies run in parallel as Prefect tasks on Dask (a
    local cluster of --workers processes, or --dask-address). Killed? Run the same command again:
    it resumes.

    Example:

        driftloop backtest --start 2013-04-01 --end 2013-12-31          # all four policies, ~15 min

        driftloop backtest --end 2013-05-31 --policy never --policy drift --rows-per-day 300
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.backtest import DEFAULT_BUILD, DEFAULT_RELEASE, POLICIES, BacktestConfig, run_backtest

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = BacktestConfig(
            start=start.date(), end=end.date(), policies=tuple(policy or POLICIES), rows_per_day=rows_per_day,
            label_delay_days=label_delay_days, window_months=window_months, seed=seed,
            build={**DEFAULT_BUILD, **_pairs(build, "--set")}, release={**DEFAULT_RELEASE, **_pairs(release, "--release")},
        )  # fmt: skip
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(x) for x in first.get("loc", ())) or "options"
        typer.echo(f"error: {where}: {first['msg']}", err=True)
        raise typer.Exit(2) from None
    if config.end < config.start:
        typer.echo("error: --end is before --start; give a span of at least one day", err=True)
        raise typer.Exit(2)
    console = Console(stderr=True)
    days = len(config.days())
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[day]}"),
                  TextColumn("retrains {task.fields[retrains]} (promoted {task.fields[promoted]})"),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        tasks = {p: progress.add_task(p, total=days, day="", retrains=0, promoted=0) for p in config.policies}

        def on_day(name: str, done: int, counts: dict[str, int]) -> None:
            day = config.start + dt.timedelta(days=done - 1)
            progress.update(tasks[name], completed=done, day=day.isoformat(), retrains=counts["retrains"],
                            promoted=counts["promoted"])  # fmt: skip

        try:
            result = run_backtest(config, root=root, out_dir=out, work_dir=work, fresh=fresh, on_day=on_day,
                                  initial_package=initial_package, workers=workers, dask_address=dask_address)
        except DriftloopError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        for p in config.policies:
            progress.update(tasks[p], completed=days)
    from rich.table import Table

    table = Table(title=f"backtest {config.start} .. {config.end}")
    for col in ("policy", "mean weekly AUC", "overall AUC", "retrains", "promoted", "rejected", "rolled back", "CPU-s"):
        table.add_column(col, justify="right")
    for name, p in result.figures["policies"].items():
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(name, fmt(p["mean_weekly_roc_auc"]), fmt(p["overall_roc_auc"]), str(p["retrains"]),
                      str(p["promoted"]), str(p["rejected_by_gate"]), str(p["rolled_back"]), f"{p['training_cpu_s']:.0f}")  # fmt: skip
    Console().print(table)
    typer.echo(f"wrote {result.json_path} and {result.html_path}")
