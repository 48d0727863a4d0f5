"""Clients nobody on this project wrote work unchanged: Triton's `tritonclient.http` and KServe's v2 REST client."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import numpy as np
import pytest

from driftloop.schema import NUMPY_DTYPE, feeds_for
from serving.testing import FEATURES, TEST_INPUTS, score_rows, v2_payload

DATATYPES = {s.name: s.datatype for s in TEST_INPUTS}
datatype_of = DATATYPES.__getitem__


def to_onnx_feeds(frame):
    return feeds_for(frame, TEST_INPUTS)

tritonhttp = pytest.importorskip("tritonclient.http")
kserve = pytest.importorskip("kserve")

MODEL = "flight_delay"


def _triton_inputs(frame, binary: bool):
    feeds = to_onnx_feeds(frame)
    inputs = []
    for name in FEATURES:
        dtype = datatype_of(name)
        tensor = tritonhttp.InferInput(name, list(feeds[name].shape), dtype)
        tensor.set_data_from_numpy(feeds[name].astype(NUMPY_DTYPE[dtype]), binary_data=binary)
        inputs.append(tensor)
    return inputs


def _client(shared_server):
    return tritonhttp.InferenceServerClient(str(shared_server.base_url).removeprefix("http://"), network_timeout=30)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_binary_and_json_both_ways(shared_server, rows, binary):
    """binary_data=True sends raw tensors after the JSON header and reads raw FP32 back.

    JSON has no NaN (tritonclient would write the non-JSON `NaN`), so the JSON case has no nulls.
    """
    frame = rows.iloc[:17] if binary else rows.dropna().iloc[:5]
    assert binary is False or frame[list(FEATURES)].isna().any().any()
    client = _client(shared_server)
    outputs = [tritonhttp.InferRequestedOutput("probability", binary_data=binary)]
    result = client.infer(MODEL, _triton_inputs(frame, binary), outputs=outputs, request_id="t-1")
    expected = score_rows(shared_server.package / "model.onnx", frame)
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    assert result.get_response()["model_version"] == "1"
    # No outputs named: tritonclient asks for every output as binary (`binary_data_output`).
    result = client.infer(MODEL, _triton_inputs(frame, True), model_version="1")
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    client.close()


def test_tritonclient_gzip_both_ways(shared_server, rows):
    frame = rows.dropna()
    client = _client(shared_server)
    result = client.infer(
        MODEL,
        _triton_inputs(frame, False),
        outputs=[tritonhttp.InferRequestedOutput("probability", binary_data=False)],
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )
    expected = score_rows(shared_server.package / "model.onnx", frame)
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    client.close()
    # A large JSON answer is compressed when asked for, and the response says so.
    big = v2_payload(rows.iloc[[i % 20 for i in range(200)]])
    r = shared_server.post(f"/v2/models/{MODEL}/infer", json=big, headers={"accept-encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert len(r.json()["outputs"][0]["data"]) == 200  # httpx inflated it


def test_tritonclient_model_config_and_statistics(shared_server, rows):
    client = _client(shared_server)
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in config["input"]] == list(FEATURES)
    types = {i["name"]: i["data_type"] for i in config["input"]}
    assert types["carrier"] == "TYPE_STRING" and types["hour"] == "TYPE_INT64" and types["temp"] == "TYPE_FP32"
    assert config["output"] == [{"name": "probability", "data_type": "TYPE_FP32", "dims": [1]}]
    assert config["max_batch_size"] == 500  # the server's max_rows
    assert config["version_policy"] == {"specific": {"versions": [1]}}

    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    for _ in range(3):
        client.infer(MODEL, _triton_inputs(rows.iloc[:4], True))
    stats = client.get_inference_statistics(MODEL, model_version="1")["model_stats"][0]
    assert stats["name"] == MODEL and stats["version"] == "1"
    assert stats["inference_count"] - before["inference_count"] == 12  # rows
    phases = stats["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] - before["inference_stats"][phase]["count"] == 3, phase
    assert phases["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert phases["success"]["ns"] >= phases["compute_infer"]["ns"]
    assert stats["execution_count"] >= 3 and any(b["batch_size"] >= 4 for b in stats["batch_stats"])
    client.close()


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_rest_client_v2_infer(shared_server, rows, binary):
    """KServe's SDK puts `model_name` and an `id` into the body; both are protocol fields. With
    binary inputs it sends `application/octet-stream` and the binary tensor extension."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    frame = rows.iloc[:5]
    feeds = to_onnx_feeds(frame)
    inputs = []
    for name in FEATURES:
        tensor = InferInput(name=name, shape=list(feeds[name].shape), datatype=datatype_of(name))
        tensor.set_data_from_numpy(feeds[name], binary_data=binary)
        inputs.append(tensor)
    request = InferRequest(model_name=MODEL, infer_inputs=inputs, request_id="k-1")

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await client.infer(str(shared_server.base_url), request, model_name=MODEL)
        finally:
            await client.close()

    response = asyncio.run(call())
    expected = score_rows(shared_server.package / "model.onnx", frame)
    np.testing.assert_allclose(response.outputs[0].as_numpy().reshape(-1, 1), expected, rtol=1e-6)
    assert response.model_name == MODEL and response.id == "k-1"


