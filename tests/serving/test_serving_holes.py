"""The six bad-input holes of issue 10, each a kind, each closed: content type and cross-site
requests, duplicate keys, datatype ranges, one validation semantics at every batch size, clients
that hang up mid-body, traffic weights, and error messages without server paths."""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.schema import Signature, output_specs
from serving.testing import TEST_INPUTS, records_payload, v2_binary_payload, v2_payload
from serving.validation import InferenceRequest, Limits, RequestError, parse_v2, records_feeds, v2_feeds

MODEL = "flight_delay"
INFER = f"/v2/models/{MODEL}/infer"
PREDICT = f"/v1/models/{MODEL}:predict"
SIG = Signature(model_name=MODEL, lineage_id="x", inputs=TEST_INPUTS, outputs=output_specs())


def _post_raw(client, path, body: bytes, content_type: str | None = "application/json", **headers):
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(path, content=body, headers=headers)


# ---------------------------------------------------------------- 1. content type, cross-site
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_scoring_and_repository_refuse_non_json_types(shared_server, rows, content_type):
    for path, body in ((INFER, v2_payload(rows.iloc[:1])), (PREDICT, records_payload(rows.iloc[:1])),
                       (f"/v2/repository/models/{MODEL}/load", {"parameters": {"version": "1"}})):  # fmt: skip
        r = _post_raw(shared_server, path, orjson.dumps(body), content_type)
        assert r.status_code == 415 and "application/json" in r.json()["error"], (path, r.text)
    # Triton's client sends no Content-Type at all; JSON with charset and the binary type pass.
    for content_type in (None, "application/json; charset=utf-8", "application/octet-stream"):
        r = _post_raw(shared_server, PREDICT, orjson.dumps(records_payload(rows.iloc[:1])), content_type)
        assert r.status_code == 200, (content_type, r.text)


def test_cross_site_browser_requests_cannot_touch_the_repository(shared_server):
    host = urlsplit(str(shared_server.base_url)).netloc
    unload = f"/v2/repository/models/{MODEL}/unload"
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                    {"sec-fetch-site": "same-site", "origin": f"http://{host}"}):  # fmt: skip
        r = shared_server.post(unload, content=b"{}", headers={"content-type": "application/json", **headers})
        assert r.status_code == 403 and "other web sites" in r.json()["error"], (headers, r.text)
        traffic = shared_server.post(f"/v2/repository/models/{MODEL}/traffic", json={"weights": None}, headers=headers)
        assert traffic.status_code == 403
    assert shared_server.get(f"/v2/models/{MODEL}/ready").status_code == 200  # still loaded
    same = shared_server.get("/v2/repository/index", headers={"origin": f"http://{host}", "sec-fetch-site": "same-origin"})
    assert same.status_code == 200


