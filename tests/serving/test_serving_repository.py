"""Load, refuse, hot-swap and split traffic between versions."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading

import httpx
import numpy as np
import pytest

from driftloop.package import write_sha256sums
from serving.repository import LoadRefused, ModelNotFound, ModelRepository
from serving.testing import TEST_INPUTS, records_payload, score_rows

MODEL = "flight_delay"


def test_load_route_and_traffic_unit(make_repo):
    repo = ModelRepository(make_repo({"1": "v1", "2": "v2"}))
    assert repo.available() == {MODEL: ["1", "2"]}
    repo.load(MODEL, "1")
    assert repo.route(MODEL, "r1").version == "1"
    repo.load(MODEL, "2")  # latest mode: the newest load takes 100%
    assert {repo.route(MODEL, f"r{i}").version for i in range(50)} == {"2"}
    assert repo.traffic(MODEL) == {"2": 100.0}
    assert repo.set_traffic(MODEL, {"1": 90, "2": 10}) == {"1": 90.0, "2": 10.0}
    picks = [repo.route(MODEL, f"req-{i}").version for i in range(4000)]
    share = picks.count("2") / len(picks)
    assert 0.07 < share < 0.13
    assert all(repo.route(MODEL, f"req-{i}").version == picks[i] for i in range(200))  # sticky
    assert repo.route(MODEL, "any", version="1").version == "1"
    with pytest.raises(ModelNotFound):
        repo.set_traffic(MODEL, {"3": 100})
    with pytest.raises(ValueError):
        repo.set_traffic(MODEL, {"1": 0, "2": 0})
    with pytest.raises(ValueError):
        repo.set_traffic(MODEL, {"1": -1})
    repo.unload(MODEL, "1")
    assert repo.traffic(MODEL) == {"2": 100.0}
    assert repo.set_traffic(MODEL, None) == {"2": 100.0}
    repo.unload(MODEL)
    assert not repo.ready()
    with pytest.raises(ModelNotFound):
        repo.route(MODEL, "x")


def test_refusals_unit(make_repo, caplog):
    root = make_repo({"1": "v1", "2": "v1", "3": "v1", "4": "v1"})
    repo = ModelRepository(root)
    repo.load(MODEL, "1")
    # 2: model.onnx altered after packaging.
    onnx_path = root / MODEL / "2" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    # 3: a graph ONNX Runtime cannot load, with consistent sums.
    (root / MODEL / "3" / "model.onnx").write_bytes(b"\x08\x07not really onnx")
    write_sha256sums(root / MODEL / "3")
    # 4: a file missing.
    (root / MODEL / "4" / "reference.parquet").unlink()
    with caplog.at_level(logging.ERROR, logger="serving.repository"):
        for version, needle in (("2", "sha256"), ("3", "ONNX"), ("4", "reference.parquet"), ("9", "no such")):
            with pytest.raises(LoadRefused, match=needle):
                repo.load(MODEL, version)
    assert len(caplog.records) == 4 and all("refused to load" in r.message for r in caplog.records)
    assert repo.route(MODEL, "x").version == "1"
    states = {r["version"]: r for r in repo.index()}
    assert (
        states["1"]["state"] == "READY"
        and states["2"]["state"] == "UNAVAILABLE"
        and "sha256" in states["2"]["reason"]
    )


@pytest.mark.slow
def test_tampered_package_refused_over_http_old_keeps_serving(make_repo, start_server, rows, package_store):
    root = make_repo({"1": "v1", "2": "v2"})
    tampered = root / MODEL / "2" / "model.onnx"
    tampered.write_bytes(tampered.read_bytes().replace(b"driftloop", b"driftl00p"))
    client = start_server(root, models=[MODEL])
    # Start-up tries the latest (2), which is refused, and falls back to 1, which serves.
    assert client.get("/v2/health/ready").status_code == 200
    payload = records_payload(rows.iloc[:5])
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).json()["model_version"] == "1"
    r = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}})
    assert r.status_code == 400 and "sha256" in r.json()["error"]
    r = client.post(f"/v1/models/{MODEL}:predict", json=payload)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    expected = score_rows(package_store / "v1" / "model.onnx", rows.iloc[:5])[:, 0]
    np.testing.assert_array_equal(np.asarray(r.json()["predictions"], np.float32), expected)
    index = client.get("/v2/repository/index").json()
    assert [(i["version"], i["state"]) for i in index] == [("1", "READY"), ("2", "UNAVAILABLE")]


@pytest.mark.slow
def test_traffic_split_over_http(make_repo, start_server, rows):
    client = start_server(make_repo({"1": "v1", "2": "v2"}))
    assert (
        client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}}).status_code
        == 200
    )
    assert (
        client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}}).status_code
        == 200
    )
    r = client.post(f"/v2/repository/models/{MODEL}/traffic", json={"weights": {"1": 50, "2": 50}})
    assert r.status_code == 200 and r.json()["traffic_pct"] == {"1": 50.0, "2": 50.0}
    payload = records_payload(rows.iloc[:1])
    seen = collections.Counter()
    for i in range(100):
        r = client.post(f"/v1/models/{MODEL}:predict", json=payload, headers={"x-request-id": f"user-{i}"})
        again = client.post(
            f"/v1/models/{MODEL}:predict", json=payload, headers={"x-request-id": f"user-{i}"}
        )
        assert r.json()["model_version"] == again.json()["model_version"] == r.headers["x-model-version"]
        seen[r.json()["model_version"]] += 1
    assert seen["1"] > 25 and seen["2"] > 25
    bad = client.post(f"/v2/repository/models/{MODEL}/traffic", json={"weights": {"7": 100}})
    assert bad.status_code == 404
    assert (
        client.post(f"/v2/repository/models/{MODEL}/traffic", json={"weights": {"1": -5}}).status_code == 400
    )
    assert client.get(f"/v2/repository/models/{MODEL}/traffic").json()["traffic_pct"] == {
        "1": 50.0,
        "2": 50.0,
    }
    assert (
        client.post(
            f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": "1"}}
        ).status_code
        == 200
    )
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).json()["model_version"] == "2"
    assert client.post(f"/v2/repository/models/{MODEL}/unload").json()["unloaded"] == ["2"]
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).status_code == 404
    assert client.get("/v2/health/ready").status_code == 503


@pytest.mark.slow
def test_hot_swap_under_load_loses_nothing(make_repo, start_server, rows):
    client = start_server(make_repo({"1": "v1", "2": "v2"}), max_queue_delay_ms=0.5)
    client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}})
    base = str(client.base_url)
    payload = records_payload(rows.iloc[:3])
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    async def loop_requests():
        async with httpx.AsyncClient(base_url=base, timeout=30) as ac:

            async def worker():
                while not stop.is_set():
                    r = await ac.post(f"/v1/models/{MODEL}:predict", json=payload)
                    results.append((r.status_code, r.headers.get("x-model-version", "")))

            await asyncio.gather(*(worker() for _ in range(8)))

    thread = threading.Thread(target=lambda: asyncio.run(loop_requests()))
    thread.start()
    try:
        while len(results) < 100:
            threading.Event().wait(0.02)
        swap = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}})
        assert swap.status_code == 200
        n = len(results)
        while len(results) < n + 100:
            threading.Event().wait(0.02)
        assert (
            client.post(
                f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": "1"}}
            ).status_code
            == 200
        )
        reload = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}})
        assert reload.status_code == 200  # reloading the serving version is a hot swap too
        n = len(results)
        while len(results) < n + 100:
            threading.Event().wait(0.02)
    finally:
        stop.set()
        thread.join(30)
    statuses = collections.Counter(s for s, _ in results)
    assert statuses == {200: len(results)}, statuses
    versions = [v for _, v in results]
    assert versions[0] == "1" and versions[-1] == "2"
    first_v2 = versions.index("2")
    assert set(versions[first_v2 + 16 :]) == {"2"}  # after the swap (allowing the in-flight ones) only v2


def test_versions_sort_as_numbers_and_semver():
    from serving.repository import version_sort_key

    names = ["v0.0.10", "2", "v0.0.9", "10", "v0.1.0", "candidate", "1"]
    assert sorted(names, key=version_sort_key) == ["1", "2", "10", "v0.0.9", "v0.0.10", "v0.1.0", "candidate"]


def test_start_up_falls_back_to_the_newest_version_that_loads(make_repo):
    root = make_repo({"v0.0.9": "v1", "v0.0.10": "v2"})
    onnx_path = root / MODEL / "v0.0.10" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # the newest is tampered with
    repo = ModelRepository(root)
    assert [mv.version for mv in repo.load_all()] == ["v0.0.9"]
    assert repo.route(MODEL, "x").version == "v0.0.9"


def test_signature_datatype_that_the_graph_does_not_take_is_refused(make_repo):
    import json

    root = make_repo({"1": "v1", "2": "v1"})
    sig_path = root / MODEL / "2" / "signature.json"
    sig = json.loads(sig_path.read_text())
    next(s for s in sig["inputs"] if s["name"] == "hour")["datatype"] = "FP32"
    sig_path.write_text(json.dumps(sig))
    write_sha256sums(root / MODEL / "2")  # consistent sums: only the type check can catch it
    repo = ModelRepository(root)
    repo.load(MODEL, "1")
    with pytest.raises(LoadRefused, match="hour is FP32, the graph takes tensor\\(int64\\)"):
        repo.load(MODEL, "2")
    assert repo.route(MODEL, "x").version == "1"


@pytest.mark.slow
def test_the_openapi_document_follows_what_is_loaded(make_repo, start_server, tmp_path):
    """The document's models and `Record` columns come from the repository: a load after the first
    request shows in the next one (it was cached from the first request for good)."""
    root = tmp_path / "late"
    root.mkdir()
    client = start_server(root)
    before = client.get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert "properties" not in before  # nothing loaded: no columns to name
    make_repo({"1": "v1"}, name="late")
    assert client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}}).status_code == 200
    after = client.get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert list(after["properties"]) == [spec.name for spec in TEST_INPUTS]
