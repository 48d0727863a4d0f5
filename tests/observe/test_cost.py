"""Cost per prediction: CPU seconds per 1,000 predictions per version, measured by the server and on /metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import ReleaseParams
from driftloop.release.analysis import _read_cost, cost_check
from driftloop.release.client import ServerClient
from serving.app import create_app
from serving.config import ServeSettings
from serving.metrics import ServerMetrics
from serving.testing import build_test_package, running_server, synthetic_rows, v2_payload

MODEL = "flight_delay"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def test_shared_cpu_is_split_per_prediction_and_the_totals_add_up_to_the_process():
    m = ServerMetrics()
    m.record_batch("m", "1", rows=300, run_s=0.01, cpu_s=0.03)
    m.record_batch("m", "2", rows=100, run_s=0.01, cpu_s=0.05)
    cost = m.set_cost(process_cpu_s=0.48)  # 0.08 s inference + 0.40 s shared over 400 rows = 1 ms per row
    assert cost[("m", "1")] == pytest.approx((0.1, 1.1)) and cost[("m", "2")] == pytest.approx((0.5, 1.5))
    assert 300 * cost[("m", "1")][1] / 1000 + 100 * cost[("m", "2")][1] / 1000 == pytest.approx(0.48)
    assert ServerMetrics().set_cost(1.0) == {}  # nothing served, nothing to divide


@pytest.mark.slow
def test_a_version_that_computes_more_costs_more_on_metrics(tmp_path):
    """Version 2 adds 32 score-neutral 512 x 512 matmuls per row: far more CPU per prediction by construction
    (with 8 the ratio to version 1 was 4.3x-6.8x under load, too near the 5x asserted)."""
    repo = tmp_path / "repo"
    build_test_package(repo / MODEL / "1", model_name=MODEL, version_weight=1.0)
    body = v2_payload(synthetic_rows(20, seed=5))
    with running_server(create_app(ServeSettings(repository=repo))) as base, httpx.Client(base_url=base) as client:
        build_test_package(repo / MODEL / "2", model_name=MODEL, version_weight=1.0, slow=True, slow_layers=32,
                           slow_width=512)  # fmt: skip
        assert client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}}).status_code == 200
        for version in ("1", "2"):
            for _ in range(10):
                assert client.post(f"/v2/models/{MODEL}/versions/{version}/infer", json=body).status_code == 200
        text = client.get("/metrics").text
        server = ServerClient(base)
        try:  # the canary analysis reads the same figures, keyed by registry version
            cost = _read_cost(None, server, MODEL, "v0.0.1", "v0.0.2")
        finally:
            server.close()
    got = samples(text)

    def value(name: str, version: str, **labels: str) -> float:
        return got[(name, tuple(sorted({"model": MODEL, "version": version, **labels}.items())))]

    for version in ("1", "2"):
        assert value("driftloop_predictions_total", version) == 200
        own = value("driftloop_cpu_seconds_per_1k_predictions", version, part="inference")
        assert own == pytest.approx(1000 * value("driftloop_inference_cpu_seconds_total", version) / 200)
        assert own > 0 and value("driftloop_cpu_seconds_per_1k_predictions", version, part="total") >= own
    own = {v: value("driftloop_cpu_seconds_per_1k_predictions", v, part="inference") for v in ("1", "2")}
    total = {v: value("driftloop_cpu_seconds_per_1k_predictions", v, part="total") for v in ("1", "2")}
    assert own["2"] > 5 * own["1"], own
    assert total["1"] - own["1"] == pytest.approx(total["2"] - own["2"])  # the shared part is the same per prediction
    assert ("process_cpu_seconds_total", ()) in got
    assert cost["v0.0.2"] > cost["v0.0.1"] > 0
    capped = cost_check(cost, "v0.0.1", "v0.0.2", ReleaseParams(max_cpu_cost_ratio=1.0))
    assert not capped.passed and capped.value == pytest.approx(cost["v0.0.2"] / cost["v0.0.1"])
    report = cost_check(cost, "v0.0.1", "v0.0.2", ReleaseParams())
    assert report.passed and "advisory" in report.reason and "vs stable" in report.reason


def test_cost_check_reports_by_default_and_decides_only_when_capped():
    cost = {"v0.0.1": 0.2, "v0.0.2": 0.3}
    assert cost_check(cost, "v0.0.1", "v0.0.2", ReleaseParams(max_cpu_cost_ratio=1.6)).passed
    assert not cost_check(cost, "v0.0.1", "v0.0.2", ReleaseParams(max_cpu_cost_ratio=1.4)).passed
    missing = cost_check({"v0.0.2": 0.3}, "v0.0.1", "v0.0.2", ReleaseParams(max_cpu_cost_ratio=2))
    assert not missing.passed and missing.value is None  # a cap with nothing to compare: no verdict = roll back
    assert cost_check({}, None, "v0.0.2", ReleaseParams()).passed
    with pytest.raises(ValueError, match="max_cpu_cost_ratio"):
        ReleaseParams(max_cpu_cost_ratio=0.5)