# ---------------------------------------------------------------- 2. duplicate keys
def test_duplicate_keys_are_400_naming_the_key(shared_server, rows):
    record = orjson.dumps(records_payload(rows.iloc[:1]))
    dup_record = record.replace(b'{"carrier":', b'{"carrier":"AA","carrier":', 1)
    r = _post_raw(shared_server, PREDICT, dup_record)
    assert r.status_code == 400 and "'carrier'" in r.json()["error"], r.text
    many = orjson.dumps(records_payload(rows.iloc[[i % 20 for i in range(17)]]))
    dup_many = many.replace(b'"hour":', b'"hour":1,"hour":', 9)  # in 9 of 17 records
    r = _post_raw(shared_server, PREDICT, dup_many)
    assert r.status_code == 400 and "'hour'" in r.json()["error"], r.text

    tensor = orjson.dumps(v2_payload(rows.iloc[:3]))
    dup_name = tensor.replace(b'{"name":"dest"', b'{"name":"carrier","name":"dest"', 1)
    r = _post_raw(shared_server, INFER, dup_name)
    assert r.status_code == 400 and "'name'" in r.json()["error"], r.text
    dup_top = tensor.replace(b'{"inputs":', b'{"id":"a","id":"b","inputs":', 1)
    assert _post_raw(shared_server, INFER, dup_top).status_code == 400
    # Escapes and colons in strings take the exact path; a body without duplicates still scores.
    escaped = tensor.replace(b'"name":"carrier"', b'"name":"\\u0063arrier"', 1)
    assert _post_raw(shared_server, INFER, escaped).status_code == 200
    escaped_dup = dup_record.replace(b'"carrier":"AA"', b'"\\u0063arrier":"AA"', 1)
    assert _post_raw(shared_server, PREDICT, escaped_dup).status_code == 400
    # Colons inside strings: counted only when the body has more ':' than keys; still exact.
    colon = record.replace(b'"carrier":"', b'"carrier":"U:', 1)
    assert _post_raw(shared_server, PREDICT, colon).status_code == 200
    colon_dup = colon.replace(b'{"carrier":', b'{"origin":"X:Y","carrier":', 1)
    r = _post_raw(shared_server, PREDICT, colon_dup)
    assert r.status_code == 400 and "'origin'" in r.json()["error"], r.text
    v2_colon = tensor.replace(b'"data":["', b'"data":[":', 1)
    assert _post_raw(shared_server, INFER, v2_colon).status_code == 200
    # The binary extension's JSON header too.
    body, length = v2_binary_payload(rows.iloc[:3])
    extra = b'"name": "carrier", '
    dup_binary = body.replace(b'{"name": "dest"', b"{" + extra + b'"name": "dest"', 1)
    assert len(dup_binary) == len(body) + len(extra)
    r = _post_raw(shared_server, INFER, dup_binary, None, **{"inference-header-content-length": str(length + len(extra))})
    assert r.status_code == 400 and "'name'" in r.json()["error"], r.text
    r = _post_raw(shared_server, INFER, body, None, **{"inference-header-content-length": str(length)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"


# ---------------------------------------------------------------- 3. datatype ranges
@pytest.mark.parametrize(
    ("datatype", "value", "status"),
    [("INT32", 2**40, 400), ("INT32", 2**31 - 1, 200), ("INT32", -(2**31) - 1, 400), ("INT8", 300, 400),
     ("UINT8", -1, 400), ("UINT16", 65535, 200), ("INT64", 2**63, 400), ("UINT64", 2**63, 400)],
)  # fmt: skip
def test_declared_datatype_range_is_checked(shared_server, rows, datatype, value, status):
    payload = v2_payload(rows.iloc[:2])
    tensor = next(t for t in payload["inputs"] if t["name"] == "distance")
    tensor.update(datatype=datatype, data=[value, 500])
    r = shared_server.post(INFER, json=payload)
    assert r.status_code == status, r.text
    if status == 400:
        assert "inputs[distance]" in r.json()["error"] and datatype in r.json()["error"]


def test_fp32_declared_holding_an_fp64_value_is_refused(rows):
    payload = v2_payload(rows.iloc[:2])
    tensor = next(t for t in payload["inputs"] if t["name"] == "temp")
    tensor["data"][0] = 1e300
    for declared in ("FP32", "FP64"):
        tensor["datatype"] = declared
        request = InferenceRequest.model_validate(payload)
        with pytest.raises(RequestError, match=r"inputs\[temp\].*not finite"):
            v2_feeds(request, SIG, Limits())


# ---------------------------------------------------------------- 4. one semantics at every batch size
@pytest.mark.parametrize("n", [1, 16, 17, 40])
@pytest.mark.parametrize("column", ["hour", "temp"])
def test_booleans_are_not_numbers_at_any_batch_size(shared_server, rows, n, column):
    frame = rows.iloc[[i % 20 for i in range(n)]]
    v2 = v2_payload(frame)
    next(t for t in v2["inputs"] if t["name"] == column)["data"] = [True] * n
    r = shared_server.post(INFER, json=v2)
    assert r.status_code == 400 and f"inputs[{column}]" in r.json()["error"], (n, r.text)
    records = records_payload(frame)
    for record in records["instances"]:
        record[column] = False
    r = shared_server.post(PREDICT, json=records)
    assert r.status_code == 400 and column in r.json()["error"], (n, r.text)


_VALID = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 30, "day_of_week": 0,
          "distance": 719, "temp": 39.0, "humid": 60.0}  # fmt: skip
_odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, width=64),
    st.text(max_size=70), st.just([1]), st.just({"a": 1}),
)  # fmt: skip