def test_protocol_fields_accepted_others_refused(shared_server, rows):
    body = v2_payload(rows.iloc[:2])
    ok = {**body, "model_name": MODEL, "model_version": "1", "id": "x", "parameters": {"priority": 0},
          "outputs": [{"name": "probability", "parameters": {"binary_data": False}}]}  # fmt: skip
    assert shared_server.post(f"/v2/models/{MODEL}/infer", json=ok).status_code == 200
    r = shared_server.post(f"/v2/models/{MODEL}/infer", json={**body, "model_name": "other"})
    assert r.status_code == 400 and "model_name" in r.json()["error"]
    r = shared_server.post(f"/v2/models/{MODEL}/infer", json={**body, "priority": 1})
    assert r.status_code == 422 and "priority" in r.json()["error"]


def test_gzip_bomb_is_413_on_its_decompressed_size(shared_server, rows):
    """256 KiB limit: a 1 MiB body of spaces compresses to about 1 KiB and is refused once inflated."""
    bomb = gzip.compress(b"{" + b" " * (1 << 20) + b"}")
    assert len(bomb) < 4096
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    r = shared_server.post(f"/v2/models/{MODEL}/infer", content=bomb, headers=headers)
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    r = shared_server.post(f"/v2/models/{MODEL}/infer", content=b"\x1f\x8bnot gzip", headers=headers)
    assert r.status_code == 400 and "corrupt" in r.json()["error"]
    small = gzip.compress(httpx.Request("POST", "/", json=v2_payload(rows.iloc[:3])).content)
    assert shared_server.post(f"/v2/models/{MODEL}/infer", content=small, headers=headers).status_code == 200


def test_binary_and_json_rows_land_alike_in_the_prediction_log(start_server, make_repo, rows, tmp_path):
    """Binary string tensors decode to fixed-width unicode arrays; the log holds the same strings."""
    import datetime as dt

    from driftloop.predlog import read_log
    from serving.testing import v2_binary_payload

    client = start_server(make_repo(), log_dir=tmp_path / "log", flush_interval_s=60)
    frame = rows.iloc[:6]
    body, length = v2_binary_payload(frame)
    headers = {"inference-header-content-length": str(length), "x-request-id": "bin"}
    assert client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers).status_code == 200
    assert client.post(f"/v2/models/{MODEL}/infer", json=v2_payload(frame), headers={"x-request-id": "json"}).status_code == 200
    start_server.stop()  # flushes the log
    now = dt.datetime.now(dt.UTC)
    log = read_log(tmp_path / "log", MODEL, now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    by_id = {rid: part.sort_values("row") for rid, part in log.groupby("request_id")}
    for column in ("carrier", "origin", "dest", "hour", "temp"):
        np.testing.assert_array_equal(by_id["bin"][column].to_numpy(), by_id["json"][column].to_numpy())
    assert list(by_id["bin"]["carrier"]) == list(frame["carrier"])
    np.testing.assert_allclose(by_id["bin"]["score"], by_id["json"]["score"])
