"""The `driftloop` command line: one typer app; each plane contributes its commands here."""

from __future__ import annotations

import typer

from commands.backtest import backtest
from commands.demo import demo
from commands.status import status
from commands.sweep import sweep
from driftloop.cli_gc import gc
from driftloop.cli_init import init
from driftloop.cli_rebuild import rebuild
from driftloop.release.cli import history, register, release, rollback
from serving.cli import serve

app = typer.Typer(
    name="driftloop",
    help="A closed MLOps loop: build (dvc repro), serve, release, monitor.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("init")(init)
app.command("serve")(serve)
app.command("register")(register)
app.command("release")(release)
app.command("rollback")(rollback)
app.command("history")(history)
app.command("rebuild")(rebuild)
app.command("gc")(gc)
app.command("demo")(demo)
app.command("status")(status)
app.command("backtest")(backtest)
app.command("sweep")(sweep)


if __name__ == "__main__":  # pragma: no cover
    app()
