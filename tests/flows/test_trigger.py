"""The drift event starts the retraining deployment with the event's window as its parameters.

The harness's server runs Prefect's trigger and action services, so this is the real path: an
automation created from the deployment's `DeploymentEventTrigger`, an emitted event, a flow run
created with the templated parameters. (No worker runs here; the flow itself is tested in
test_training.py with the same parameters.)
"""

from __future__ import annotations

import datetime as dt
import time

from flows.deployments import build_deployments, retrain_trigger
from flows.monitoring import DRIFT_EVENT, model_resource_id
from flows.training import training_flow


def test_trigger_spec_maps_the_payload():
    trig = retrain_trigger("flight-delay", "/srv/driftloop")
    assert trig.expect == {DRIFT_EVENT}
    assert trig.match.model_dump() == {"prefect.resource.id": "driftloop.model.flight-delay"}
    assert trig.parameters["as_of"] == "{{ event.payload.as_of }}"
    assert trig.parameters["window_months"] == "{{ event.payload.window_months }}"


def test_drift_event_creates_a_retraining_run_with_mapped_parameters(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event

    deployments = build_deployments(str(tmp_path), model_name="flight-delay-t")
    retrain = next(d for d in deployments if d.name == "retrain-on-drift")
    dep_id = retrain.apply()
    time.sleep(2)  # the triggers service loads automations when they change
    emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": model_resource_id("flight-delay-t")},
        payload={"as_of": "2013-08-31", "window_months": 3, "summary": {"drift_share": 0.6}},
    )
    runs = []
    deadline = time.monotonic() + 45
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not runs:
            time.sleep(1)
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
    assert runs, "no flow run was created by the drift trigger within 45 s"
    params = runs[0].parameters
    assert params["root"] == str(tmp_path)
    # The flow's typed signature validates the templated strings into a date and an int.
    validated = training_flow.validate_parameters(params)
    assert validated["as_of"] == dt.date(2013, 8, 31) and validated["window_months"] == 3
