"""Bad inputs get a 4xx naming the field, never a 500, and the next valid request succeeds."""

from __future__ import annotations

import copy
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.schema import Signature, output_specs
from serving.testing import TEST_INPUTS, records_payload, v2_payload
from serving.validation import (
    InferenceRequest,
    Limits,
    RecordsRequest,
    RequestError,
    column_array,
    parse_model,
    records_feeds,
    v2_feeds,
)

MODEL = "flight_delay"
SIG = Signature(model_name=MODEL, lineage_id="x", inputs=TEST_INPUTS, outputs=output_specs())
SPECS = {s.name: s for s in SIG.inputs}
LIMITS = Limits(max_rows=500, max_string_length=16)


def _tensor(payload, name):
    return next(t for t in payload["inputs"] if t["name"] == name)


def _v2_cases(rows):
    """(label, payload mutator, expected status, text the message must contain)."""

    def mutate(fn):
        def apply():
            p = v2_payload(rows.iloc[:3])
            fn(p)
            return p

        return apply

    return [
        ("missing input", mutate(lambda p: p["inputs"].pop(0)), 400, "carrier"),
        (
            "extra input",
            mutate(lambda p: p["inputs"].append({**_tensor(p, "hour"), "name": "bogus"})),
            400,
            "bogus",
        ),
        ("duplicate input", mutate(lambda p: p["inputs"].append(_tensor(p, "hour"))), 400, "hour"),
        ("wrong datatype", mutate(lambda p: _tensor(p, "hour").update(datatype="BYTES")), 400, "hour"),
        ("unknown datatype", mutate(lambda p: _tensor(p, "temp").update(datatype="FP16")), 400, "temp"),
        ("string in int", mutate(lambda p: _tensor(p, "hour")["data"].__setitem__(0, "7")), 400, "hour"),
        ("float in int", mutate(lambda p: _tensor(p, "minute")["data"].__setitem__(1, 1.5)), 400, "minute"),
        ("bool in float", mutate(lambda p: _tensor(p, "temp").update(data=[True, False, True])), 400, "temp"),
        (
            "number in string",
            mutate(lambda p: _tensor(p, "carrier")["data"].__setitem__(0, 5)),
            400,
            "carrier",
        ),
        (
            "null in int",
            mutate(lambda p: _tensor(p, "distance")["data"].__setitem__(0, None)),
            400,
            "distance",
        ),
        ("null in string", mutate(lambda p: _tensor(p, "dest")["data"].__setitem__(2, None)), 400, "dest"),
        ("overflow to inf", mutate(lambda p: _tensor(p, "temp")["data"].__setitem__(0, 1e300)), 400, "temp"),
        ("long string", mutate(lambda p: _tensor(p, "dest")["data"].__setitem__(0, "X" * 17)), 400, "dest"),
        ("shape rows mismatch", mutate(lambda p: _tensor(p, "hour").update(shape=[2, 1])), 400, "hour"),
        ("shape too wide", mutate(lambda p: _tensor(p, "hour").update(shape=[3, 2])), 400, "hour"),
        ("data count mismatch", mutate(lambda p: _tensor(p, "visib")["data"].pop()), 400, "visib"),
        (
            "shape zero rows",
            mutate(lambda p: [t.update(shape=[0, 1], data=[]) for t in p["inputs"]]),
            400,
            "shape",
        ),
        ("unknown output", mutate(lambda p: p.update(outputs=[{"name": "logits"}])), 400, "logits"),
        ("no inputs", mutate(lambda p: p.update(inputs=[])), 422, "inputs"),
        ("shape not ints", mutate(lambda p: _tensor(p, "hour").update(shape="3x1")), 422, "shape"),
        ("extra top-level key", mutate(lambda p: p.update(foo=1)), 422, "foo"),
        ("too many rows", lambda: v2_payload(rows.iloc[[0] * 501]), 413, "limit"),
    ]


@pytest.mark.slow
def test_bad_v2_payloads_get_4xx_then_valid_succeeds(shared_server, rows):
    valid = v2_payload(rows.iloc[:3])
    for label, make, status, needle in _v2_cases(rows):
        r = shared_server.post(f"/v2/models/{MODEL}/infer", json=make())
        assert r.status_code == status, (label, r.status_code, r.text)
        assert needle in r.json()["error"], (label, r.json())
        ok = shared_server.post(f"/v2/models/{MODEL}/infer", json=valid)
        assert ok.status_code == 200, (label, ok.text)


