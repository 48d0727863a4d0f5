"""`python -m commands` runs the `driftloop` CLI."""

from commands.main import app

app()
