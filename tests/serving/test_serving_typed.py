"""The typed v2 decoding (serving/v2_typed.py) accepts only what the general path accepts, with the
same request and the same arrays; everything else goes to the general path, which answers as before."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driftloop.schema import Signature, TensorSpec, output_specs
from serving import columns, v2_typed
from serving.testing import TEST_INPUTS, records_payload, synthetic_rows, v2_binary_payload, v2_payload
from serving.v2_tensors import parse_v2, v2_feeds
from serving.v2_typed import binary_feeds, decoders, typed_v2
from serving.validation import Limits, RequestError
from serving.wire import json_fixed_width_ascii

MODEL = "flight_delay"
LIMITS = Limits(max_rows=500, max_string_length=16)
COLUMNS = [s.name for s in TEST_INPUTS]
_ROW = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 30, "day_of_week": 0, "distance": 719,
        "temp": 39.0, "dewp": 21.5, "humid": 60.0, "wind_dir": 10, "wind_speed": 3.5, "wind_gust": None,
        "precip": 0.0, "pressure": 1012.5, "visib": 10.0}  # fmt: skip


class _Version:
    """What `decoders` reads of a `ModelVersion`: its signature (and it must be weakly referable)."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature


def _version(nullable: bool) -> _Version:
    specs = [s.model_copy(update={"nullable": nullable}) if s.name in ("temp", "dewp") else s for s in TEST_INPUTS]
    return _Version(Signature(model_name=MODEL, lineage_id="x", inputs=specs, outputs=output_specs()))


def _general(body: bytes, header_length: str | None, signature: Signature):
    """`parse_v2` + `v2_feeds`, as the route runs them: (request, feeds, rows) or (status, message)."""
    try:
        request, parsed, binary = parse_v2(body, header_length)
        feeds, rows = v2_feeds(request, signature, LIMITS, body=body, parsed=parsed, binary=binary)
    except RequestError as exc:
        return exc.status, exc.message
    return request, feeds, rows


def _same_request(a, b) -> None:
    for field in ("id", "model_name", "model_version", "parameters"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.binary_output() == b.binary_output()
    assert [(o.name, o.parameters) for o in a.outputs or ()] == [(o.name, o.parameters) for o in b.outputs or ()]


def _same_feeds(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, arr in expected.items():
        if arr.dtype == object and got[name].dtype.kind == "U":  # fixed-width strings (`json_fixed_width_ascii`)
            assert got[name].shape == arr.shape and got[name].tolist() == arr.tolist(), name  # the same `str`s
            continue
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)  # NaN (null) equals NaN
        if arr.dtype.kind == "f":  # and -0.0 stays -0.0 (`assert_array_equal` takes it for 0.0)
            np.testing.assert_array_equal(np.signbit(got[name]), np.signbit(arr))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(width=64, allow_nan=False),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, -(2**53), 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**400,
                     3.4e38, 3.5e38, 1e39, 1e308, 9007199254740991.0, 9007199254740992.0, -0.0, 7.0]),
    st.text(max_size=20), st.sampled_from(["a:b", "x" * 16, "x" * 17, "É", "\x00", ":"]), st.just([1]),
    st.just({"a": 1}),
)  # fmt: skip
_COLUMN = st.sampled_from(COLUMNS)
# Edits a valid body survives (mostly): values of the column's own type, other shapes of the same rows.
_VALID_EDIT = st.one_of(
    st.tuples(st.just("value"), st.sampled_from(["carrier", "dest"]), st.integers(0, 2),
              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=16) | st.sampled_from(["a:b", ":", "É"])),
    st.tuples(st.just("value"), st.sampled_from(["hour", "distance"]), st.integers(0, 2),
              st.integers(-(2**63), 2**63 - 1) | st.sampled_from([2**63, -(2**63) - 1, 7.0])),
    st.tuples(st.just("value"), st.sampled_from(["temp", "dewp", "visib"]), st.integers(0, 2),
              st.floats(width=64, allow_nan=False) | st.integers(-(2**60), 2**60) | st.none()
              | st.sampled_from([2**53 - 1, 2**53, 9007199254740991.0, 3.4e38, 3.5e38, 1e39])),
    st.tuples(st.just("shape"), _COLUMN, st.sampled_from(["n", "n1"])),
    st.tuples(st.just("tensor"), _COLUMN, st.just("reorder")),
    st.tuples(st.just("set_key"), _COLUMN, st.just("parameters"), st.sampled_from([{"a": 1}, {"a": {"b": ":"}}, {}])),
)  # fmt: skip
_TOP = st.tuples(
    st.sampled_from(["id", "model_name", "model_version", "parameters", "outputs", "extra"]),
    st.sampled_from(["r-1", "", "a\n", " a", "x" * 129, "a:b", 5, None, "m" * 65, "m" * 257, {"binary_data_output": True},
                     {"x": ":", "y": {"z": [1, {"w": 2}]}}, [{"name": "probability"}], [{"name": "logits"}], [],
                     [{"name": "probability", "parameters": {"binary_data": True}}],
                     [{"name": "probability", "extra": 1}], [{"name": "probability", "parameters": None}]]),
)  # fmt: skip
_TENSOR_EDIT = st.one_of(
    st.tuples(st.just("value"), _COLUMN, st.integers(0, 2), _VALUES),
    st.tuples(st.just("datatype"), _COLUMN, st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "FP64", "FP16", 5, None])),
    st.tuples(st.just("shape"), _COLUMN, st.sampled_from(["n", "n1", "n2", "m1", "01", "n11", "x", "f1", "big", "neg"])),
    st.tuples(st.just("drop_key"), _COLUMN, st.sampled_from(["name", "shape", "datatype", "data"])),
    st.tuples(st.just("set_key"), _COLUMN, st.sampled_from(["parameters", "extra"]),
              st.sampled_from([{"binary_data_size": 4}, {"binary_data_size": None}, {"a": 1}, {"a": {"b": ":"}}, {}, None, 1])),
    st.tuples(st.just("tensor"), _COLUMN, st.sampled_from(["drop", "duplicate", "rename", "nest", "reorder"])),
)  # fmt: skip