@pytest.mark.slow
def test_bad_records_and_bodies(shared_server, rows):
    valid = records_payload(rows.iloc[:3])

    def rec(fn):
        p = copy.deepcopy(valid)
        fn(p["instances"])
        return orjson.dumps(p)

    cases = [
        ("missing column", rec(lambda i: i[1].pop("carrier")), 400, "instances[1].carrier"),
        ("extra column", rec(lambda i: i[2].update(tail="N123")), 400, "tail"),
        ("null non-nullable", rec(lambda i: i[0].update(hour=None)), 400, "hour"),
        ("string number", rec(lambda i: i[0].update(temp="warm")), 400, "temp"),
        ("empty instances", b'{"instances": []}', 422, "instances"),
        ("not json", b"{not json", 422, "invalid"),
        ("wrong top type", b"[1, 2]", 422, "body"),
        ("instance not object", b'{"instances": [1]}', 422, "instances.0"),
    ]
    headers = {"content-type": "application/json"}
    for label, body, status, needle in cases:
        r = shared_server.post(f"/v1/models/{MODEL}:predict", content=body, headers=headers)
        assert r.status_code == status, (label, r.status_code, r.text)
        assert needle in r.json()["error"], (label, r.json())
        assert shared_server.post(f"/v1/models/{MODEL}:predict", json=valid).status_code == 200
    # Over the byte limit (256 KiB here): declared size, and chunked (no Content-Length).
    big = orjson.dumps({"instances": valid["instances"] * 2000})
    assert len(big) > 256 * 1024
    r = shared_server.post(f"/v1/models/{MODEL}:predict", content=big, headers=headers)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():
        for i in range(0, len(big), 16 * 1024):
            yield big[i : i + 16 * 1024]

    r = shared_server.post(f"/v1/models/{MODEL}:predict", content=chunks(), headers=headers)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert shared_server.post(f"/v1/models/{MODEL}:predict", json=valid).status_code == 200
    # Unknown model, bad request id.
    assert shared_server.post("/v1/models/nope:predict", json=valid).status_code == 404
    unknown = shared_server.get("/v2/no/such/path")
    assert unknown.status_code == 404 and "error" in unknown.json()  # routing errors share the error shape
    r = shared_server.post(f"/v1/models/{MODEL}:predict", json=valid, headers={"x-request-id": "x" * 200})
    assert r.status_code == 400 and "x-request-id" in r.json()["error"]


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(0, 15),
    key=st.sampled_from(["name", "shape", "datatype", "data", "extra"]),
    value=_json_values,
)
def test_fuzzed_v2_tensor_never_500(shared_server, rows, index, key, value):
    payload = v2_payload(rows.iloc[:2])
    payload["inputs"][index][key] = value
    r = shared_server.post(f"/v2/models/{MODEL}/infer", json=payload)
    assert r.status_code in (200, 400, 413, 422), r.text
    if r.status_code != 200:
        assert "error" in r.json()
    assert shared_server.post(f"/v2/models/{MODEL}/infer", json=v2_payload(rows.iloc[:2])).status_code == 200


# ---------------------------------------------------------------- unit level (no server)
@settings(max_examples=300, deadline=None)
@given(col=st.sampled_from(sorted(SPECS)), values=st.lists(_json_values, min_size=1, max_size=5))
def test_column_array_accepts_or_names_the_field(col, values):
    spec = SPECS[col]
    try:
        arr = column_array(f"inputs[{col}]", spec, values, LIMITS)
    except RequestError as exc:
        assert exc.status == 400 and f"inputs[{col}]" in exc.message
        return
    assert arr.shape == (len(values), 1)
    if spec.datatype == "FP32":
        assert arr.dtype == np.float32
        assert np.isfinite(arr[~np.isnan(arr)]).all()
    elif spec.datatype == "INT64":
        assert arr.dtype == np.int64
    else:
        assert all(isinstance(v, str) and len(v) <= LIMITS.max_string_length for v in arr[:, 0])


