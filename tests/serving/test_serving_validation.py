"""Bad inputs get a 4xx naming the field, never a 500, and the next valid request succeeds."""

from __future__ import annotations

import copy

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
    """One record goes through `_one_record`; two copies of it through the general checks: same verdict, same values."""
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