def _shape(code: str, n: int):
    return {"n": [n], "n1": [n, 1], "n2": [n, 2], "m1": [n + 1, 1], "01": [0, 1], "n11": [n, 1, 1], "x": "x",
            "f1": [float(n), 1], "big": [2**54, 1], "neg": [-1, 1]}[code]  # fmt: skip


def _apply(obj: dict, edit: tuple, n: int) -> None:
    kind, column = edit[0], edit[1]
    tensors = obj["inputs"]
    tensor = next((t for t in tensors if t.get("name") == column), None)
    if tensor is None:
        return
    if kind == "value":
        if isinstance(tensor.get("data"), list) and tensor["data"]:
            tensor["data"][edit[2] % len(tensor["data"])] = edit[3]
    elif kind == "datatype":
        tensor["datatype"] = edit[2]
    elif kind == "shape":
        tensor["shape"] = _shape(edit[2], n)
    elif kind == "drop_key":
        tensor.pop(edit[2], None)
    elif kind == "set_key":
        tensor[edit[2]] = edit[3]
    elif edit[2] == "drop":
        tensors.remove(tensor)
    elif edit[2] == "duplicate":
        tensors.append(copy.deepcopy(tensor))
    elif edit[2] == "rename":
        tensor["name"] = "bogus"
    elif edit[2] == "nest":
        tensor["data"] = [[v] for v in tensor.get("data") or ()]
    else:
        tensors.reverse()


