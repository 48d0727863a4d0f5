"""Stage `optimize`: pruning removes units, INT8 is really INT8, every candidate keeps the signature."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from driftloop.config import OptimizeParams
from driftloop.families import FAMILIES, Candidate, CandidateContext
from driftloop.mlp import MLP, predict_mlp, prune_mlp
from driftloop.onnx_graph import run_graph
from driftloop.schema import OUTPUT
from tasks.gate import measure_speed
from tasks.optimize import build_candidates, candidate_table
from tests.conftest import default_dataset

DATASET = default_dataset()
FEATURES, to_onnx_feeds = DATASET.feature_names, DATASET.to_onnx_feeds


@pytest.fixture(scope="module")
def candidates(exported, trained, splits, params, train_params):
    """Every family's candidates, through the optimize stage's loop: {name: (graph, {"parent", "how"})}."""
    opt = OptimizeParams(**params["optimize"])
    contexts = {
        name: CandidateContext(fitted=trained[name], graphs=exported, train=splits["train"], valid=splits["valid"],
                               optimize=opt, params=getattr(train_params, name), seed=0, opset=18)  # fmt: skip
        for name in trained
    }
    return {n: (c.graph, {"parent": c.parent, "how": c.how}) for n, c in build_candidates(contexts).items()}


def test_every_family_contributes_candidates(candidates):
    assert {n.split("_")[0] for n in candidates} == set(FAMILIES)
    assert {"hgb_fp32", "logreg_fp32", "mlp_fp32", "mlp_int8", "mlp_pruned_int8"} <= set(candidates)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_every_candidate_keeps_the_signature(candidates, exported):
    for name, (graph, meta) in candidates.items():
        assert [i.name for i in graph.graph.input] == list(FEATURES), name
        assert [o.name for o in graph.graph.output] == [OUTPUT], name
        assert meta["parent"] in exported


def test_int8_candidates_are_quantized(candidates):
    for name in ("mlp_int8", "mlp_pruned_int8"):
        ops = _ops(candidates[name][0])
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
    assert "DynamicQuantizeLinear" in _ops(candidates["mlp_int8_dynamic"][0]) or "MatMulInteger" in _ops(
        candidates["mlp_int8_dynamic"][0]
    )
    assert "QuantizeLinear" not in _ops(candidates["mlp_fp32"][0])


def test_int8_stays_close_to_fp32(candidates, splits):
    feeds = to_onnx_feeds(splits["test"])
    fp32 = run_graph(candidates["mlp_fp32"][0], feeds)
    int8 = run_graph(candidates["mlp_int8"][0], feeds)
    assert np.percentile(np.abs(fp32 - int8), 99) < 0.05


def test_static_int8_is_batch_invariant(candidates, splits):
    feeds = to_onnx_feeds(splits["test"].head(256))
    batch = run_graph(candidates["mlp_int8"][0], feeds)
    alone = np.array([run_graph(candidates["mlp_int8"][0], {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(0, 256, 31)])
    assert np.max(np.abs(alone - batch[::31])) == 0.0


def test_structured_pruning_removes_units_and_keeps_the_rest():
    torch.manual_seed(0)
    net = MLP(10, [8, 6])
    pruned = prune_mlp(net, 0.5)
    assert pruned.hidden == [4, 3]
    assert [tuple(lin.weight.shape) for lin in pruned.linears()] == [(4, 10), (3, 4), (1, 3)]
    # zeroing the removed units of the original network gives the same function as the pruned one
    with torch.no_grad():
        l1, l2, l3 = net.linears()
        keep1 = [i for i in range(8) if any(torch.equal(l1.weight[i], w) for w in pruned.linears()[0].weight)]
        mask1 = torch.zeros(8, dtype=torch.bool)
        mask1[keep1] = True
        keep2 = [j for j in range(6) if any(torch.allclose(l2.weight[j][mask1], w) for w in pruned.linears()[1].weight)]
        assert len(keep1) == 4 and len(keep2) == 3
        l1.weight[~mask1] = 0
        l1.bias[~mask1] = 0
        mask2 = torch.zeros(6, dtype=torch.bool)
        mask2[keep2] = True
        l2.weight[~mask2] = 0
        l2.bias[~mask2] = 0
    x = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    np.testing.assert_allclose(predict_mlp(pruned, x), predict_mlp(net, x), atol=1e-6)


def test_pruned_graph_is_physically_smaller(candidates):
    def weights(graph):
        return sum(int(np.prod(t.dims)) for t in graph.graph.initializer)

    assert weights(candidates["mlp_pruned"][0]) < 0.6 * weights(candidates["mlp_fp32"][0])


def test_every_candidate_is_kept_and_timed_by_the_gate_only(candidates, splits, params, tmp_path):
    """optimize's table has no machine-dependent field and drops nothing (dvc.lock's hash of
    models/candidates is the same on every machine); the gate's `measure_speed` times each graph."""
    small = {k: Candidate(candidates[k][0], "mlp", candidates[k][1]["how"]) for k in ("mlp_fp32", "mlp_int8", "mlp_int8_dynamic")}
    table = candidate_table(small)
    assert list(table) == list(small)  # mlp_int8_dynamic stays, however fast or slow
    for name, row in table.items():
        assert set(row) == {"family", "parent", "how", "file", "size_bytes"}
        assert row["size_bytes"] == len(small[name].graph.SerializeToString()) and row["family"] == "mlp"
        onnx.save_model(small[name].graph, tmp_path / row["file"])
    opt = OptimizeParams(**params["optimize"]).model_copy(update={"latency_runs": 20, "throughput_runs": 2, "throughput_batch": 256})
    timed = measure_speed(tmp_path, table, splits["test"].head(512), opt)
    for name, row in timed.items():
        assert row | table[name] == row and 0 < row["p50_ms"] <= row["p99_ms"] and row["rows_per_s"] > 0, name
        assert row["latency_clock"] == "wall"


def test_latency_clock_cpu_times_single_rows_on_the_thread_cpu_clock(candidates, splits, params, monkeypatch, tmp_path):
    import itertools

    import driftloop.bench

    ticks = itertools.count()
    monkeypatch.setitem(driftloop.bench.CLOCKS, "cpu", lambda: next(ticks) * 1e-3)  # 1 ms per reading: by construction
    one = {"mlp_fp32": Candidate(candidates["mlp_fp32"][0], "mlp", candidates["mlp_fp32"][1]["how"])}
    table = candidate_table(one)
    onnx.save_model(one["mlp_fp32"].graph, tmp_path / table["mlp_fp32"]["file"])
    opt = OptimizeParams(**{**params["optimize"], "latency_clock": "cpu", "latency_runs": 30, "throughput_runs": 1})
    row = measure_speed(tmp_path, table, splits["test"].head(256), opt)["mlp_fp32"]
    assert row["latency_clock"] == "cpu" and row["p50_ms"] == pytest.approx(1.0) and row["p99_ms"] == pytest.approx(1.0)
