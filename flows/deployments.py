"""Deployments of the flows, kept apart from the flow code.

Three deployments per model, each named after it (`deployment_names`), so deploying a second
model adds its own and never replaces the first one's schedule or trigger:
    drift-check/scheduled-<model>    the drift check on a cron schedule (default hourly)
    training/retrain-<model>         the training flow, started by a `DeploymentEventTrigger` on
                                     `driftloop.drift.detected` for this model; the event's
                                     payload (as_of, window_months) becomes its parameters
    training/manual-<model>          the training flow for runs by hand (`prefect deployment run`)
Each training deployment runs one flow run at a time (`ONE_RUN_AT_A_TIME`: a second is Cancelled).

Two ways to run them, no Docker either way:
    python -m flows.deployments serve                  one long-running process schedules and runs all three
    python -m flows.deployments deploy --pool driftloop   register them on a process work pool;
                                                         `prefect worker start --pool driftloop` runs them

Both need a Prefect server (`prefect server start`, SQLite) and PREFECT_API_URL pointing at it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger

from flows.monitoring import DRIFT_EVENT, drift_check_flow, model_resource_id
from flows.training import training_flow

log = logging.getLogger(__name__)

DEFAULT_CRON = "0 * * * *"
"""The drift check runs hourly by default: the log window (`monitor.window_hours`, 14 days) slides
by an hour, and the policy's cooldown keeps retrains rare however often it runs."""


ONE_RUN_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
"""Each training deployment runs one flow run at a time; a run asked for while one is active is
Cancelled by the Prefect server ("Deployment concurrency limit reached.") rather than queued: it
would train in the same working copy, and the drift it answers is the one the active run answers.
Runs of the two training deployments at once, or next to a direct call, are refused by the
flow's own project lock (`flows.runlock`)."""


def deployment_names(model_name: str) -> dict[str, str]:
    """The deployment names of one model: {"drift": ..., "retrain": ..., "manual": ...}.

    Prefect keys a deployment by (flow name, deployment name); one name per model keeps two
    models' deployments (and the retrain trigger attached to each) apart.
    """
    return {"drift": f"scheduled-{model_name}", "retrain": f"retrain-{model_name}", "manual": f"manual-{model_name}"}


def retrain_trigger(model_name: str, root: str) -> DeploymentEventTrigger:
    """The trigger that starts a retraining run on a drift event for `model_name`.

    The payload's `as_of` (ISO date) and `window_months` are mapped into the training flow's
    parameters with Prefect's templating; the flow's typed signature turns them back into a
    `date` and an `int` (Prefect validates parameters against it).

    Args:
        model_name: the model whose resource id (`driftloop.model.<name>`) the event names.
        root: the project root the retraining run works in.

    Returns:
        A `DeploymentEventTrigger` for `to_deployment(triggers=[...])`.
    """
    return DeploymentEventTrigger(
        name=f"retrain {model_name} on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": model_resource_id(model_name)},
        parameters={
            "as_of": "{{ event.payload.as_of }}",
            "window_months": "{{ event.payload.window_months }}",
            "root": root,
        },
    )


def build_deployments(root: str, model_name: str = "flight-delay", cron: str = DEFAULT_CRON) -> list[Any]:
    """The three deployments as `RunnerDeployment`s (for `serve(...)`).

    Args:
        root: absolute project root every run works in.
        model_name: the model the drift check watches and the trigger matches.
        cron: the drift check's schedule (cron syntax, UTC).

    Returns:
        [drift check (scheduled), retraining (event-triggered), training (manual)].
    """
    names = deployment_names(model_name)
    return [
        drift_check_flow.to_deployment(
            name=names["drift"], cron=cron, parameters={"root": root, "model_name": model_name},
            description="Drift check of the last monitor.window_hours of the prediction log.",
        ),
        training_flow.to_deployment(
            name=names["retrain"], triggers=[retrain_trigger(model_name, root)], parameters={"root": root},
            description="Training on the window that ended with the drift; registers and releases on a gate pass.",
            concurrency_limit=ONE_RUN_AT_A_TIME,
        ),
        training_flow.to_deployment(
            name=names["manual"], parameters={"root": root}, description="Training on params.yaml's window, by hand.",
            concurrency_limit=ONE_RUN_AT_A_TIME,
        ),
    ]  # fmt: skip


def deploy_to_pool(root: str, pool: str, model_name: str = "flight-delay", cron: str = DEFAULT_CRON) -> list[str]:
    """Register the three deployments on a process work pool (code pulled from `root`, no image).

    Args:
        root: absolute project root (the worker runs the flows from there).
        pool: a process work pool (`prefect work-pool create NAME --type process`).
        model_name: as in `build_deployments`.
        cron: as in `build_deployments`.

    Returns:
        The deployment ids.
    """
    from prefect import flow as prefect_flow

    drift = prefect_flow.from_source(source=root, entrypoint="flows/monitoring.py:drift_check_flow")
    train = prefect_flow.from_source(source=root, entrypoint="flows/training.py:training_flow")
    common = {"work_pool_name": pool, "build": False, "push": False}
    names = deployment_names(model_name)
    return [
        str(drift.deploy(name=names["drift"], cron=cron, parameters={"root": root, "model_name": model_name}, **common)),
        str(train.deploy(name=names["retrain"], triggers=[retrain_trigger(model_name, root)], parameters={"root": root},
                         concurrency_limit=ONE_RUN_AT_A_TIME, **common)),
        str(train.deploy(name=names["manual"], parameters={"root": root}, concurrency_limit=ONE_RUN_AT_A_TIME, **common)),
    ]


def default_model_name(root: str) -> str:
    """`package.model_name` of `<root>/params.yaml` (the model the deployments watch and retrain).

    Raises:
        SystemExit: the file is missing or does not load (one `error:` line).
    """
    from driftloop.config import PackageParams, load_section
    from driftloop.errors import DriftloopError

    try:
        return load_section(Path(root) / "params.yaml", "package", PackageParams).model_name
    except (DriftloopError, OSError) as exc:
        raise SystemExit(f"error: deployments: {exc}; pass --model NAME or fix params.yaml") from None


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.deployments serve | deploy --pool NAME`."""
    from prefect import serve

    from driftloop.stage import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "deploy"])
    parser.add_argument("--root", default=".", help="project root")
    parser.add_argument("--model", default=None, help="model name; default <root>/params.yaml package.model_name")
    parser.add_argument("--cron", default=DEFAULT_CRON, help="drift check schedule (UTC)")
    parser.add_argument("--pool", default="driftloop", help="process work pool (deploy mode)")
    args = parser.parse_args(argv)
    configure_logging()
    root = str(Path(args.root).resolve())
    args.model = args.model or default_model_name(root)
    if args.mode == "serve":
        serve(*build_deployments(root, args.model, args.cron))
    else:
        ids = deploy_to_pool(root, args.pool, args.model, args.cron)
        log.info("deployed %s on pool %s; start a worker: prefect worker start --pool %s", ids, args.pool, args.pool)


if __name__ == "__main__":
    main()