def _duplicate_key(body: bytes, where: str) -> bytes:
    """The body with one key written twice (the earlier copy is the one a parser drops)."""
    if where == "top":
        return b'{"id":"dup",' + body[1:]
    if where == "top_same":
        return body.replace(b'{"inputs"', b'{"inputs":[],"inputs"', 1)
    target = {"name": b'"name":"dest",', "datatype": b'"datatype":"FP32",', "data": b'"data":[1],',
              "shape": b'"shape":[9],'}[where]  # fmt: skip
    return body.replace(b'{"name":"hour"', b"{" + target + b'"name":"hour"', 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    edits=st.lists(_VALID_EDIT, max_size=3) | st.lists(_TENSOR_EDIT, max_size=2),
    top=st.lists(_TOP, max_size=1) | st.just([]),
    duplicate=st.sampled_from([None] * 6 + ["top", "top_same", "name", "datatype", "data", "shape"]),
    ascii_only=st.booleans(),
    corrupt=st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.sampled_from(list(b'0 1:,."{}[]-eE+n\xff'))),
    nullable=st.booleans(),
    bulk=st.booleans(),
    spaced=st.booleans(),
)
def test_typed_json_decoding_agrees_with_the_general_path(n, edits, top, duplicate, ascii_only, corrupt, nullable, bulk,
                                                          spaced):  # fmt: skip
    """Whatever `typed_v2` accepts (values out of a datatype's range, wrong types, shapes, keys,
    duplicate keys and inputs, ids, outputs, bytes of broken JSON included), `parse_v2` +
    `v2_feeds` accept with the same request fields and the same arrays; with a few rows read as
    bulk bodies are (`bulk`: numbers unbounded, then `number_block`; strings from their raw JSON,
    fixed-width by `json_fixed_width_ascii`) or as small ones are, written compact or `spaced` (as
    Python's `json.dumps` writes by default)."""
    saved = v2_typed._BULK_BYTES, v2_typed._FIXED_WIDTH_ROWS
    if bulk:
        v2_typed._BULK_BYTES, v2_typed._FIXED_WIDTH_ROWS = 0, 1
    try:
        _check_typed_json(n, edits, top, duplicate, ascii_only, corrupt, nullable, spaced)
    finally:
        v2_typed._BULK_BYTES, v2_typed._FIXED_WIDTH_ROWS = saved


def _check_typed_json(n, edits, top, duplicate, ascii_only, corrupt, nullable, spaced=False) -> None:
    version = _version(nullable)
    obj = {"inputs": [{"name": c, "datatype": s.datatype, "shape": [n, 1], "data": [_ROW[c]] * n}
                      for c, s in zip(COLUMNS, TEST_INPUTS, strict=True)]}  # fmt: skip
    for edit in edits:
        _apply(obj, edit, n)
    for key, value in top:
        obj[key] = value
    try:
        body = json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":"), ensure_ascii=ascii_only).encode()
    except ValueError:  # an integer too long for the standard library to print
        return
    if duplicate and spaced:
        return  # `_duplicate_key` edits the compact form
    if duplicate:
        body = _duplicate_key(body, duplicate)
    if corrupt[0] == 0:  # one byte in six bodies
        _, position, byte = corrupt
        body = body[: position % len(body)] + bytes([byte]) + body[position % len(body) + 1 :]
    typed = typed_v2(body, None, decoders(version, LIMITS), LIMITS)
    if typed is None:
        return  # the general path decides, as before
    general = _general(body, None, version.signature)
    assert not isinstance(general[0], int), f"typed accepted; general: {general}"
    request, feeds, rows = general
    _same_request(typed.request, request)
    assert typed.rows == rows and typed.binary is None
    _same_feeds(typed.feeds, feeds)


_BINARY, _HEADER_SIZE = v2_binary_payload(synthetic_rows(3, seed=5, null_fraction=0.3))
_HEADER = orjson.loads(_BINARY[:_HEADER_SIZE])
_BLOBS: dict[str, bytes] = {}
_offset = _HEADER_SIZE
for _t in _HEADER["inputs"]:
    _BLOBS[_t["name"]] = _BINARY[_offset : _offset + _t["parameters"]["binary_data_size"]]
    _offset += _t["parameters"]["binary_data_size"]


