"""The drift event starts the retraining deployment with the event's window as its parameters.

The harness's server runs Prefect's trigger and action services, so this is the real path: an
automation created from the deployment's `DeploymentEventTrigger`, an emitted event, a flow run
created with the templated parameters. (No worker runs here; the flow itself is tested in
test_training.py with the same parameters.) Two models are deployed side by side: each keeps its
own deployments and trigger, and an event for one starts only that one's retraining.
"""

from __future__ import annotations

import datetime as dt
import time

from flows.deployments import build_deployments, deployment_names, retrain_trigger
from flows.monitoring import DRIFT_EVENT, model_resource_id
from flows.training import training_flow


def test_trigger_spec_maps_the_payload():
    trig = retrain_trigger("flight-delay", "/srv/driftloop")
    assert trig.expect == {DRIFT_EVENT}
    assert trig.match.model_dump() == {"prefect.resource.id": "driftloop.model.flight-delay"}
    assert trig.parameters["as_of"] == "{{ event.payload.as_of }}"
    assert trig.parameters["window_months"] == "{{ event.payload.window_months }}"


def test_each_model_has_its_own_deployment_names():
    a, b = deployment_names("flight-delay"), deployment_names("taxi-tip")
    assert not set(a.values()) & set(b.values())
    assert [d.name for d in build_deployments("/srv", "taxi-tip")] == [b["drift"], b["retrain"], b["manual"]]


def _poll(condition, timeout_s: float, interval_s: float = 0.5):
    """Call `condition` until it returns something truthy or `timeout_s` passes; returns the last value."""
    deadline = time.monotonic() + timeout_s
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = condition()
    return value


def test_drift_event_creates_a_retraining_run_with_mapped_parameters(prefect_harness, tmp_path):
    check_drift_event_starts_retraining(tmp_path)


def check_drift_event_starts_retraining(tmp_path) -> list:
    """Apply two models' retraining deployments, emit a drift event for one, assert only its run
    starts with the mapped parameters; against whatever Prefect API the settings point at.

    Returns:
        The flow runs the trigger created (tests/flows/test_postgres.py looks them up in the database).
    """
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event

    ids = {}
    for model in ("flight-delay-t", "other-model-t"):
        retrain = next(d for d in build_deployments(str(tmp_path / model), model) if d.name == deployment_names(model)["retrain"])
        ids[model] = retrain.apply()
    assert len(set(ids.values())) == 2  # the second model did not replace the first one's deployment

    with get_client(sync_client=True) as client:

        def runs_of(model: str) -> list:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[ids[model]])))

        def triggers_loaded() -> bool:
            names = {a.name for a in client.read_automations()}
            return {"retrain flight-delay-t on drift", "retrain other-model-t on drift"} <= names

        assert _poll(triggers_loaded, 30), "the trigger's automation was not created"

        def emit_and_poll() -> list:
            # The triggers service loads new automations on its own schedule: re-emit until it acts.
            emit_event(
                event=DRIFT_EVENT,
                resource={"prefect.resource.id": model_resource_id("flight-delay-t")},
                payload={"as_of": "2013-08-31", "window_months": 3, "summary_json": "x"},
            )
            return _poll(lambda: runs_of("flight-delay-t"), 5)

        runs = _poll(emit_and_poll, 60, interval_s=0)
        assert runs, "no flow run was created by the drift trigger within 60 s"
        assert not runs_of("other-model-t")  # the other model's trigger did not fire
    params = runs[0].parameters
    assert params["root"] == str(tmp_path / "flight-delay-t")
    # The flow's typed signature validates the templated strings into a date and an int.
    validated = training_flow.validate_parameters(params)
    assert validated["as_of"] == dt.date(2013, 8, 31) and validated["window_months"] == 3
    return runs
