"""Inputs the fast paths' authors did not try: each once through the typed decoding (serving/v2_typed.py,
`records_fast`) and once through the general path (`parse_v2` + `v2_feeds`, `parse_records` +
`records_feeds`), which must agree; and none of them a 500."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from driftloop.schema import Signature, TensorSpec, output_specs
from serving.testing import TEST_INPUTS, synthetic_rows, v2_binary_payload, v2_payload
from serving.v2_tensors import parse_v2, v2_feeds
from serving.v2_typed import binary_feeds, decoders, typed_v2
from serving.validation import Limits, RequestError, parse_records, records_fast, records_feeds
from serving.wire import _json_strings_layout, json_fixed_width_ascii

MODEL = "flight_delay"
LIMITS = Limits(max_rows=500, max_string_length=16)
SIGNATURE = Signature(model_name=MODEL, lineage_id="x", inputs=TEST_INPUTS, outputs=output_specs())
# An integer literal past float64 (orjson: "not JSON"); past 64 bits (orjson: a float).
HUGE, WIDE = 10**400, 2**64 + 1
# Nesting orjson reads (its limit is 1024 levels) but deeper than Python's default recursion limit.
DEEP = 1020


class _Version:
    """What `decoders` reads of a `ModelVersion`: its signature (and it must be weakly referable)."""

    signature = SIGNATURE


_VERSION = _Version()
_RECORD = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 30, "day_of_week": 0,
           "distance": 719, "temp": 39.0, "dewp": None, "humid": 60.0, "wind_dir": 10.0, "wind_speed": 3.5,
           "wind_gust": None, "precip": 0.0, "pressure": 1012.5, "visib": 10.0}  # fmt: skip
_FRAME = synthetic_rows(3, seed=11, null_fraction=0.3)
_BINARY, _HEADER_SIZE = v2_binary_payload(_FRAME)


def _general(body: bytes, header_length: str | None):
    """`parse_v2` + `v2_feeds`, as the route runs them: ("ok", rows) or (status, message)."""
    try:
        request, parsed, binary = parse_v2(body, header_length)
        _, rows = v2_feeds(request, SIGNATURE, LIMITS, body=body, parsed=parsed, binary=binary)
    except RequestError as exc:
        return exc.status, exc.message
    return "ok", rows


def _routed(body: bytes, header_length: str | None):
    """The route's answer: the typed path's when it takes the body, else the general path's."""
    typed = typed_v2(body, header_length, decoders(_VERSION, LIMITS), LIMITS)
    if typed is None:
        return _general(body, header_length)
    if typed.feeds is not None:
        return "ok", typed.rows
    fed = binary_feeds(typed, LIMITS)
    if fed is not None:
        return "ok", fed[1]
    try:
        return "ok", v2_feeds(typed.request, SIGNATURE, LIMITS, binary=typed.binary)[1]
    except RequestError as exc:
        return exc.status, exc.message


def _json_body(where: str, value) -> bytes:
    obj = v2_payload(_FRAME)
    if where == "request":
        obj["parameters"] = {"a": value}
    elif where == "tensor":
        obj["inputs"][3]["parameters"] = {"a": [value]}
    else:
        obj["outputs"] = [{"name": "probability", "parameters": {"a": {"b": value}}}]
    return json.dumps(obj, separators=(",", ":")).encode()  # the standard library prints any integer


