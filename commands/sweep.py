"""`driftloop sweep`: a seeded random search over one family's hyperparameters, trials on Dask.

A thin shell over `flows.sweep.run_sweep`: params.yaml's `sweep` section gives every setting and
each option given overrides its key; a rich table of the trials; one `error:` line for bad input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from driftloop.errors import DriftloopError


def sweep(
    trials: Annotated[int | None, typer.Option(help="configurations to try [params: sweep.trials]")] = None,
    family: Annotated[str | None, typer.Option(help="model family swept, e.g. hgb or mlp [sweep.family]")] = None,
    seed: Annotated[int | None, typer.Option(help="the search's seed [sweep.seed]")] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="an existing Dask scheduler, tcp://host:8786 [sweep.dask_address; null: a LocalCluster]")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes [sweep.workers]")] = None,
    features: Annotated[
        str | None, typer.Option(help="folder or s3:// URL of train/valid.parquet; default ROOT/data/features")
    ] = None,
    write: Annotated[bool, typer.Option(help="write the best configuration into params.yaml's train.<family>")] = True,
    train_after: Annotated[bool, typer.Option(help="then run the training flow (train .. package) on the best")] = False,
    root: Annotated[Path, typer.Option(help="project root (params.yaml, data/features)")] = Path("."),
) -> None:
    """Try configurations of one model family, best by validation ROC AUC, on a Dask cluster.

    Every setting comes from params.yaml's `sweep:` section; an option overrides its key. Needs the
    features stage's output (`dvc repro features`). Writes the best into params.yaml's
    `train.<family>`, so the next `dvc repro` trains on it.

    Example:

        driftloop sweep                                   # params.yaml's sweep: (8 HGB trials, LocalCluster)

        driftloop sweep --family mlp --trials 16 --dask-address tcp://10.0.0.5:8786 --train-after
    """
    from rich.console import Console
    from rich.table import Table

    from flows.sweep import run_sweep, sweep_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep_settings(root, trials=trials, family=family, seed=seed, dask_address=dask_address, workers=workers)
        where = features or str(root / "data" / "features")
        if "://" not in where and not (Path(where) / "train.parquet").is_file():
            raise DriftloopError(f"--features {where}: no train.parquet; build it first: dvc repro features")
        result = run_sweep(root, trials=trials, family=family, seed=seed, dask_address=dask_address, workers=workers,
                           features=features, write=write, train_after=train_after)  # fmt: skip
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"sweep of {result.family}: best trial {result.best.index}")
    for col in ("trial", "valid ROC AUC", "CPU s", *result.best.config):
        table.add_column(col, justify="right")
    for t in result.trials:
        mark = " *" if t.index == result.best.index else ""
        table.add_row(f"{t.index}{mark}", f"{t.valid_roc_auc:.4f}", f"{t.cpu_s:.1f}", *(f"{v:.4g}" if isinstance(v, float)
                      else str(v) for v in t.config.values()))  # fmt: skip
    Console().print(table)


app = typer.Typer(add_completion=False)
app.command()(sweep)
