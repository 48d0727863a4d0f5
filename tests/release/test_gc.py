"""`driftloop gc` on a real git + DVC + GTO project: nothing a registered version or an open canary needs is
deleted, and the real run deletes exactly what the dry run listed."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from driftloop.lifecycle import plan_gc
from driftloop.model_repository import ServingState, version_number, write_state
from driftloop.predlog import read_log
from driftloop.schema import feeds_for
from serving.predlog import PredictionLog
from serving.testing import TEST_INPUTS, synthetic_rows
from tests.release.conftest import MODEL, folder_of, next_registry_second

pytestmark = pytest.mark.slow


def cache_objects(root: Path, commit_lock: dict[str, str]) -> set[Path]:
    """The cache files of every output in a commit's dvc.lock (a folder: its .dir manifest and each file)."""
    base = root / ".dvc" / "cache" / "files" / "md5"
    out = set()
    for md5 in commit_lock.values():
        obj = base / md5[:2] / md5[2:]
        out.add(obj)
        if md5.endswith(".dir") and obj.is_file():
            out |= {base / e["md5"][:2] / e["md5"][2:] for e in json.loads(obj.read_text())}
    return out


def log_day(log_dir: Path, day: dt.date, version: str, requests: int = 3) -> None:
    plog = PredictionLog(log_dir, flush_interval_s=3600)
    for k in range(requests):
        plog.append(model=MODEL, version=version, request_id=f"{day}-{version}-{k}",
                    feeds=feeds_for(synthetic_rows(2, seed=k), TEST_INPUTS), scores=np.full((2, 1), 0.5, np.float32),
                    latency_ms=1.0, service_ms=0.5, ts=dt.datetime.combine(day, dt.time(9, k), tzinfo=dt.UTC))  # fmt: skip
        plog.flush()


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[:2] not in ((".dvc", "tmp"),)
            and p.relative_to(root).parts[0] != ".git"}  # fmt: skip


def test_gc_spares_registered_versions_and_the_open_canary(project):
    root = project.root
    params = yaml.safe_load(project.params.read_text())
    log_dir = Path(params["release"]["log_dir"])
    repository = Path(params["release"]["repository"])
    params["monitor"] = {"log_dir": str(log_dir), "window_hours": 48}
    params["retention"] = {"log_days": 30, "keep_runs": 1}
    project.params.write_text(yaml.safe_dump(params))
    project.git("commit", "-qam", "gc params")

    plane = project.plane("http://127.0.0.1:9")
    v1 = project.register(plane, "v1")
    v2 = project.register(plane, "v2")
    project.build("inverted")  # built, never registered: garbage once it is not among the last keep_runs commits
    unregistered = plane.registry.lock_objects(project.git("rev-parse", "HEAD").strip())
    v3 = project.register(plane, "v3")
    plane.registry.assign("prod", v1, "first release")
    next_registry_second()
    plane.registry.assign("prod", v2, "promoted")  # v1 is now the rollback target
    plane.registry.assign("canary", v3, "canary under analysis")
    write_state(repository, ServingState(model=MODEL, stable=v2, canary=v3, weights={v2: 90.0, v3: 10.0}))
    for version, kind in ((v1, "v1"), (v2, "v2"), (v3, "v3"), ("v0.0.7", "failed")):
        shutil.copytree(project.packages / kind, folder_of(repository, version))
    today = dt.datetime.now(dt.UTC).date()
    log_day(log_dir, today - dt.timedelta(days=100), str(version_number(v1)))
    log_day(log_dir, today - dt.timedelta(days=1), str(version_number(v2)))
    log_day(log_dir, today, str(version_number(v3)))  # the canary's rows: its analysis reads them
    needed = set()
    for v in (v1, v2, v3):
        needed |= cache_objects(root, plane.registry.lock_objects(plane.registry.get(v).commit))
    garbage = cache_objects(root, unregistered) - needed
    assert needed and garbage and all(p.is_file() for p in needed | garbage)
    canary_rows = read_log(log_dir, MODEL, today, today + dt.timedelta(days=1))

    runner = CliRunner()
    dry = runner.invoke(app, ["gc", "--dry-run", "--root", str(root)])
    assert dry.exit_code == 0, dry.output
    assert "would free" in dry.output and "retire" in dry.output and "canary v0.0.3 open" in dry.output
    plan = plan_gc(root)
    before = files(root) | files(repository) | files(log_dir)
    assert files(root) | files(repository) | files(log_dir) == before  # the dry run touched nothing

    real = runner.invoke(app, ["gc", "--root", str(root)])
    assert real.exit_code == 0, real.output
    gone = before - (files(root) | files(repository) | files(log_dir))
    listed = set()
    for a in plan.actions:
        listed |= {a.path} if a.kind in ("dvc", "expire_labels", "finish") else {f for f in before if a.path in f.parents}
    assert gone == listed  # the real run deleted exactly what the dry run listed
    assert {a.kind for a in plan.actions} >= {"dvc", "retire", "expire", "compact"}
    # nothing a registered version or the open canary needs
    assert all(p.is_file() for p in needed), sorted(p for p in needed if not p.is_file())
    assert not any(p.is_file() for p in garbage)
    assert all(folder_of(repository, v).is_dir() for v in (v1, v2, v3))
    assert not folder_of(repository, "v0.0.7").exists()
    pd.testing.assert_frame_equal(read_log(log_dir, MODEL, today, today + dt.timedelta(days=1)), canary_rows)
    assert not (log_dir / MODEL / f"date={today - dt.timedelta(days=100)}").exists()
    for v in (v1, v2, v3):  # each registered version still comes back from the cache
        plane.registry.fetch(v, project.tmp / f"fetched-{v}")
