"""Open Inference Protocol v2 infer bodies -> feeds: JSON tensors and the binary tensor extension.

`parse_v2` reads the body (and the binary tail); `v2_feeds` checks it against the routed version's
signature. Rules and statuses are described in `serving.validation`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pydantic import ValidationError

from driftloop.schema import OUTPUT, Signature, TensorSpec
from serving.columns import _ACCEPTED, _WIRE_DTYPE, binary_block, binary_column, column_array, one_record
from serving.request_models import (
    MAX_REQUEST_ID,
    REQUEST_ID_PATTERN,
    InferenceRequest,
    Limits,
    _pydantic_error,
)
from serving.wire import RequestError, check_duplicate_keys, count_keys, fixed_width_ascii, loads


def _v2_keys(obj: dict[str, Any], names_checked: bool = False) -> tuple[int, int]:
    """`count_keys` of a v2 request that `InferenceRequest` accepted, without the `data` lists.

    The model fixes the structure (known keys without ':', `shape` of integers), so only the
    strings and the free-form `parameters` need looking at, not every tensor's values. With
    `names_checked`, the inputs' names and datatypes are known to be the signature's (no ':').
    """
    keys, colons = len(obj), 0
    for field in ("id", "model_name", "model_version"):
        value = obj.get(field)
        if type(value) is str:
            colons += value.count(":")
    inputs = obj.get("inputs") or ()
    keys += sum(map(len, inputs))
    if not names_checked:
        colons += sum(t["name"].count(":") + t.get("datatype", "").count(":") for t in inputs)
    for tensor in inputs:
        if "parameters" in tensor and tensor["parameters"]:
            a, b = count_keys(tensor["parameters"])
            keys, colons = keys + a, colons + b
    for tensor in obj.get("outputs") or ():
        a, b = count_keys(tensor)
        keys, colons = keys + a, colons + b
    if obj.get("parameters"):
        a, b = count_keys(obj["parameters"])
        keys, colons = keys + a, colons + b
    return keys, colons


def _object_keys(obj: dict[str, Any]) -> int:
    """Keys of a JSON object, nested objects (and objects in lists) included: `count_keys(obj)[0]`."""
    keys = len(obj)
    for value in obj.values():
        if type(value) is dict or type(value) is list:
            keys += count_keys(value)[0]
    return keys


def _v2_key_count(obj: dict[str, Any]) -> int:
    """The keys `_v2_keys` counts, without the ':' inside strings: what the duplicate-key check
    needs first (the string colons are counted only when the body holds more ':' than keys)."""
    keys = len(obj)
    inputs = obj.get("inputs") or ()
    keys += sum(map(len, inputs))
    for tensor in inputs:
        parameters = tensor.get("parameters")
        if parameters:
            keys += _object_keys(parameters)
    for tensor in obj.get("outputs") or ():
        keys += _object_keys(tensor)
    if obj.get("parameters"):
        keys += _object_keys(obj["parameters"])
    return keys


def _flatten(data: list[Any]) -> list[Any]:
    """Flatten nested lists (row-major); a flat list is returned as is."""
    # Only the first element is checked: a list further on (mixed nesting) is not flattened and
    # fails the element type check of `column_array` instead.
    if not data or type(data[0]) is not list:
        return data
    out: list[Any] = []
    stack = [iter(data)]
    depth = 0
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                depth += 1
                if depth > 4:
                    raise ValueError("data is nested deeper than 4 levels")
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
            depth -= 1
    return out


def parse_v2(body: bytes, header_length: str | None) -> tuple[InferenceRequest, Any, memoryview | None]:
    """Parse a v2 infer body, JSON or binary extension (the JSON header's length given).

    Returns:
        (the request, the parsed JSON for `v2_feeds`' duplicate-key check, the bytes after the
        JSON header or None).

    Raises:
        RequestError: 400 on a bad header length or a duplicate key; 422 on a bad body.
    """
    if header_length is None:
        obj = loads(body)
        tail = None
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise RequestError(400, "inference-header-content-length: not an integer") from None
        if not 0 < size <= len(body):
            raise RequestError(400, f"inference-header-content-length: {size}; the body holds {len(body)} bytes")
        header = body[:size]
        obj = loads(header)
        tail = memoryview(body)[size:]
    request = _plain_v2(obj)
    if request is None:
        try:
            request = InferenceRequest.model_validate(obj)
        except ValidationError as exc:
            raise _pydantic_error(exc) from None
    if tail is not None:  # a JSON `data` of BYTES in the header makes the counts differ: exact path
        check_duplicate_keys(header, _v2_key_count(obj), lambda: _v2_keys(obj)[1])
    return request, obj, tail


class _PlainTensor:
    """A tensor or output of a request `_plain_v2` vouched for: the attributes of `RequestInput`."""

    __slots__ = ("name", "shape", "datatype", "data", "parameters")

    def __init__(self, t: dict[str, Any]) -> None:
        self.name = t["name"]
        self.shape = t.get("shape")
        self.datatype = t.get("datatype")
        self.data = t.get("data")
        self.parameters = t.get("parameters")


class _PlainRequest:
    """A v2 request `_plain_v2` vouched for: the attributes `InferenceRequest` has, read from the dict."""

    __slots__ = ("id", "model_name", "model_version", "parameters", "inputs", "outputs")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.id = obj.get("id")
        self.model_name = obj.get("model_name")
        self.model_version = obj.get("model_version")
        self.parameters = obj.get("parameters")
        self.inputs = [_PlainTensor(t) for t in obj["inputs"]]
        outputs = obj.get("outputs")
        self.outputs = None if outputs is None else [_PlainTensor(o) for o in outputs]

    binary_output = InferenceRequest.binary_output


_ITEMSIZE = {name: np.dtype(dt).itemsize for name, dt in _WIRE_DTYPE.items()}
_REQUEST_KEYS = frozenset(("id", "model_name", "model_version", "parameters", "inputs", "outputs"))
_TENSOR_KEYS = frozenset(("name", "shape", "datatype", "data", "parameters"))
_OUTPUT_KEYS = frozenset(("name", "parameters"))
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def _plain_v2(obj: Any) -> _PlainRequest | None:
    """The request without pydantic when `obj` is plainly one `InferenceRequest` accepts, else None.

    A conservative subset of the model's rules, checked with `type(...) is` (strict: no bool for
    int, no int subclass): every key known and not null, strings within their lengths, the id
    matching `REQUEST_ID_PATTERN`, shapes of 1..4 ints <= 2**53, `data` a list, `parameters`
    objects. Anything else (7.0 in a shape, a null field, a wrong type) returns None and goes
    through `InferenceRequest`, whose error names the field. Validating 16 tensors with pydantic
    cost about 45 us, a sixth of a single-row request; this walk costs a few.
    """
    if type(obj) is not dict or not obj.keys() <= _REQUEST_KEYS:
        return None
    inputs = obj.get("inputs")
    if type(inputs) is not list or not inputs:
        return None
    for key in ("id", "model_name", "model_version"):
        value = obj.get(key, "")
        if type(value) is not str:
            return None
    if "id" in obj and not (len(obj["id"]) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(obj["id"])):
        return None
    if len(obj.get("model_name", "")) > 256 or len(obj.get("model_version", "")) > 64:
        return None
    if "parameters" in obj and type(obj["parameters"]) is not dict:
        return None
    for t in inputs:
        if type(t) is not dict or not t.keys() <= _TENSOR_KEYS:
            return None
        name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
        if type(name) is not str or len(name) > 256 or type(datatype) is not str or len(datatype) > 16:
            return None
        if type(shape) is not list or not 1 <= len(shape) <= 4:
            return None
        for d in shape:
            if type(d) is not int or d > 2**53:
                return None
        if ("data" in t and type(t["data"]) is not list) or ("parameters" in t and type(t["parameters"]) is not dict):
            return None
    if "outputs" in obj:
        outputs = obj["outputs"]
        if type(outputs) is not list:
            return None
        for o in outputs:
            if type(o) is not dict or not o.keys() <= _OUTPUT_KEYS or type(o.get("name")) is not str:
                return None
            if len(o["name"]) > 256 or ("parameters" in o and type(o["parameters"]) is not dict):
                return None
    return _PlainRequest(obj)


def v2_feeds(
    request: InferenceRequest,
    signature: Signature,
    limits: Limits,
    *,
    body: bytes | None = None,
    parsed: Any = None,
    binary: memoryview | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Feeds for the session from a v2 request.

    Args:
        request: the parsed request.
        signature: the routed version's signature.
        limits: row and string limits.
        body: the raw JSON body and `parsed`, its parse, for the duplicate-key check (None: not
            checked, e.g. a request built in code).
        binary: the bytes after the JSON header (binary extension), or None.

    Returns:
        ({input name: `[n, 1]` array}, n rows).

    Raises:
        RequestError: 400 / 413 naming the input.
    """
    specs = {s.name: s for s in signature.inputs}
    names = [i.name for i in request.inputs]
    dupes = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else ()
    if dupes:
        raise RequestError(400, f"inputs: duplicate input(s) {', '.join(dupes)}")
    extra = [n for n in names if n not in specs]
    if extra:
        raise RequestError(400, f"inputs: unknown input(s) {', '.join(extra[:5])}; the model takes {', '.join(specs)}")
    given = set(names)
    missing = [n for n in specs if n not in given]
    if missing:
        raise RequestError(400, f"inputs: missing input(s) {', '.join(missing)}")
    if request.outputs:
        unknown = [o.name for o in request.outputs if o.name != OUTPUT]
        if unknown:
            raise RequestError(400, f"outputs: unknown output(s) {', '.join(unknown)}; the model has {OUTPUT}")
    if binary is None and len(request.inputs) == len(specs):
        feeds1 = _one_row_v2(request, specs, limits)
        if feeds1 is not None:  # the common single-row request, through the records' fast path
            if body is not None:
                keys, colons = _v2_keys(parsed, names_checked=True)
                bytes_columns = [s.name for s in signature.inputs if s.datatype == "BYTES"]
                check_duplicate_keys(
                    body, keys, lambda: colons + "".join(feeds1[c][0, 0] for c in bytes_columns).count(":")
                )
            return feeds1, 1
    if binary is not None and len(request.inputs) == len(specs):
        feeds_b = _binary_feeds(request, specs, limits, binary)
        if feeds_b is not None:  # the common bulk request, decoded in blocks
            return _in_order(feeds_b[0], specs), feeds_b[1]
    n_rows: int | None = None
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        spec = specs[tensor.name]
        field = f"inputs[{tensor.name}]"
        if tensor.datatype not in _ACCEPTED[spec.datatype]:
            raise RequestError(400, f"{field}: datatype {tensor.datatype!r}; expected {spec.datatype}")
        shape = tensor.shape
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
            raise RequestError(400, f"{field}: shape {shape}; expected [n, 1] (or [n]) with n >= 1")
        n = shape[0]
        if n > limits.max_rows:
            raise RequestError(413, f"{field}: {n} rows; the limit is {limits.max_rows} per request")
        if n_rows is None:
            n_rows = n
        elif n != n_rows:
            raise RequestError(400, f"{field}: shape {shape} has {n} rows but other inputs have {n_rows}")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if binary is None or type(size) is not int or size < 0 or tensor.data is not None:
                raise RequestError(
                    400,
                    f"{field}: binary_data_size needs the binary extension (header Inference-Header-Content-Length), "
                    "a non-negative integer, and no data",
                )
            if offset + size > len(binary):
                raise RequestError(400, f"{field}: binary data ends at byte {len(binary)}; this tensor needs {offset + size}")
            feeds[tensor.name] = binary_column(
                field, spec, tensor.datatype, binary[offset : offset + size], n, limits
            )
            offset += size
            continue
        if tensor.data is None:
            raise RequestError(400, f"{field}: no data (and no parameters.binary_data_size)")
        try:
            flat = _flatten(tensor.data)
        except ValueError as exc:
            raise RequestError(400, f"{field}: {exc}") from None
        if len(flat) != n:
            raise RequestError(400, f"{field}: shape {shape} needs {n} values but data holds {len(flat)}")
        feeds[tensor.name] = column_array(field, spec, flat, limits, tensor.datatype)
    if binary is not None and offset != len(binary):
        raise RequestError(400, f"body: {len(binary) - offset} bytes after the last binary tensor")
    if body is not None and binary is None:
        keys, colons = _v2_keys(parsed, names_checked=True)
        bytes_columns = [s.name for s in signature.inputs if s.datatype == "BYTES"]
        check_duplicate_keys(
            body, keys, lambda: colons + sum("".join(feeds[c][:, 0]).count(":") for c in bytes_columns)
        )
    assert n_rows is not None
    return _in_order(feeds, specs), n_rows