def _set_element(blobs: dict[str, bytes], column: str, position: int, value) -> None:
    """One element of a tensor's bytes replaced: a number in its wire type, or a BYTES element."""
    spec = next(s for s in TEST_INPUTS if s.name == column)
    if spec.datatype == "BYTES":
        items, raw, i = [], blobs[column], 0
        while i < len(raw):
            size = int.from_bytes(raw[i : i + 4], "little")
            items.append(raw[i + 4 : i + 4 + size])
            i += 4 + size
        items[position] = value.encode() if isinstance(value, str) else b"\xff\xfe"
        blobs[column] = b"".join(len(v).to_bytes(4, "little") + v for v in items)
        return
    if isinstance(value, str) or value is None:
        return
    wire = np.int64 if spec.datatype == "INT64" else np.float32
    array = np.frombuffer(blobs[column], dtype=wire).copy()
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array[position] = value
    except (OverflowError, ValueError):
        return
    blobs[column] = array.tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.just([]) | st.lists(st.tuples(st.just("tensor"), _COLUMN, st.just("reorder")), max_size=1) | st.lists(
        st.one_of(
            st.tuples(st.just("datatype"), _COLUMN, st.sampled_from(["INT32", "FP64", "BYTES", "UINT64", "FP16", 3])),
            st.tuples(st.just("shape"), _COLUMN, st.sampled_from(["n", "n1", "n2", "m1", "01", "n11", "x", "f1", "big"])),
            st.tuples(st.just("size"), _COLUMN, st.integers(-9, 9)),
            st.tuples(st.just("parameters"), _COLUMN, st.sampled_from([None, {}, {"binary_data_size": "4"},
                                                                        {"binary_data_size": 4, "a": ":"}])),
            st.tuples(st.just("data"), _COLUMN),
            st.tuples(st.just("tensor"), _COLUMN, st.sampled_from(["drop", "duplicate", "rename", "reorder"])),
        ),
        max_size=2,
    ),
    top=st.sampled_from([[]] * 3 + [None]).flatmap(lambda t: st.just(t) if t is not None else st.lists(_TOP, max_size=1)),
    duplicate=st.sampled_from([None] * 8 + ["top", "name", "datatype", "shape"]),
    length=st.sampled_from(["exact"] * 8 + ["short", "long", "zero", "text", "trailing"]),
    nullable=st.booleans(),
    values=st.just([]) | st.lists(st.tuples(_COLUMN, st.integers(0, 2), st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e39, 2**62, -1, 0.5, "JFK", "LONG", "", "É", "A\x00C", "AB:", None])), max_size=2),
)  # fmt: skip
def test_typed_binary_header_agrees_with_the_general_path(edits, top, duplicate, length, nullable, values):
    """A binary request whose header `typed_v2` accepts gets the general path's answer, error or
    arrays, from `v2_feeds` on the typed request, and `binary_feeds` (the layout clients send,
    decoded a list at a time) accepts only what the general path accepts, with the same arrays; a
    header `typed_v2` refuses goes to `parse_v2`. Values NaN in a non-nullable column, infinite,
    non-ASCII, with a NUL or of another length included."""
    version = _version(nullable)
    header = copy.deepcopy(_HEADER)
    blobs = dict(_BLOBS)
    for column, position, value in values:
        _set_element(blobs, column, position, value)
        next(t for t in header["inputs"] if t["name"] == column)["parameters"]["binary_data_size"] = len(blobs[column])
    for edit in edits:
        tensor = next((t for t in header["inputs"] if t.get("name") == edit[1]), None)
        if tensor is None:
            continue
        if edit[0] == "datatype":
            tensor["datatype"] = edit[2]
        elif edit[0] == "shape":
            tensor["shape"] = _shape(edit[2], 3)
        elif edit[0] == "size":
            if isinstance(tensor.get("parameters"), dict) and type(tensor["parameters"].get("binary_data_size")) is int:
                tensor["parameters"]["binary_data_size"] += edit[2]
        elif edit[0] == "parameters":
            tensor["parameters"] = edit[2]
        elif edit[0] == "data":
            tensor["data"] = [1, 2, 3]
        else:
            _apply(header, ("tensor", *edit[1:]), 3)
    for key, value in top:
        header[key] = value
    head = json.dumps(header, separators=(",", ":")).encode()
    if duplicate:
        head = _duplicate_key(head, duplicate)
    body = head + b"".join(blobs.get(t.get("name"), b"") for t in header["inputs"] if isinstance(t, dict))
    size = {"exact": str(len(head)), "short": str(len(head) - 1), "long": str(len(body) + 1), "zero": "0",
            "text": "x", "trailing": str(len(head))}[length]  # fmt: skip
    if length == "trailing":  # a byte past the last tensor
        body += b"\x00"
    typed = typed_v2(body, size, decoders(version, LIMITS), LIMITS)
    if typed is None:
        return
    general = _general(body, size, version.signature)
    fast = binary_feeds(typed, LIMITS)
    if fast is not None:
        assert not isinstance(general[0], int), f"binary_feeds accepted; general: {general}"
        assert fast[1] == general[2]
        _same_feeds(fast[0], general[1])
    try:
        answer = v2_feeds(typed.request, version.signature, LIMITS, binary=typed.binary)
    except RequestError as exc:
        assert general == (exc.status, exc.message)
        return
    assert not isinstance(general[0], int), f"typed accepted; general: {general}"
    _same_request(typed.request, general[0])
    assert answer[1] == general[2]
    _same_feeds(answer[0], general[1])


