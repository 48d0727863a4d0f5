"""The `driftloop` command line: one typer app; each plane adds its commands here."""

from __future__ import annotations

import typer

from serving.cli import serve

app = typer.Typer(
    name="driftloop",
    help="A closed MLOps loop: build (dvc repro), serve, release, monitor.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve)


if __name__ == "__main__":  # pragma: no cover
    app()