def _in_order(feeds: dict[str, np.ndarray], specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """The feeds in the signature's order (tensors may come in any order), as every path gives them:
    the prediction log's columns follow it."""
    return feeds if list(feeds) == list(specs) else {name: feeds[name] for name in specs}


def _one_row_v2(
    request: InferenceRequest, specs: dict[str, TensorSpec], limits: Limits
) -> dict[str, np.ndarray] | None:
    """Feeds for a valid one-row v2 request declared in the signature's own datatypes, else None.

    Reuses `one_record` (the same rules as `column_array`, value by value), so the verdict is
    the general path's; anything unusual (a cast datatype, binary data, a bad value) returns None
    and takes the general path, which names the field.
    """
    record: dict[str, Any] = {}
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        data = tensor.data
        if (
            spec is None
            or tensor.datatype != spec.datatype
            or tensor.shape not in ([1], [1, 1])
            or data is None
            or len(data) != 1
            or tensor.parameters
        ):
            return None
        value = data[0]
        if type(value) is list:
            if len(value) != 1:
                return None
            value = value[0]
        record[tensor.name] = value
    if len(record) != len(specs):
        return None
    return one_record(record, list(specs.values()), limits)


def _binary_feeds(
    request: InferenceRequest, specs: dict[str, TensorSpec], limits: Limits, binary: memoryview
) -> tuple[dict[str, np.ndarray], int] | None:
    """Feeds for a valid request whose every input is binary data, else None.

    The accepting path of `v2_feeds`' tensor loop for the binary extension, with adjacent numeric
    tensors of one datatype decoded as one block (`binary_block`), adjacent BYTES tensors of one
    size as one fixed-width block: about 60% less decoding CPU for the test signature. Anything the loop would refuse (or decodes one
    element at a time) returns None and the loop runs from the start, so its first error is the
    one reported, as before.
    """
    inputs = request.inputs
    n = None
    # (specs, declared, start, end) of each run of adjacent same-typed numeric tensors; BYTES alone
    runs: list[tuple[list[TensorSpec], str, int, int]] = []
    offset = 0
    for tensor in inputs:
        spec = specs[tensor.name]
        declared = tensor.datatype
        shape = tensor.shape
        params = tensor.parameters
        size = params.get("binary_data_size") if params else None
        if (
            declared not in _ACCEPTED[spec.datatype]
            or type(size) is not int
            or size < 0
            or tensor.data is not None
            or len(shape) not in (1, 2)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            return None
        if n is None:
            n = shape[0]
            if not 1 <= n <= limits.max_rows:
                return None
        elif shape[0] != n:
            return None
        end = offset + size
        if end > len(binary) or (spec.datatype != "BYTES" and size != n * _ITEMSIZE[declared]):
            return None
        last = runs[-1] if runs else None
        if (
            last is not None
            and last[1] == declared
            and last[0][0].datatype == spec.datatype
            and last[0][0].nullable == spec.nullable
            and (spec.datatype != "BYTES" or end - last[3] == last[3] - last[2])  # BYTES: same size
        ):
            last[0].append(spec)
            runs[-1] = (last[0], declared, last[2], end)
        else:
            runs.append(([spec], declared, offset, end))
        offset = end
    if offset != len(binary) or n is None:
        return None
    feeds: dict[str, np.ndarray] = {}
    for run_specs, declared, start, end in runs:
        buf = binary[start:end]
        if run_specs[0].datatype == "BYTES":
            # Adjacent BYTES tensors of one size: one fixed-width decoding of all their elements
            # (valid exactly when each is), then a view per tensor; else one tensor at a time.
            k = len(run_specs)
            block = fixed_width_ascii(buf, n * k, limits.max_string_length) if k > 1 else None
            if block is not None:
                for j, spec in enumerate(run_specs):
                    feeds[spec.name] = block[j * n : (j + 1) * n]
                continue
            size = (end - start) // k
            for j, spec in enumerate(run_specs):
                try:
                    feeds[spec.name] = binary_column("", spec, declared, buf[j * size : (j + 1) * size], n, limits)
                except RequestError:
                    return None
            continue
        arrays = binary_block(run_specs, declared, buf, n)
        if arrays is None:
            return None
        for spec, arr in zip(run_specs, arrays, strict=True):
            feeds[spec.name] = arr
    return feeds, n