def test_nulls_become_nan_only_in_nullable_columns(rows):
    frame = rows.iloc[:2]
    req = parse_model(RecordsRequest, orjson.dumps(records_payload(frame, drop_null=True)))
    feeds, n = records_feeds(req, SIG, LIMITS)
    assert n == 2 and feeds["temp"].dtype == np.float32 and feeds["carrier"].dtype == object
    np.testing.assert_array_equal(np.isnan(feeds["wind_gust"][:, 0]), frame["wind_gust"].isna().to_numpy())
    bad = parse_model(InferenceRequest, orjson.dumps(v2_payload(frame)))
    next(t for t in bad.inputs if t.name == "hour").data[0] = None
    with pytest.raises(RequestError, match=r"inputs\[hour\]"):
        v2_feeds(bad, SIG, LIMITS)


@settings(max_examples=200, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["carrier", "hour", "temp", "wind_gust", "distance", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, width=64),
                  st.text(max_size=70), st.just([1])),
        max_size=3,
    ),
    drop=st.sampled_from([None, "carrier", "temp", "hour"]),
)
def test_single_record_fast_path_agrees_with_the_general_path(changes, drop):
    """One record goes through `one_record`; two copies of it through the general checks: same verdict, same values."""
    from driftloop.schema import Signature, output_specs
    from serving.validation import Limits, RecordsRequest, RequestError, records_feeds

    sig = Signature(model_name="m", lineage_id="x", inputs=TEST_INPUTS, outputs=output_specs())
    record = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 30, "day_of_week": 0,
              "distance": 719, "temp": 39.0, "humid": 60.0}  # fmt: skip
    record.update(changes)
    if drop:
        record.pop(drop, None)
    limits = Limits()
    try:
        general, _ = records_feeds(RecordsRequest(instances=[record, record]), sig, limits)
    except RequestError as exc:
        with pytest.raises(RequestError) as info:
            records_feeds(RecordsRequest(instances=[record]), sig, limits)
        assert info.value.status == exc.status
        return
    single, rows = records_feeds(RecordsRequest(instances=[record]), sig, limits)
    assert rows == 1 and list(single) == list(general)
    for name, arr in single.items():
        assert arr.dtype == general[name].dtype and arr.shape == (1, 1)
        np.testing.assert_array_equal(arr, general[name][:1])


_BASE_V2 = {
    "id": "r-1",
    "parameters": {"binary_data_output": False},
    "inputs": [{"name": "hour", "shape": [2, 1], "datatype": "INT64", "data": [7, 8]},
               {"name": "carrier", "shape": [2], "datatype": "BYTES", "data": ["UA", "AA"]}],
    "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
}  # fmt: skip
_PATHS = [(), ("inputs", 0), ("inputs", 1), ("outputs", 0), ("inputs", 0, "shape"), ("parameters",)]
_KEYS = ["id", "model_name", "model_version", "parameters", "inputs", "outputs", "name", "shape", "datatype", "data",
         "extra", 0, 1]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(_PATHS), key=st.sampled_from(_KEYS), value=_json_values | st.just(2**53 + 1),
       delete=st.booleans())  # fmt: skip
def test_plain_v2_request_agrees_with_the_request_model(path, key, value, delete):
    """`_plain_v2` skips pydantic only for bodies `InferenceRequest` accepts, and reads them the same."""
    from serving.validation import _plain_v2

    obj = copy.deepcopy(_BASE_V2)
    target = obj
    for step in path:
        target = target[step]
    if isinstance(target, list):
        key = key if isinstance(key, int) else 0
        if delete:
            del target[key]
        else:
            target[key] = value
    elif not isinstance(key, int):
        if delete:
            target.pop(key, None)
        else:
            target[key] = value
    plain = _plain_v2(obj)
    if plain is None:
        return  # pydantic decides, as before
    model = InferenceRequest.model_validate(obj)  # raises if the fast path vouched for a bad body
    for field in ("id", "model_name", "model_version", "parameters"):
        assert getattr(plain, field) == getattr(model, field)
    assert plain.binary_output() == model.binary_output()
    for a, b in zip(plain.inputs, model.inputs, strict=True):
        assert (a.name, a.shape, a.datatype, a.data, a.parameters) == (b.name, b.shape, b.datatype, b.data, b.parameters)
    assert [(o.name, o.parameters) for o in plain.outputs or []] == [(o.name, o.parameters) for o in model.outputs or []]