@pytest.mark.parametrize("rows", [1, 3])
def test_typed_decoding_takes_the_plain_bodies(rows):
    """The bodies clients send are decoded typed: rows in any order, with the optional fields."""
    version = _version(True)
    dec = decoders(version, LIMITS)
    frame = synthetic_rows(rows, seed=3, null_fraction=0.3)
    plain = v2_payload(frame)
    full = {**v2_payload(frame), "id": "r:1", "model_name": MODEL, "model_version": "1",
            "parameters": {"binary_data_output": True}, "outputs": [{"name": "probability", "parameters": {"binary_data": True}}]}  # fmt: skip
    full["inputs"] = list(reversed(full["inputs"]))
    for obj in (plain, full):
        body = orjson.dumps(obj)
        typed = typed_v2(body, None, dec, LIMITS)
        assert typed is not None and typed.rows == rows
        request, feeds, n = _general(body, None, version.signature)
        _same_request(typed.request, request)
        _same_feeds(typed.feeds, feeds)
    body, size = v2_binary_payload(frame)
    typed = typed_v2(body, str(size), dec, LIMITS)
    assert typed is not None and typed.feeds is None and len(typed.binary) == len(body) - size
    feeds, n = binary_feeds(typed, LIMITS)  # the layout clients send: decoded a list at a time
    _same_feeds(feeds, _general(body, str(size), version.signature)[1])


def test_versions_with_the_same_inputs_share_their_decoders():
    assert decoders(_version(True), LIMITS) is decoders(_version(True), LIMITS)
    assert decoders(_version(True), LIMITS) is not decoders(_version(False), LIMITS)
    assert decoders(_version(True), LIMITS) is not decoders(_version(True), Limits(max_string_length=8))


def _swap_input(obj: dict) -> None:
    """`hour` twice and `minute` missing: as many inputs as the signature has."""
    obj["inputs"] = [t for t in obj["inputs"] if t["name"] != "minute"] + [next(t for t in obj["inputs"] if t["name"] == "hour")]


_REFUSED = {
    "FP32 overflow": lambda o: _tensor(o, "temp")["data"].__setitem__(0, 3.5e38),
    "FP32 overflow, integer": lambda o: _tensor(o, "temp")["data"].__setitem__(0, 2**128),
    "INT64 overflow": lambda o: _tensor(o, "hour")["data"].__setitem__(0, 2**63),
    "boolean in INT64": lambda o: _tensor(o, "hour")["data"].__setitem__(0, True),
    "boolean in FP32": lambda o: _tensor(o, "temp")["data"].__setitem__(0, False),
    "null in INT64": lambda o: _tensor(o, "hour")["data"].__setitem__(0, None),
    "long string": lambda o: _tensor(o, "dest")["data"].__setitem__(0, "X" * 17),
    "input twice, one missing": _swap_input,
    "unknown input": lambda o: _tensor(o, "hour").__setitem__("name", "bogus"),
    "unknown output": lambda o: o.__setitem__("outputs", [{"name": "logits"}]),
    "id with a newline": lambda o: o.__setitem__("id", "r-1\n"),
    "shape rows mismatch": lambda o: _tensor(o, "visib").__setitem__("shape", [3, 1]),
    "binary size without the extension": lambda o: _tensor(o, "hour").__setitem__("parameters", {"binary_data_size": 16}),
}


def _tensor(obj: dict, name: str) -> dict:
    return next(t for t in obj["inputs"] if t["name"] == name)


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_what_the_general_path_refuses_is_left_to_it(case):
    version = _version(False)
    obj = {"inputs": [{"name": c, "datatype": s.datatype, "shape": [2, 1], "data": [_ROW[c]] * 2}
                      for c, s in zip(COLUMNS, TEST_INPUTS, strict=True)]}  # fmt: skip
    body = json.dumps(obj, separators=(",", ":")).encode()
    assert typed_v2(body, None, decoders(version, LIMITS), LIMITS) is not None  # the unchanged body is taken
    _REFUSED[case](obj)
    body = json.dumps(obj, separators=(",", ":")).encode()
    assert isinstance(_general(body, None, version.signature)[0], int)
    assert typed_v2(body, None, decoders(version, LIMITS), LIMITS) is None