def _verdict(fn) -> int:
    try:
        fn()
    except RequestError as exc:
        return exc.status
    return 200


@settings(max_examples=150, deadline=None)
@given(
    column=st.sampled_from(["carrier", "hour", "distance", "temp", "wind_gust", "humid"]),
    value=_odd_values,
    size=st.integers(1, 40),
    position=st.data(),
)
def test_a_rows_verdict_does_not_depend_on_batch_size_or_position(column, value, size, position):
    """Records and v2 JSON: a batch is accepted iff its odd row is accepted alone, wherever it sits."""
    at = position.draw(st.integers(0, size - 1))
    odd = {**_VALID, column: value}
    limits = Limits()
    alone_records = _verdict(lambda: records_feeds([odd], SIG, limits))
    batch = [dict(_VALID) for _ in range(size)]
    batch[at] = odd
    assert _verdict(lambda: records_feeds(batch, SIG, limits)) == alone_records

    def v2(rows):
        inputs = [{"name": spec.name, "datatype": spec.datatype, "shape": [len(rows), 1],
                   "data": [row.get(spec.name) for row in rows]} for spec in SIG.inputs]  # fmt: skip
        body = orjson.dumps({"inputs": inputs})
        request, parsed, _ = parse_v2(body, None)
        return lambda: v2_feeds(request, SIG, limits, body=body, parsed=parsed)

    if isinstance(value, list):
        return  # in v2 `data`, [[1]] is the nested (row-major) form of [1]: a shape, not a value
    try:
        alone_v2 = _verdict(v2([odd]))
        batch_v2 = _verdict(v2(batch))
    except orjson.JSONEncodeError:
        return  # 2**70 is not representable by orjson; the records path above covers it
    assert batch_v2 == alone_v2


# ---------------------------------------------------------------- 5. clients that hang up mid-body
def _status_count(client, status: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("driftloop_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_mid_body_is_499_without_traceback(start_server, make_repo, rows, caplog):
    client = start_server(make_repo())
    host, port = urlsplit(str(client.base_url)).netloc.split(":")
    body = orjson.dumps(records_payload(rows))
    caplog.set_level(logging.DEBUG, logger="serving")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"POST {PREDICT} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
            )
    deadline = time.monotonic() + 20
    while _status_count(client, "499") < 5:
        assert time.monotonic() < deadline, client.get("/metrics").text
        time.sleep(0.02)
    assert not any(re.match(r"5\d\d", s) and _status_count(client, s) for s in ("500", "502", "503"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("serving")]
    assert not [r for r in caplog.records if r.exc_info]
    assert client.post(PREDICT, json=records_payload(rows.iloc[:2])).status_code == 200


# ---------------------------------------------------------------- 6. traffic weights
def test_traffic_weights_are_percentages_summing_to_100(start_server, make_repo):
    client = start_server(make_repo({"1": "v1", "2": "v2"}))
    assert client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}}).status_code == 200
    url = f"/v2/repository/models/{MODEL}/traffic"
    for weights, needle in (({"1": 1e308, "2": 1e308}, "sum to inf"), ({"1": 50}, "sum to 50"),
                            ({"1": -10, "2": 110}, "finite and >= 0"), ({"1": 0, "2": 0}, "sum to 0")):  # fmt: skip
        r = client.post(url, json={"weights": weights})
        assert r.status_code == 400 and needle in r.json()["error"] and MODEL in r.json()["error"], (weights, r.text)
    r = client.post(url, json={"weights": {"1": 90, "2": 10}})
    assert r.status_code == 200 and r.json()["traffic_pct"] == {"1": 90.0, "2": 10.0}
    thirds = {"1": 100 / 3, "2": 200 / 3}  # what the release plane re-sends from the server's own answer
    assert client.post(url, json={"weights": thirds}).status_code == 200


