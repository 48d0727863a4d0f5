"""The rebuild's parts on a small real project: what registration pushes, the champion it restores,
how it orders stages and which inputs count as lineage. The full rebuild (a real `dvc repro` in a
fresh clone) is tests/e2e/test_rebuild.py."""

from __future__ import annotations

import json
import shutil

import pytest

from driftloop.rebuild import RebuildError, _restore_champion, compare_lineage, stage_order
from driftloop.registry import GtoRegistry, RegistryError
from driftloop.release import register_package

LOCK = {
    "snapshot": {"deps": {"tasks/snapshot.py": "a"}, "outs": {"data/snapshot": "s.dir"}, "params": {"params.yaml": {"data": 1}}},
    "train": {"deps": {"tasks/train.py": "b", "data/features": "f.dir"}, "outs": {"models": "m.dir"},
              "params": {"params.yaml": {"train.seed": 0}}},
    "features": {"deps": {"data/snapshot": "s.dir", "tasks/features.py": "c"}, "outs": {"data/features": "f.dir"},
                 "params": {}},
    "gate": {"deps": {"models/candidates.json": "x", "champion": "h.dir"}, "outs": {"reports/gate.json": "g"}, "params": {}},
}  # fmt: skip


def test_stage_order_follows_data_and_finds_the_source_stages():
    order, sources = stage_order(LOCK)
    assert sources == ["snapshot"]
    assert order.index("snapshot") < order.index("features") < order.index("train") < order.index("gate")


def test_the_snapshot_and_everything_upstream_of_it_is_pulled():
    """A params check ahead of the snapshot is pulled with it; without a snapshot stage, the sources are."""
    lock = {"params": {"deps": {"params.yaml": "p"}, "outs": {"reports/params.json": "q"}, "params": {}},
            **LOCK, "snapshot": {**LOCK["snapshot"], "deps": {"tasks/snapshot.py": "a", "reports/params.json": "q"}}}  # fmt: skip
    order, pulled = stage_order(lock)
    assert pulled == ["params", "snapshot"] and order[:2] == pulled
    renamed = {("cut" if k == "snapshot" else k): v for k, v in LOCK.items()}
    renamed["cut"] = {**LOCK["snapshot"], "outs": {"data/cut": "s.dir"}}
    renamed["features"] = {**LOCK["features"], "deps": {"data/cut": "s.dir"}}
    assert stage_order(renamed)[1] == ["cut"]  # no snapshot stage: the stages that read no other stage's output


def test_lineage_counts_inputs_no_stage_produces_and_params():
    same = compare_lineage(LOCK, LOCK)
    assert all(c.passed for c in same)
    rebuilt = {k: {**v, "deps": dict(v["deps"]), "params": {f: dict(p) for f, p in v["params"].items()}} for k, v in LOCK.items()}
    rebuilt["train"]["deps"]["data/features"] = "other.dir"  # a produced input: an output comparison, not lineage
    assert all(c.passed for c in compare_lineage(LOCK, rebuilt))
    rebuilt["gate"]["deps"]["champion"] = "another-champion.dir"  # scored against another champion
    rebuilt["train"]["params"]["params.yaml"]["train.seed"] = 1
    failed = {c.subject: c.reason for c in compare_lineage(LOCK, rebuilt) if not c.passed}
    assert set(failed) == {"gate", "train"}
    assert "champion" in failed["gate"] and "train.seed" in failed["train"]


def test_register_pushes_every_cached_output_of_the_commit_and_refuses_a_partial_cache(project):
    project.build("v1")
    registry = GtoRegistry(project.root, "flight-delay")
    commit = registry.producing_commit()
    objects = registry.lock_objects(commit)
    assert list(objects) == ["artifacts/model"] and objects["artifacts/model"].endswith(".dir")
    assert registry.push(commit) == 7  # the manifest and six files
    assert registry.push(commit) == 0  # already there
    shutil.rmtree(project.root / ".dvc" / "cache")
    shutil.rmtree(project.remote)
    project.remote.mkdir()
    with pytest.raises(RegistryError, match="local DVC cache lacks artifacts/model"):
        registry.push(commit)


def test_the_champion_a_build_scored_is_restored_from_the_registry(project):
    project.build("v1")
    plane = project.plane("http://127.0.0.1:9")
    out = register_package(plane.registry, project.root / "artifacts" / "model")
    clone = project.tmp / "clone"
    card = {"champion": {"lineage_id": out.lineage_id}}
    assert _restore_champion(plane.registry, card, clone) == out.version
    assert (clone / "champion" / "package" / "model.onnx").read_bytes() == (project.packages / "v1" / "model.onnx").read_bytes()
    assert _restore_champion(plane.registry, {"champion": None}, project.tmp / "c2") is None
    with pytest.raises(RebuildError, match="no registered version carries"):
        _restore_champion(plane.registry, {"champion": {"lineage_id": "nope"}}, project.tmp / "c3")


def test_compare_package_bit_identical_within_tolerance_and_not(tmp_path):
    from driftloop.rebuild import compare_package
    from serving.testing import build_test_package

    a = build_test_package(tmp_path / "a", version_weight=1.0)
    b = build_test_package(tmp_path / "b", version_weight=1.0)  # the same build again
    c = build_test_package(tmp_path / "c", version_weight=1.5)  # another model
    card = json.loads((a / "model_card.json").read_text())
    same, diff = compare_package(a, b, b / "model.onnx", [], card)
    assert diff == 0.0 and all(ch.passed for ch in same)
    other, diff = compare_package(a, c, c / "model.onnx", [], card)
    failed = {ch.subject or ch.name: ch.reason for ch in other if not ch.passed}
    assert diff > 1e-3 and "scores" in failed
    assert "not bit-identical" in failed["model.onnx"] and "score column comes from model.onnx" in failed["reference.parquet"]


def test_lineage_compares_the_params_the_package_was_built_with_and_fails_stages_not_rerun():
    """The README slip: dvc.lock committed, the edited params.yaml not. The card's params (what the
    package was built from) differ from the commit's params.yaml, and a rebuild that stopped early
    leaves the commit's own lock entries, which must not count as equal."""
    from driftloop.rebuild import compare_built_params

    built = {"data": {"window": {"start": "2013-04-01"}}, "train": {"seed": 42}}
    commit = {"data": {"window": {"start": "2013-01-01"}}, "train": {"seed": 42}}
    check = compare_built_params(built, commit)
    assert not check.passed and "data.window.start: built with '2013-04-01', commit has '2013-01-01'" in check.reason
    assert "train.seed" not in check.reason
    assert compare_built_params(built, built).passed
    stopped = {c.subject: c for c in compare_lineage(LOCK, LOCK, not_rerun={"features", "train", "gate"})}
    assert stopped["snapshot"].passed and not any(stopped[s].passed for s in ("features", "train", "gate"))
    assert "not rebuilt" in stopped["train"].reason