@pytest.mark.slow
def test_a_version_with_other_inputs_answers_by_its_own_signature(make_repo, start_server, rows):
    """The body is decoded before routing, with the inputs of some loaded version; a request routed
    to a version whose inputs differ (here: which columns are nullable) is decoded again for it."""
    import pandas as pd

    from driftloop.package import write_sha256sums

    root = make_repo({"1": "v1", "2": "v1"})
    for version, column in (("1", "dewp"), ("2", "temp")):  # each refuses a null the other takes
        path = root / MODEL / version / "signature.json"
        sig = json.loads(path.read_text())
        next(s for s in sig["inputs"] if s["name"] == column)["nullable"] = False
        path.write_text(json.dumps(sig))
        reference = pd.read_parquet(root / MODEL / version / "reference.parquet")  # the warm-up rows
        reference[column] = reference[column].fillna(0.0)
        reference.to_parquet(root / MODEL / version / "reference.parquet")
        write_sha256sums(root / MODEL / version)
    client = start_server(root)  # loads the newest; then the other
    assert client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}}).status_code == 200
    for version, column, other in (("1", "dewp", "temp"), ("2", "temp", "dewp")):
        payload = v2_payload(rows.iloc[:1].assign(temp=20.0, dewp=10.0))
        payload["model_version"] = version
        _tensor(payload, other)["data"] = [None]
        r = client.post(f"/v2/models/{MODEL}/infer", json=payload)
        assert r.status_code == 200, r.text
        _tensor(payload, other)["data"] = [1.0]  # so that the other version's decoding takes the body
        _tensor(payload, column)["data"] = [None]
        r = client.post(f"/v2/models/{MODEL}/infer", json=payload)
        assert r.status_code == 400 and f"inputs[{column}]" in r.json()["error"], (version, r.text)
        r = client.post(f"/v2/models/{MODEL}/versions/{version}/infer", json={**payload, "model_version": None})
        assert r.status_code in (400, 422), r.text


@settings(max_examples=200, deadline=None)
@given(
    columns=st.lists(
        st.lists(st.sampled_from(["UA", "AA", "JFK", "EWR", "B6", "", "É", "A\x00", "LONGER", "a:b", "x" * 16, "x" * 17]),
                 min_size=3, max_size=3) | st.sampled_from([["UA"] * 3, ["JFK", "LGA", "EWR"], ["B6", "9E", "DL"]]),
        min_size=1, max_size=3,
    ),
)  # fmt: skip
def test_bytes_columns_decoded_together_agree_with_one_at_a_time(columns):
    """`fixed_width_columns` (every BYTES tensor of a run at once) gives what `bytes_elements` gives
    for each tensor, or None; the first sighting of a layout is None (nothing built yet)."""
    from serving.wire import _COLUMNS_SEEN, bytes_elements, fixed_width_columns

    blobs = [b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in column) for column in columns]
    buf = memoryview(b"".join(blobs))
    sizes = [len(b) for b in blobs]
    _COLUMNS_SEEN.clear()
    assert fixed_width_columns(buf, 3, sizes, 16) is None
    got = fixed_width_columns(buf, 3, sizes, 16)
    if got is None:
        return
    for blob, column, array in zip(blobs, columns, got, strict=True):
        expected = bytes_elements("x", memoryview(blob), 3, 16)  # raises on anything refused
        assert array.dtype.kind == "U" and array.shape == (3, 1) and list(array[:, 0]) == list(expected) == column