def test_plain_v2_request_is_taken_for_a_plain_body_and_not_for_a_cast():
    from serving.validation import _plain_v2

    assert _plain_v2(copy.deepcopy(_BASE_V2)) is not None
    cast = copy.deepcopy(_BASE_V2)
    cast["inputs"][0]["shape"] = [2.0, 1]  # pydantic reads 2.0 as 2; the fast path leaves it to pydantic
    assert _plain_v2(cast) is None and InferenceRequest.model_validate(cast).inputs[0].shape == [2, 1]
    newline = {**copy.deepcopy(_BASE_V2), "id": "r-1\n"}  # Python's `$` matches before a final newline
    assert _plain_v2(newline) is None
    with pytest.raises(ValueError):
        InferenceRequest.model_validate(newline)


_RECORD = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 30, "day_of_week": 0,
           "distance": 719, "temp": 39.0, "dewp": None, "humid": 60.0, "wind_dir": 10.0, "wind_speed": 3.5,
           "wind_gust": None, "precip": 0.0, "pressure": 1012.5, "visib": 10.0}  # fmt: skip


@settings(max_examples=250, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["carrier", "hour", "distance", "temp", "visib", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(width=64),
                  st.sampled_from([2**53, 2**53 + 1, 2**63, 2**64, 1e39, 7.0, -0.0, 3.4e38]),
                  st.text(max_size=20), st.just("a:b"), st.just("x" * 17), st.just([1]), st.just({"a": 1})),
        max_size=3,
    ),
    drop=st.sampled_from([None, "carrier", "temp", "hour"]),
    position=st.integers(0, 2),
    duplicate=st.sampled_from([None, "hour", "carrier", "temp"]),
    temp_nullable=st.booleans(),
)  # fmt: skip
def test_typed_records_decoding_agrees_with_the_general_path(changes, drop, position, duplicate, temp_nullable):
    """`records_fast` (msgspec, typed) accepts only what `parse_records` + `records_feeds` accept,
    with the same arrays, and refuses a duplicate key the same way; else it leaves the body to them."""
    from serving.validation import parse_records, records_fast

    specs = [s.model_copy(update={"nullable": temp_nullable}) if s.name == "temp" else s for s in TEST_INPUTS]
    sig = Signature(model_name=MODEL, lineage_id="x", inputs=specs, outputs=output_specs())
    record = dict(_RECORD, **changes)
    if drop:
        record.pop(drop, None)
    instances = [_RECORD, record if position == 1 else _RECORD, record if position != 1 else _RECORD]
    body = json.dumps({"instances": instances}, separators=(",", ":")).encode()  # any int size, NaN too
    if duplicate:  # the first record's key again, first in the object: the parser keeps the later value
        body = body.replace(b'{"carrier"', b'{"' + duplicate.encode() + b'":1,"carrier"', 1)
    try:
        general = records_feeds(parse_records(body), sig, LIMITS, body=body)
    except RequestError as exc:
        general = (exc.status, exc.message)
    try:
        fast = records_fast(body, sig, LIMITS)
    except RequestError as exc:
        assert (exc.status, exc.message) == general
        return
    if fast is None:
        return
    assert isinstance(general[0], dict), f"the typed path accepted what the general path refuses: {general}"
    (got, n1), (expected, n2) = fast, general
    assert n1 == n2 == 3 and list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].shape == (3, 1)
        np.testing.assert_array_equal(got[name], expected[name])


def test_typed_records_decoding_takes_the_plain_body(rows):
    from serving.validation import records_fast

    body = orjson.dumps(records_payload(rows.iloc[:20]))
    assert records_fast(body, SIG, LIMITS) is not None


def test_v2_key_count_is_the_key_count_of_the_full_walk():
    """The duplicate-key check's first count (keys only) equals the full walk's."""
    from serving.v2_tensors import _v2_key_count, _v2_keys
    from serving.wire import count_keys

    nested = copy.deepcopy(_BASE_V2)
    nested["inputs"][0]["parameters"] = {"binary_data_size": 8, "a": {"b": [{"c": 1}, 2]}, "d": ":"}
    nested["inputs"][1]["parameters"] = {}
    nested["parameters"] = {"x": {"y": 1}, "z": [1, {"w": 2}]}
    for obj in (_BASE_V2, nested, {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}):
        plain = {k: v for k, v in obj.items()}
        assert _v2_key_count(plain) == _v2_keys(plain)[0]
        without_data = copy.deepcopy(plain)
        for t in without_data["inputs"]:
            t.pop("data", None)
        assert _v2_keys(plain)[0] == count_keys(without_data)[0] + sum("data" in t for t in plain["inputs"])
