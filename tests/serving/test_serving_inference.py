"""Valid requests: the server answers exactly what session.run gives, and names the version."""

from __future__ import annotations

import numpy as np
import pytest

from serving.testing import records_payload, score_rows, v2_payload

pytestmark = pytest.mark.slow

MODEL = "flight_delay"


def _expected(client, frame):
    return score_rows(client.package / "model.onnx", frame)[:, 0]


@pytest.mark.parametrize("nested", [False, True])
def test_v2_infer_matches_session_run(shared_server, rows, nested):
    r = shared_server.post(f"/v2/models/{MODEL}/infer", json=v2_payload(rows, nested=nested))
    assert r.status_code == 200, r.text
    body = r.json()
    out = body["outputs"][0]
    assert out["name"] == "probability" and out["datatype"] == "FP32" and out["shape"] == [len(rows), 1]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32), _expected(shared_server, rows))
    assert body["model_name"] == MODEL and body["model_version"] == "1"
    assert body["lineage_id"] == r.headers["x-lineage-id"] == "test-flight_delay-w1"
    assert r.headers["x-model-name"] == MODEL and r.headers["x-model-version"] == "1"
    assert body["id"] == r.headers["x-request-id"]


def test_v2_infer_on_explicit_version_and_fp64(shared_server, rows):
    payload = v2_payload(rows)
    for tensor in payload["inputs"]:
        if tensor["datatype"] == "FP32":
            tensor["datatype"] = "FP64"
    r = shared_server.post(
        f"/v2/models/{MODEL}/versions/1/infer", json=payload, headers={"x-request-id": "abc-1"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-1" and r.json()["id"] == "abc-1"
    np.testing.assert_array_equal(
        np.asarray(r.json()["outputs"][0]["data"], np.float32), _expected(shared_server, rows)
    )


@pytest.mark.parametrize("drop_null", [False, True])
def test_records_predict_matches_session_run(shared_server, rows, drop_null):
    r = shared_server.post(f"/v1/models/{MODEL}:predict", json=records_payload(rows, drop_null=drop_null))
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_array_equal(np.asarray(body["predictions"], np.float32), _expected(shared_server, rows))
    assert (
        body["model_name"] == MODEL
        and body["model_version"] == "1"
        and body["lineage_id"] == "test-flight_delay-w1"
    )
    assert body["request_id"] == r.headers["x-request-id"]


def test_single_row(shared_server, rows):
    one = rows.iloc[:1]
    r = shared_server.post(f"/v1/models/{MODEL}:predict", json=records_payload(one))
    assert r.status_code == 200
    assert np.float32(r.json()["predictions"][0]) == _expected(shared_server, one)[0]


def test_metadata_health_openapi_metrics(shared_server, rows):
    assert shared_server.get("/v2/health/live").json() == {"live": True}
    assert shared_server.get("/v2/health/ready").status_code == 200
    meta = shared_server.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert {"name": "carrier", "datatype": "BYTES", "shape": [-1, 1]} in meta["inputs"]
    assert meta["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
    assert shared_server.get(f"/v2/models/{MODEL}/versions/1").json()["model_version"] == "1"
    assert shared_server.get(f"/v2/models/{MODEL}/versions/9").status_code == 404
    assert shared_server.get("/v2/models/nope").status_code == 404
    assert shared_server.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True
    spec = shared_server.get("/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"] and "/v1/models/{name}:predict" in spec["paths"]
    assert "InferenceRequest" in spec["components"]["schemas"]
    # its own scoring request: the metrics below must not depend on which tests ran first (pytest -n)
    assert shared_server.post(f"/v2/models/{MODEL}/infer", json=v2_payload(rows.iloc[:2])).status_code == 200
    text = shared_server.get("/metrics").text
    for name in (
        "driftloop_requests_total",
        "driftloop_request_latency_seconds",
        "driftloop_batch_rows",
        "driftloop_queue_rows",
        "driftloop_loaded_versions",
        "driftloop_score",
    ):
        assert name in text
    assert 'driftloop_loaded_versions{model="flight_delay"} 1.0' in text
    assert 'endpoint="/v2/models/{name}/infer"' in text


def test_api_key(make_repo, start_server, rows):
    client = start_server(make_repo(), api_key="s3cret")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    payload = records_payload(rows.iloc[:2])
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).status_code == 401
    assert (
        client.post(f"/v1/models/{MODEL}:predict", json=payload, headers={"x-api-key": "wrong"}).status_code
        == 401
    )
    assert client.get("/metrics").status_code == 401
    assert client.get(f"/v2/models/{MODEL}").status_code == 401
    assert (
        client.post(f"/v1/models/{MODEL}:predict", json=payload, headers={"x-api-key": "s3cret"}).status_code
        == 200
    )
    ok = client.post(f"/v1/models/{MODEL}:predict", json=payload, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_the_data_plane_knows_nothing_of_http():
    """serving.dataplane (and what it builds on) imports no web framework: routes translate HTTP to it."""
    import ast
    from pathlib import Path

    import serving

    root = Path(serving.__file__).parent
    for module in ("dataplane", "validation", "wire", "stats", "batcher", "repository", "metrics"):
        tree = ast.parse((root / f"{module}.py").read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        web = [n for n in names if n.split(".")[0] in {"fastapi", "starlette", "uvicorn", "httpx"} or n == "serving.http"]
        assert not web, (module, web)


def test_every_scoring_endpoint_is_on_the_fast_path(tmp_path):
    from driftloop.protocol import SCORING_ENDPOINTS
    from serving.app import create_app
    from serving.config import ServeSettings

    app = create_app(ServeSettings(repository=tmp_path))
    assert sorted(r.path for r, _ in app.state.fast_routes) == sorted(SCORING_ENDPOINTS)