# ---------------------------------------------------------------- 7. no server paths in errors
def test_errors_name_model_and_version_not_server_paths(start_server, make_repo, package_store):
    root = make_repo({"1": "v1", "2": "v2"})
    (root / MODEL / "2" / "model.onnx").write_bytes(b"not onnx")
    client = start_server(root, models=[MODEL])
    absolute = str(root.resolve())
    for r in (
        client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "2"}}),
        client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "9"}}),
        client.get("/v2/repository/index"),
    ):
        assert absolute not in r.text and str(root) not in r.text and "/tmp" not in r.text, r.text
    r = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "9"}})
    assert r.status_code == 404 and f"{MODEL}/9" in r.json()["error"]  # no such package folder: not found
    assert np.isfinite(client.get(f"/v2/models/{MODEL}/stats").json()["model_stats"][0]["inference_count"])


# ---------------------------------------------------------------- binary BYTES: vectorised = element-wise
@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=5), min_size=1, max_size=30) | st.lists(
    st.sampled_from(["EWR", "JFK", "LGA", "A\x00C", "ÉWR"]), min_size=1, max_size=30))
def test_binary_bytes_fast_path_agrees_with_the_element_loop(values):
    from serving.validation import binary_column
    from serving.wire import bytes_elements

    spec = next(s for s in SIG.inputs if s.name == "origin")
    buf = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
    limits = Limits(max_string_length=4)
    try:
        expected = bytes_elements("inputs[origin]", memoryview(buf), len(values), limits.max_string_length)
    except RequestError as exc:
        with pytest.raises(RequestError) as info:
            binary_column("inputs[origin]", spec, "BYTES", memoryview(buf), len(values), limits)
        assert info.value.status == exc.status == 400
        return
    got = binary_column("inputs[origin]", spec, "BYTES", memoryview(buf), len(values), limits)
    assert got.dtype.kind in "OU" and list(got[:, 0]) == list(expected) == values


# ---------------------------------------------------------------- binary numeric blocks = tensor loop
_WIRE = {"INT64": "<i8", "INT32": "<i4", "UINT8": "<u1", "UINT64": "<u8", "FP32": "<f4", "FP64": "<f8"}
_DECLARABLE = {"hour": ["INT64", "INT32", "UINT8", "UINT64"], "distance": ["INT64", "INT32"],
               "temp": ["FP32", "FP64"], "visib": ["FP32", "FP64"]}  # fmt: skip
_BLOCK_ROWS = 4


def _binary_parts() -> tuple[dict, dict[str, bytes]]:
    """The header and each tensor's bytes of a valid 4-row binary request (built once)."""
    from serving.testing import synthetic_rows

    body, size = v2_binary_payload(synthetic_rows(_BLOCK_ROWS, seed=5))
    header = orjson.loads(body[:size])
    blobs, offset = {}, size
    for t in header["inputs"]:
        blobs[t["name"]] = body[offset : offset + t["parameters"]["binary_data_size"]]
        offset += t["parameters"]["binary_data_size"]
    return header, blobs


_PARTS = _binary_parts()


