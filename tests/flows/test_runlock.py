"""One training run per working copy.

The project lock (`flows.runlock`) is held by the test, then the real training flow is started in
that working copy: it must end Cancelled at once, naming the holder, without writing its window
into params.yaml or touching DVC. The same for DVC's own repository lock held as a `dvc` command
holds it. And the Prefect server cancels a second concurrent run of a training deployment
(concurrency limit 1, CANCEL_NEW), driven through the real orchestration rules of the harness
server (no worker: the state proposals a worker or runner makes).
"""

from __future__ import annotations

import os
import shutil

import pytest

from flows.runlock import HOLDER_FILE, training_lock
from flows.training import training_flow
from tests.conftest import ROOT

HOLDER = {
    "flow_run_id": "0b5ad3f1-0000-4000-8000-000000000001", "flow_run_name": "holding-heron",
    "deployment": "training/retrain-flight-delay", "pid": 4242, "host": "box", "started": "2026-11-30T07:00:00Z",
    "window": "3 month(s) to 2013-08-31",
}  # fmt: skip


@pytest.fixture
def working_copy(tmp_path):
    """A working copy with only params.yaml and `.dvc/`: a refused run must need nothing more (a run
    that went on would fail at once on the missing dvc.yaml, not be Cancelled)."""
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_a_second_run_is_cancelled_naming_the_run_that_holds_the_lock(prefect_harness, working_copy):
    params_before = (working_copy / "params.yaml").read_bytes()
    with training_lock(working_copy, HOLDER):
        state = training_flow(as_of="2013-09-30", window_months=1, root=str(working_copy), return_state=True)
        assert state.is_cancelled(), state
        message = state.message
        for part in ("training refused", "holding-heron", HOLDER["flow_run_id"], "training/retrain-flight-delay",
                     "pid 4242", "3 month(s) to 2013-08-31", f"prefect flow-run cancel {HOLDER['flow_run_id']}"):  # fmt: skip
            assert part in message, message
        assert "Traceback" not in message and "LockError" not in message
        assert (working_copy / "params.yaml").read_bytes() == params_before  # its window was not written
        assert (working_copy / HOLDER_FILE).is_file()  # the refused run left the holder's record alone
    assert not (working_copy / HOLDER_FILE).exists()  # the holder removes its record on release


def test_a_run_is_refused_while_a_dvc_command_holds_dvcs_lock(prefect_harness, working_copy):
    import zc.lockfile

    params_before = (working_copy / "params.yaml").read_bytes()
    dvc_lock = zc.lockfile.LockFile(str(working_copy / ".dvc" / "tmp" / "lock"))  # what `dvc repro` holds
    try:
        state = training_flow(root=str(working_copy), return_state=True)
    finally:
        dvc_lock.close()
    assert state.is_cancelled(), state
    assert f"held by pid {os.getpid()}" in state.message and "dvc repro" in state.message, state.message
    assert (working_copy / "params.yaml").read_bytes() == params_before
    # the refused run released the project lock on its way out
    with training_lock(working_copy, HOLDER):
        pass


def test_no_lock_folder_is_made_outside_a_dvc_project(tmp_path):
    from driftloop.errors import DriftloopError

    with pytest.raises(DriftloopError, match="not a DVC project"):
        with training_lock(tmp_path, HOLDER):
            pass
    assert not (tmp_path / ".dvc").exists()


def test_a_training_deployment_cancels_a_second_concurrent_run(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.states import Completed, Pending

    from flows.deployments import build_deployments, deployment_names

    names = deployment_names("lock-model")
    deployments = {d.name: d for d in build_deployments(str(tmp_path), "lock-model")}
    for key in ("retrain", "manual"):
        deployment_id = deployments[names[key]].apply()
        with get_client(sync_client=True) as client:
            applied = client.read_deployment(deployment_id)
            assert applied.global_concurrency_limit is not None and applied.global_concurrency_limit.limit == 1
            assert applied.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
            first, second, third = (client.create_flow_run_from_deployment(deployment_id) for _ in range(3))
            assert client.set_flow_run_state(first.id, Pending()).state.is_pending()
            refused = client.set_flow_run_state(second.id, Pending()).state
            assert refused.is_cancelled() and "concurrency limit" in refused.message, refused
            # once the first run is over, the slot is free again
            client.set_flow_run_state(first.id, Completed(), force=True)
            assert client.set_flow_run_state(third.id, Pending()).state.is_pending(), key