def test_a_header_seen_before_is_still_checked_against_its_limits_and_tensors():
    """Accepted binary headers are kept by their bytes (a client sends the same one for every batch
    of one shape); the limits and every request's tensors are still checked."""
    version = _version(False)  # temp and dewp not nullable
    blobs = dict(_BLOBS)
    for column in ("temp", "dewp"):
        for position in range(3):
            _set_element(blobs, column, position, 1.5)
    head = _BINARY[:_HEADER_SIZE]
    body = head + b"".join(blobs[t["name"]] for t in _HEADER["inputs"])
    for _ in range(2):  # the second time from the kept header
        typed = typed_v2(body, str(_HEADER_SIZE), decoders(version, LIMITS), LIMITS)
        assert binary_feeds(typed, LIMITS) is not None
    small = Limits(max_rows=2, max_string_length=16)
    typed = typed_v2(body, str(_HEADER_SIZE), decoders(version, small), small)
    assert binary_feeds(typed, small) is None  # 3 rows: over these limits (the general path's 413)
    typed = typed_v2(body + b"\x00", str(_HEADER_SIZE), decoders(version, LIMITS), LIMITS)
    assert binary_feeds(typed, LIMITS) is None  # a byte past the last tensor
    _set_element(blobs, "dewp", 1, math.nan)
    body = head + b"".join(blobs[t["name"]] for t in _HEADER["inputs"])
    typed = typed_v2(body, str(_HEADER_SIZE), decoders(version, LIMITS), LIMITS)
    assert typed is not None and binary_feeds(typed, LIMITS) is None
    with pytest.raises(RequestError, match=r"inputs\[dewp\]: row 1"):
        v2_feeds(typed.request, version.signature, LIMITS, binary=typed.binary)


@pytest.mark.parametrize("layout_max", [0, 1 << 18])
@pytest.mark.parametrize("values", [["JFK", "LGA", "EWR"], ["JFK", "LG\x00", "EWR"], ["JFK", "LGÉ", "EWR"],
                                    ["JFK", "LG", "EWR"], ["A", "B", "C"], ["", "", ""]])  # fmt: skip
def test_fixed_width_bytes_with_and_without_a_layout(values, layout_max, monkeypatch):
    """`fixed_width_ascii` checks a tensor against a kept layout, or (too large to keep) in two
    steps: either way it returns what `bytes_elements` returns, or None."""
    import serving.wire as wire

    monkeypatch.setattr(wire, "_LAYOUT_MAX_BYTES", layout_max)
    buf = memoryview(b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values))
    got = wire.fixed_width_ascii(buf, len(values), 16)
    valid = all(v and v.isascii() and "\x00" not in v for v in values) and len({len(v) for v in values}) == 1
    assert (got is not None) == valid
    if got is not None:
        assert list(got[:, 0]) == list(wire.bytes_elements("x", buf, len(values), 16)) == values


_EDGE_FLOATS = [0.0, -0.0, 2.0**53, -(2.0**53), 2.0**53 - 1, 9007199254740991.5, 3.4e38, 3.5e38, 1e39, 1e308, 5e-324]
_EDGE_INTS = [0, -1, 2**53, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["INT64", "FP32", "FP64"]),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 30)),
    data=st.data(),
)
def test_number_block_declines_exactly_the_numbers_out_of_range(kind, shape, data):
    """`number_block` (the typed paths' numbers -> numpy) returns None exactly when a value is past
    INT64 (INT64) or of 2**53 or more in magnitude (floats; ints given to a float column beyond
    2**53 reach it as such floats), and otherwise the arrays `column_array` (the general path)
    makes, dtype, NaN for null and the sign of zero included."""
    k, n = shape
    if kind == "INT64":
        value = st.integers(-(2**63), 2**63 - 1) | st.sampled_from(_EDGE_INTS) | st.integers(-(2**70), 2**70)
    else:  # what msgspec gives a `float | None` field: floats (JSON integers too, as floats), None
        value = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(_EDGE_FLOATS) | st.none()
    cols = data.draw(st.lists(st.lists(value, min_size=n, max_size=n), min_size=k, max_size=k))
    block = columns.number_block(tuple(cols), kind, n)
    flat = [x for c in cols for x in c]
    if kind == "INT64":
        out_of_range = any(not -(2**63) <= x < 2**63 for x in flat)
    else:
        out_of_range = any(x is not None and abs(x) >= 2**53 for x in flat)
    assert (block is None) == out_of_range
    if block is None:
        return
    spec = TensorSpec(name="x", datatype=kind, shape=[-1, 1], nullable=True)
    assert block.shape == (k, n) and block.flags.c_contiguous
    _same_feeds({i: block[i].reshape(-1, 1) for i in range(k)},
                {i: columns.column_array("x", spec, c, LIMITS) for i, c in enumerate(cols)})  # fmt: skip