@settings(max_examples=200, deadline=None)
@given(
    column=st.sampled_from(sorted(_DECLARABLE)),
    pick=st.integers(0, 3),
    value=st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1.0, 2**31, 2**63, -1, 256, 0])
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True, width=64),
    position=st.integers(0, 3),
    shift=st.integers(-8, 8),
    nullable=st.booleans(),
    text=st.tuples(st.sampled_from(["origin", "dest"]), st.sampled_from([None, "JFK", "ÉW", "A\x00C", "JF", "LONG", ""])),
)
def test_binary_block_path_agrees_with_the_tensor_loop(column, pick, value, position, shift, nullable, text):
    """The block decoding of adjacent tensors accepts exactly what the tensor loop accepts, with the
    same arrays: a value out of the declared type's range, a NaN in a non-nullable column, an
    infinity, sizes moved from one tensor to its neighbour (same total), and a BYTES element that
    is non-ASCII, holds a NUL or has another length, included."""
    import contextlib
    from unittest.mock import patch

    import serving.v2_tensors as v2

    rows = _BLOCK_ROWS
    specs = [s.model_copy(update={"nullable": nullable}) if s.name == column and s.datatype == "FP32" else s
             for s in TEST_INPUTS]  # fmt: skip
    sig = Signature(model_name=MODEL, lineage_id="x", inputs=specs, outputs=output_specs())
    header, blobs = orjson.loads(orjson.dumps(_PARTS[0])), dict(_PARTS[1])
    declared = _DECLARABLE[column][pick % len(_DECLARABLE[column])]
    kind = np.dtype(_WIRE[declared]).kind
    values = np.frombuffer(blobs[column], dtype=np.int64 if column in ("hour", "distance") else np.float32)
    values = values.astype(np.float64 if kind == "f" else object).tolist()
    if kind != "f" and type(value) is float and not np.isfinite(value):
        return  # no integer on the wire
    values[position] = float(value) if kind == "f" else int(value)
    try:
        if kind == "f":
            with np.errstate(over="ignore"):
                blobs[column] = np.asarray(values, dtype=np.float64).astype(_WIRE[declared]).tobytes()
        else:
            blobs[column] = np.asarray(values, dtype=object).astype(_WIRE[declared]).tobytes()
    except OverflowError:  # not representable on the wire at all: no such request exists
        return
    text_column, replacement = text
    if replacement is not None:  # one element of a BYTES tensor (origin and dest decode as one block)
        codes = [blobs[text_column][i + 4 : i + 7].decode() for i in range(0, len(blobs[text_column]), 7)]
        codes[position] = replacement
        blobs[text_column] = b"".join(len(c.encode()).to_bytes(4, "little") + c.encode() for c in codes)
        next(t for t in header["inputs"] if t["name"] == text_column)["parameters"]["binary_data_size"] = len(
            blobs[text_column]
        )
    tensor = next(t for t in header["inputs"] if t["name"] == column)
    tensor["datatype"] = declared
    tensor["parameters"]["binary_data_size"] = len(blobs[column])
    neighbour = next(t for t in header["inputs"] if t["name"] == ("minute" if column in ("hour", "distance") else "humid"))
    if shift and len(blobs[neighbour["name"]]) + shift >= 0:  # a split the sizes do not match
        tensor["parameters"]["binary_data_size"] += shift
        neighbour["parameters"]["binary_data_size"] -= shift
    head = orjson.dumps(header)
    raw = head + b"".join(blobs[t["name"]] for t in header["inputs"])
    request, parsed, tail = parse_v2(raw, str(len(head)))
    limits = Limits()

    def verdict(fast: bool):
        with patch.object(v2, "_binary_feeds", lambda *a: None) if not fast else contextlib.nullcontext():
            try:
                return v2_feeds(request, sig, limits, body=raw, parsed=parsed, binary=tail)
            except RequestError as exc:
                return exc.status, exc.message

    fast, loop = verdict(True), verdict(False)
    if isinstance(loop, tuple) and isinstance(loop[0], int):
        assert fast == loop
        return
    assert v2._binary_feeds(request, {s.name: s for s in specs}, limits, tail) is not None or declared == "UINT64"
    (got, n1), (expected, n2) = fast, loop
    assert n1 == n2 == rows and list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape == (rows, 1)
        np.testing.assert_array_equal(got[name], expected[name])