def _header_body(edit) -> tuple[bytes, str]:
    header = orjson.loads(_BINARY[:_HEADER_SIZE])
    edit(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + _BINARY[_HEADER_SIZE:], str(len(head))


@pytest.mark.parametrize("value", [HUGE, -HUGE, WIDE, -WIDE], ids=["10**400", "-10**400", "2**64+1", "-(2**64+1)"])
@pytest.mark.parametrize("where", ["request", "tensor", "output"])
def test_free_form_parameters_with_integers_orjson_does_not_read_as_integers(where, value):
    """msgspec reads any integer in a free-form `parameters` object; orjson refuses one past float64
    (422) and reads one past 64 bits as a float: the typed path leaves both to the general path."""
    body = _json_body(where, value)
    assert typed_v2(body, None, decoders(_VERSION, LIMITS), LIMITS) is None
    assert _routed(body, None) == _general(body, None)
    if abs(value) == HUGE:
        assert _general(body, None)[0] == 422


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.__setitem__("parameters", {"binary_data_output": True, "a": HUGE}),
        lambda h: h["inputs"][0].__setitem__("shape", [-HUGE, 1]),
        lambda h: h["inputs"][0].__setitem__("shape", [-(2**70), 1]),
        lambda h: h["inputs"][4]["parameters"].__setitem__("binary_data_size", WIDE),
        lambda h: h["inputs"][4]["parameters"].__setitem__("binary_data_size", HUGE),
        lambda h: h["inputs"][4]["parameters"].__setitem__("binary_data_size", -WIDE),
    ],
    ids=["parameters", "shape past float64", "shape past int64", "size past 64 bits", "size past float64", "size below"],
)
def test_binary_headers_with_integers_orjson_does_not_read_as_integers(edit):
    """The same integers in a binary request's header: the route answers as the general path does."""
    body, length = _header_body(edit)
    assert _routed(body, length) == _general(body, length)
    assert _general(body, length)[0] in (400, 422)


def test_deeply_nested_parameters_are_no_server_error():
    """`parameters` nested deeper than Python's recursion limit but within orjson's: the typed decoder
    (msgspec raises RecursionError, not a `MsgspecError`) and the duplicate-key count both used to raise."""
    obj = v2_payload(_FRAME)
    body = orjson.dumps(obj)[:-1] + b',"parameters":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}"
    assert _general(body, None) == ("ok", 3)  # orjson reads it; nothing refuses it
    assert _routed(body, None) == ("ok", 3)
    head = orjson.dumps({**orjson.loads(_BINARY[:_HEADER_SIZE]), "parameters": {"a": [[0]]}})
    head = head.replace(b"[[0]]", b"[" * DEEP + b"]" * DEEP)
    body, length = head + _BINARY[_HEADER_SIZE:], str(len(head))
    assert _general(body, length) == ("ok", 3)
    assert _routed(body, length) == ("ok", 3)


@pytest.mark.parametrize("column", ["carrier", "hour", "temp"])
def test_a_deeply_nested_record_value_is_a_400(column):
    """A column's value nested deeper than Python's recursion limit: 400 naming the column (the
    message's repr of the value used to raise RecursionError, a 500)."""
    records = [dict(_RECORD), dict(_RECORD, **{column: "DEEP"})]
    body = orjson.dumps({"instances": records}).replace(b'"DEEP"', b"[" * DEEP + b"]" * DEEP)
    assert records_fast(body, SIGNATURE, LIMITS) is None  # the typed decoder refuses the list: the general path answers
    with pytest.raises(RequestError, match=rf"instances\[\*\]\.{column}: row 1 is list") as info:
        records_feeds(parse_records(body), SIGNATURE, LIMITS, body=body)
    assert info.value.status == 400 and len(info.value.message) < 300


@pytest.mark.slow
def test_the_server_answers_these_bodies_as_the_general_path(shared_server):
    """Through the real app: a 422 for an integer orjson refuses, a 200 for deep parameters, a 400
    for a deep record value; never a 500."""
    url = f"/v2/models/{MODEL}/infer"
    json_type = {"content-type": "application/json"}
    r = shared_server.post(url, content=_json_body("request", HUGE), headers=json_type)
    assert r.status_code == 422, r.text
    deep = orjson.dumps(v2_payload(_FRAME))[:-1] + b',"parameters":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}"
    r = shared_server.post(url, content=deep, headers=json_type)
    assert r.status_code == 200, r.text
    records = [dict(_RECORD), dict(_RECORD, carrier="DEEP")]
    body = orjson.dumps({"instances": records}).replace(b'"DEEP"', b"[" * DEEP + b"]" * DEEP)
    r = shared_server.post(f"/v1/models/{MODEL}:predict", content=body, headers=json_type)
    assert r.status_code == 400 and "instances[*].carrier" in r.text, r.text