_BULK = synthetic_rows(40, seed=3)


@pytest.mark.parametrize(
    ("column", "value", "taken"),
    [("temp", 1e39, False), ("temp", -1e39, False), ("temp", 1e308, False), ("temp", 2**53, False),
     ("temp", -(2**53), False), ("temp", 2**64, False), ("temp", 9007199254740991.5, False), ("temp", 3.4e38, False),
     ("temp", 2**53 - 1, True), ("temp", -(2**53) + 1, True), ("temp", -0.0, True), ("temp", -0, True),
     ("temp", None, True), ("temp", 5e-324, True), ("hour", 2**63 - 1, True), ("hour", -(2**63), True),
     ("hour", 2**63, False), ("hour", -(2**63) - 1, False), ("hour", 2**64, False)],
)  # fmt: skip
@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "small"])
def test_fast_paths_take_exactly_the_numbers_in_their_range(column, value, taken, bulk, monkeypatch):
    """v2 JSON (`typed_v2`, read as a bulk body or a small one) and records (`records_fast`) at 40
    rows: each takes the body exactly when the value is within INT64 (INT64) or below 2**53 in
    magnitude (floats: the general path decides the rest), and then gives the general path's
    arrays, -0.0 and null (NaN) included."""
    from serving.validation import parse_records, records_fast, records_feeds

    monkeypatch.setattr(v2_typed, "_BULK_BYTES", 0 if bulk else 10**9)
    version = _version(True)
    obj = v2_payload(_BULK)
    next(t for t in obj["inputs"] if t["name"] == column)["data"][7] = value
    body = json.dumps(obj, separators=(",", ":")).encode()  # any integer (orjson stops at 64 bits)
    typed = typed_v2(body, None, decoders(version, LIMITS), LIMITS)
    assert (typed is not None) == taken
    if typed is not None:
        request, feeds, rows = _general(body, None, version.signature)
        assert typed.rows == rows == 40
        _same_feeds(typed.feeds, feeds)
    instances = json.loads(json.dumps(records_payload(_BULK)))
    instances["instances"][7][column] = value
    body = json.dumps(instances, separators=(",", ":")).encode()
    fast = records_fast(body, version.signature, LIMITS)
    assert (fast is not None) == taken
    if fast is not None:
        expected, rows = records_feeds(parse_records(body), version.signature, LIMITS, body=body)
        assert fast[1] == rows == 40 and list(fast[0]) == list(expected)
        _same_feeds(fast[0], expected)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.text(max_size=4), min_size=1, max_size=6)
    | st.integers(1, 6).flatmap(lambda w: st.lists(st.text(st.characters(max_codepoint=0x7F), min_size=w, max_size=w),
                                                   min_size=1, max_size=6)),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
    ascii_only=st.booleans(),
    extra=st.integers(-1, 1),
)  # fmt: skip
@example(values=["\x7fJ|"], separators=(",", ":"), ascii_only=True, extra=0)  # DEL: escaped by `json.dumps`
@example(values=["\x7fJ|", "abc"], separators=(", ", ": "), ascii_only=False, extra=0)  # DEL as itself
def test_json_fixed_width_strings_are_the_strings_a_parser_reads(values, separators, ascii_only, extra):
    """`json_fixed_width_ascii` on a JSON array of strings (quotes, backslashes, control and
    non-ASCII characters, mixed lengths, both separators) gives the strings `json.loads` reads, as
    `[n, 1]` fixed-width unicode, or None; and None when told another count of strings."""
    raw = json.dumps(values, separators=separators, ensure_ascii=ascii_only).encode()
    n = len(values) + extra
    got = json_fixed_width_ascii(raw, n, LIMITS.max_string_length)
    if extra:
        assert got is None
        return
    plain = (len(set(map(len, values))) == 1 and 0 < len(values[0]) <= LIMITS.max_string_length
             and b"\\" not in raw  # no escape (a quote, a backslash; controls, DEL or more if `ascii_only`)
             and all(0x20 <= ord(c) <= 0x7F for v in values for c in v))  # fmt: skip
    assert (got is not None) == plain
    if got is not None:
        assert got.dtype.kind == "U" and got.shape == (n, 1) and got[:, 0].tolist() == json.loads(raw)