# Inputs whose datatypes interleave (a feature added at the end of a signature, say): the typed path
# converts a datatype at a time, the general path a tensor at a time.
_MIXED_INPUTS = [
    TensorSpec(name="a", datatype="FP32", shape=[-1, 1], nullable=True),
    TensorSpec(name="b", datatype="INT64", shape=[-1, 1]),
    TensorSpec(name="c", datatype="BYTES", shape=[-1, 1]),
    TensorSpec(name="d", datatype="FP32", shape=[-1, 1], nullable=True),
    TensorSpec(name="e", datatype="INT64", shape=[-1, 1]),
]
_MIXED = Signature(model_name=MODEL, lineage_id="x", inputs=_MIXED_INPUTS, outputs=output_specs())


class _MixedVersion:
    signature = _MIXED


def _mixed_tensors(n: int) -> list[dict]:
    data = {"a": [0.5, None] * (n // 2) + [1.5] * (n % 2), "b": list(range(n)), "c": ["KJFK-TERMINAL-4"] * n,
            "d": [1017.25] * n, "e": [-7] * n}  # fmt: skip
    return [{"name": s.name, "shape": [n, 1], "datatype": s.datatype, "data": data[s.name]} for s in _MIXED_INPUTS]


@pytest.mark.parametrize("n", [3, 480], ids=["small", "bulk"])
def test_feeds_are_in_the_signature_order_on_every_path(n):
    """The typed JSON path used to give the feeds grouped by datatype (a, d, b, e, c) and the general
    path in the request's order; the prediction log's columns follow the feeds, so one version's
    log files had their columns in an order that depended on the path. Now every path gives the
    signature's order, whatever the order of the request's tensors."""
    names = [s.name for s in _MIXED_INPUTS]
    tensors = _mixed_tensors(n)
    version = _MixedVersion()
    for order in (tensors, tensors[::-1]):
        body = orjson.dumps({"inputs": order})
        assert (len(body) >= 16 * 1024) == (n > 3)  # the bulk decoder (raw strings, number blocks), or the small one
        typed = typed_v2(body, None, decoders(version, LIMITS), LIMITS)
        assert typed is not None and list(typed.feeds) == names
        request, parsed, binary = parse_v2(body, None)
        feeds, rows = v2_feeds(request, _MIXED, LIMITS, body=body, parsed=parsed, binary=binary)
        assert rows == n and list(feeds) == names
        for name in names:  # the same values (BYTES: fixed-width unicode in bulk, else str objects)
            np.testing.assert_array_equal(typed.feeds[name], feeds[name], strict=name != "c")
    # The binary extension in the request's reverse order: the general path (the typed one takes the signature's order only)
    header = {"inputs": []}
    blobs = []
    for t in tensors[::-1]:
        if t["datatype"] == "BYTES":
            blob = b"".join(len(v).to_bytes(4, "little") + v.encode() for v in t["data"])
        else:
            dtype = "<f4" if t["datatype"] == "FP32" else "<i8"
            blob = np.array([np.nan if v is None else v for v in t["data"]], dtype=dtype).tobytes()
        header["inputs"].append({**{k: t[k] for k in ("name", "shape", "datatype")}, "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = orjson.dumps(header)
    request, parsed, binary = parse_v2(head + b"".join(blobs), str(len(head)))
    feeds, rows = v2_feeds(request, _MIXED, LIMITS, binary=binary)
    assert rows == n and list(feeds) == names


def test_fixed_width_json_strings_need_no_layout_per_row_count():
    """`json_fixed_width_ascii` built its byte layout from Python lists for each exact row count (16
    kept): a client whose batch size changes at every request paid 10-30x the decoding it saved
    (about 0.25 ms a column at 1,000 rows). The layout is now one per power-of-two row count, sliced."""
    _json_strings_layout.cache_clear()
    for n in range(128, 1129):
        raw = orjson.dumps(["EWR", "JFK"] * (n // 2) + ["LGA"] * (n % 2))
        got = json_fixed_width_ascii(raw, n, LIMITS.max_string_length)
        assert got is not None and got.shape == (n, 1) and got[-1, 0] == ("LGA" if n % 2 else "JFK")
    assert _json_strings_layout.cache_info().misses == 5  # 128, 256, 512, 1024, 2048 rows
    spaced = json.dumps(["EWR"] * 300).encode()  # `, ` between items
    assert json_fixed_width_ascii(spaced, 300, 16)[:, 0].tolist() == ["EWR"] * 300
    assert json_fixed_width_ascii(spaced[:-1] + b" ", 300, 16) is None  # the closing bracket is checked too
