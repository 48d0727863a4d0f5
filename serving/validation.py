"""Request bodies -> ONNX Runtime feeds, checked against the model's signature.

Three request shapes:
  * Open Inference Protocol v2 `InferenceRequest` in JSON: named tensors `{name, shape, datatype,
    data}`, `data` flat (row-major) or nested. Every field the protocol defines is accepted
    (`id`, `model_name`, `model_version`, `parameters`, `inputs`, `outputs`; per tensor `name`,
    `shape`, `datatype`, `parameters`, `data`), anything else is refused (422).
  * The same with the binary tensor data extension (`Inference-Header-Content-Length`): the JSON
    header, then each tensor with `parameters.binary_data_size` as raw little-endian bytes in
    input order (BYTES: 4-byte little-endian length + UTF-8 bytes per element), decoded straight
    into numpy.

The request models are strict (no "5" -> 5, no true -> 1): what the OpenAPI document calls invalid,
the server refuses (`serving/openapi.py` is generated from these models).
  * Records (`RecordsRequest`): `{"instances": [{column: value, ...}, ...]}`, one object per row.

One set of rules at every batch size, checked column by column (a set of the column's Python
types, then one numpy conversion; no per-value Python loop on the path that accepts):
  * an integer column (INT64) takes JSON integers, declared as any v2 integer datatype (INT8..INT64,
    UINT8..UINT64); each value must fit the declared datatype's range (INT32 holding 2**40 is a 400)
    and INT64; booleans are not integers.
  * a float column (FP32) takes JSON integers and floats, declared FP32 or FP64; each value must be
    finite in the declared datatype and in the column's; booleans and strings are not numbers.
  * a BYTES column takes strings of at most `max_string_length` characters.
  * a nullable column (the FP32 weather columns) takes null, or a missing key in a record; both
    become NaN, which the graph routes as training did.
  * duplicate keys in any JSON object are refused (400 naming the key): the fast path compares
    the count of key separators in the raw bytes with the keys the parser kept, and an exact
    re-parse names the key when they differ.

Every failure is a `RequestError` with an HTTP status and a message that names the field:
  * 422: the body is not JSON or not the request model (pydantic's error, with its location);
  * 400: the body does not fit the signature (missing/extra/duplicate input or key, wrong datatype,
    shape mismatch, a value of the wrong type or out of its datatype's range, a null or non-finite
    value in a non-nullable column, a string longer than the limit, bad binary framing);
  * 413: more rows than the limit (the byte-size limit is checked earlier, in `serving.http`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from driftloop.schema import OUTPUT, Signature, TensorSpec
from serving.wire import (
    RequestError,
    bytes_elements,
    check_duplicate_keys,
    count_keys,
    fixed_width_ascii,
    loads,
)

M = TypeVar("M", bound=BaseModel)
_NONE = type(None)

MAX_REQUEST_ID = 128
# A request id (the `x-request-id` header or a v2 body's `id`): 1..128 printable ASCII characters,
# not starting or ending with a space (HTTP strips those from header values, so an id that has
# them could not travel in the header unchanged). One regex, the same in ECMA-262 (the OpenAPI
# document), the Rust regex crate (pydantic) and Python `re` (`serving.http.request_id_of`).
REQUEST_ID_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
# A model or version folder name as the repository takes it: no "/", not starting with "."
# (`serving.repository.ModelRepository._folder`).
NAME_PATTERN = r"^[^/.][^/]*$"
# The smallest magnitude that rounds to infinity in float32 (round half to even; FP32's largest
# value has an odd mantissa): below it a number is finite as FP32, as the large-batch path's
# `astype(float32)` + `isfinite` has it, so the verdict does not depend on the batch size.
FP32_ROUNDS_TO_INF = 2.0**128 - 2.0**103


def _json_integer(value: Any) -> Any:
    """An integral JSON number (7 or 7.0, as JSON Schema's `integer`) as an int; anything else as is."""
    if type(value) is float and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


# The request models are strict (no "5" -> 5, no true -> 1): what the OpenAPI document calls
# invalid, the server refuses. Integers are the one exception, as JSON Schema has it: 7.0 is 7.
# A tensor dimension: at most 2**53, where JSON numbers stop being exact integers (the row limit,
# far below it, is a 413 later).
Dimension = Annotated[int, Field(le=2**53), BeforeValidator(_json_integer)]


@dataclass(frozen=True)
class Limits:
    """Per-request limits: rows and characters per BYTES value."""

    max_rows: int = 10_000
    max_string_length: int = 64


class RequestInput(BaseModel):
    """One named input tensor of a v2 request (`data` absent when sent as binary)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    shape: list[Dimension] = Field(min_length=1, max_length=4)
    datatype: str = Field(max_length=16)
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    """A requested output of a v2 request (only `probability` exists)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The v2 `POST .../infer` body: every field the Open Inference Protocol defines, no others.

    `model_name` / `model_version` are optional (KServe's client sends `model_name`); when given
    they must agree with the URL.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID, pattern=REQUEST_ID_PATTERN)
    model_name: str | None = Field(None, max_length=256)
    model_version: str | None = Field(None, max_length=64)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    def binary_output(self) -> bool:
        """True when the client asked for the output as binary (`binary_data_output`, or per output)."""
        if self.parameters and self.parameters.get("binary_data_output") is True:
            return True
        return any(o.parameters and o.parameters.get("binary_data") is True for o in self.outputs or ())


class RecordsRequest(BaseModel):
    """The records body `POST /v1/models/{name}:predict`: one JSON object per row."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instances: list[dict[str, Any]] = Field(min_length=1)


class LoadParameters(BaseModel):
    """`parameters` of a load / unload body: the version folder (other keys are ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Annotated[str, StringConstraints(min_length=1, pattern=NAME_PATTERN)] | Annotated[
        int, Field(ge=0), BeforeValidator(_json_integer)
    ] | None = Field(None, description="version folder; default the latest on disk (load) or every version (unload)")


class LoadRequest(BaseModel):
    """Body of `POST /v2/repository/models/{name}/load` (optional): which version to load."""

    model_config = ConfigDict(extra="forbid", strict=True)

    parameters: LoadParameters | None = None


class TrafficRequest(BaseModel):
    """Body of `POST /v2/repository/models/{name}/traffic`.

    `weights` are percentages per version: each finite and >= 0, summing to 100 (versions left
    out get 0), so `{"1": 50}` is refused instead of silently meaning 100%. Null returns to "the
    latest loaded version takes 100%".
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    weights: dict[str, float] | None = Field(
        description="percent of traffic per version, summing to 100; null = the latest loaded version takes all"
    )


class IndexRequest(BaseModel):
    """Body of `POST /v2/repository/index` (optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ready: bool = False


# ---------------------------------------------------------------------------- JSON
def _pydantic_error(exc: ValidationError) -> RequestError:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return RequestError(422, "invalid request body: " + "; ".join(parts) + more)


def parse_model(model: type[M], body: bytes) -> M:
    """Validate raw JSON bytes into `model`, refusing duplicate keys.

    Raises:
        RequestError: 422 with the first errors' locations and messages; 400 naming a duplicate key.
    """
    obj = loads(body)
    try:
        result = model.model_validate(obj)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    keys, colons = count_keys(obj)
    check_duplicate_keys(body, keys, colons)
    return result


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


# ---------------------------------------------------------------------------- columns
_INT_RANGE = {
    name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
    for name, dt in {
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
    }.items()
}
_INT64_MIN, _INT64_MAX = _INT_RANGE["INT64"]
_FLOAT_DTYPE = {"FP32": np.float32, "FP64": np.float64}
_ACCEPTED = {
    "BYTES": ("BYTES",),
    "INT64": tuple(_INT_RANGE),
    "FP32": ("FP32", "FP64"),
    "FP64": ("FP64", "FP32"),
}
_WIRE_DTYPE = {
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP32": "<f4",
    "FP64": "<f8",
}


def _what(x: Any) -> str:
    return "null" if x is None else f"{type(x).__name__} {x!r}"[:120]


def _first(values: Any, ok: Any) -> tuple[int, Any]:
    """The first row whose value fails `ok` (error path only)."""
    for i, x in enumerate(values):
        if not ok(x):
            return i, x
    raise AssertionError("no offending value")  # pragma: no cover - callers checked one exists


def column_array(
    field: str, spec: TensorSpec, values: Any, limits: Limits, declared: str | None = None
) -> np.ndarray:
    """Convert one column's values (a flat list or tuple, None for null) to the signature's dtype.

    Args:
        field: the name used in error messages (e.g. `inputs[temp]` or `instances[*].temp`).
        spec: the column's signature entry.
        values: flat sequence of JSON values, one per row.
        limits: string-length limit.
        declared: the v2 datatype the client declared (default: the column's); its range applies.

    Returns:
        `[n, 1]` array: object (str) for BYTES, int64 for INT64, float32/float64 for FP32/FP64.

    Raises:
        RequestError: 400 naming `field` and the first offending row.
    """
    kind = spec.datatype
    declared = declared or kind
    types = set(map(type, values))
    if kind == "BYTES":
        if not types <= {str}:
            i, x = _first(values, lambda v: type(v) is str)
            raise RequestError(400, f"{field}: row {i} is {_what(x).split(' ')[0]}; expected a string (BYTES)")
        if values and max(map(len, values)) > limits.max_string_length:
            i, x = _first(values, lambda v: len(v) <= limits.max_string_length)
            raise RequestError(
                400, f"{field}: row {i} is {len(x)} characters long; the limit is {limits.max_string_length}"
            )
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(-1, 1)
    if kind == "INT64":
        if float in types:  # JSON and JSON Schema's `integer` do not tell 7.0 from 7 (up to 2**53)
            values = [_json_integer(v) for v in values]
            types = set(map(type, values))
        if not types <= {int}:
            i, x = _first(values, lambda v: type(v) is int)
            raise RequestError(400, f"{field}: row {i} is {_what(x)}; expected integers ({declared})")
        lo, hi = _INT_RANGE[declared]
        try:
            arr = np.array(values, dtype=np.int64)  # OverflowError outside INT64: no range check needed
        except OverflowError:
            arr = None
        if arr is None or (declared != "INT64" and (arr.min() < lo or arr.max() > hi)):
            lo, hi = max(lo, _INT64_MIN), min(hi, _INT64_MAX)
            i, x = _first(values, lambda v: lo <= v <= hi)
            raise RequestError(400, f"{field}: row {i} is {x!r}, out of the range of {declared} and {kind}")
        return arr.reshape(-1, 1)
    # FP32 / FP64
    allowed = {int, float, _NONE} if spec.nullable else {int, float}
    if not types <= allowed:
        i, x = _first(values, lambda v: type(v) in allowed)
        if x is None:
            raise RequestError(400, f"{field}: row {i} is null; the column is not nullable and must be finite")
        raise RequestError(400, f"{field}: row {i} is {_what(x)}; expected numbers ({declared})")
    dtype = _FLOAT_DTYPE[kind]
    with np.errstate(over="ignore", invalid="ignore"):
        if int in types:  # ints convert through float64, as JSON numbers are doubles
            try:
                wide = np.array(values, dtype=np.float64)  # None -> NaN; JSON itself has no NaN or Infinity
            except OverflowError:  # an integer beyond float64
                wide = np.array(
                    [math.inf if type(v) is int and abs(v) > 2**1023 else v for v in values], dtype=np.float64
                )
            out = wide.astype(dtype, copy=False)
        else:  # floats (and nulls) only: one conversion, the same rounding as float64 then `dtype`
            out = np.array(values, dtype=dtype)
        checked = out
        if declared == "FP32" and kind != "FP32":  # the declared datatype's range applies too
            checked = out.astype(np.float32)
        # Only null gives NaN (allowed above only in a nullable column), so infinity is the one
        # non-finite value left to refuse: an overflow of the column's (or declared) float type.
        if np.isinf(checked).any():
            _check_finite(field, spec, values, out.astype(np.float64), checked)
    return out.reshape(-1, 1)


def _check_finite(field: str, spec: TensorSpec, values: Any, wide: np.ndarray, out: np.ndarray) -> None:
    """400 at the first value that is not finite in the column (NaN = null is fine when nullable)."""
    finite = np.isfinite(out)
    if finite.all():
        return
    bad = ~finite & ~np.isnan(wide) if spec.nullable else ~finite
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = values[i] if values is not None else wide[i]
        rule = "must be finite" if spec.nullable else "is not nullable and must be finite"
        what = "null" if raw is None else f"{raw!r} (not finite as {spec.datatype})"
        raise RequestError(400, f"{field}: row {i} is {what}; the column {rule}")


def binary_column(
    field: str, spec: TensorSpec, declared: str, buf: memoryview, n: int, limits: Limits
) -> np.ndarray:
    """Decode one tensor of the binary extension straight into numpy, with the JSON path's rules.

    Args:
        field: the name used in error messages.
        spec: the column's signature entry.
        declared: the v2 datatype the client declared.
        buf: exactly this tensor's bytes.
        n: the rows its shape declares.
        limits: string-length limit.

    Returns:
        `[n, 1]` array in the column's dtype.

    Raises:
        RequestError: 400 on a size that does not match the shape, bad UTF-8, a NaN in a
            non-nullable column, or a value out of the column's range.
    """
    if spec.datatype == "BYTES":
        out = fixed_width_ascii(buf, n, limits.max_string_length)
        if out is None:
            out = bytes_elements(field, buf, n, limits.max_string_length)
        return out.reshape(-1, 1)
    wire = np.dtype(_WIRE_DTYPE[declared])
    if len(buf) != n * wire.itemsize:
        raise RequestError(
            400, f"{field}: binary_data_size {len(buf)} bytes; shape needs {n} x {wire.itemsize} bytes of {declared}"
        )
    arr = np.frombuffer(buf, dtype=wire)
    if spec.datatype == "INT64":
        if declared == "UINT64" and arr.size and int(arr.max()) > _INT64_MAX:
            i = int(np.flatnonzero(arr > _INT64_MAX)[0])
            raise RequestError(400, f"{field}: row {i} is {int(arr[i])}, out of the range of INT64")
        return arr.astype(np.int64, copy=False).reshape(-1, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(_FLOAT_DTYPE[spec.datatype], copy=False)
    # NaN on the wire is null (fine in a nullable column); infinity, sent or from an FP64 -> FP32
    # overflow, never is. One ufunc and one reduction per column on the accepting path.
    if (np.isinf(out) if spec.nullable else ~np.isfinite(out)).any():
        _check_finite(field, spec, None, arr.astype(np.float64, copy=False), out)
    return out.reshape(-1, 1)


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


# ---------------------------------------------------------------------------- v2
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
        check_duplicate_keys(header, *_v2_keys(obj))
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
    if "id" in obj and not (len(obj["id"]) <= MAX_REQUEST_ID and _REQUEST_ID.match(obj["id"])):
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
    return feeds, n_rows


def _one_row_v2(
    request: InferenceRequest, specs: dict[str, TensorSpec], limits: Limits
) -> dict[str, np.ndarray] | None:
    """Feeds for a valid one-row v2 request declared in the signature's own datatypes, else None.

    Reuses `_one_record` (the same rules as `column_array`, value by value), so the verdict is
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
    return _one_record(record, list(specs.values()), limits)


# ---------------------------------------------------------------------------- records
_MISSING = object()
# The smallest float64 that float32 rounds to infinity: its max plus half an ulp (2**104 / 2).
_FP32_OVERFLOW = FP32_ROUNDS_TO_INF


def _one_record(record: dict[str, Any], specs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray] | None:
    """Feeds for one record that is valid, in one pass; None at the first thing that is not.

    Only the happy path lives here: on None, `records_feeds` runs its column checks, which name
    the field. So this path accepts exactly what the general one accepts, with fewer numpy calls
    (about 60% of a single-row request's validation time went to per-column array set-up).
    """
    if len(record) > len(specs):
        return None
    feeds: dict[str, np.ndarray] = {}
    seen = 0
    for spec in specs:
        x = record.get(spec.name, _MISSING)
        if x is not _MISSING:
            seen += 1
        t = type(x)
        kind = spec.datatype
        if kind == "BYTES":
            if t is not str or len(x) > limits.max_string_length:
                return None
            arr = np.empty((1, 1), dtype=object)
            arr[0, 0] = x
        elif kind == "INT64":
            if t is not int or not _INT64_MIN <= x <= _INT64_MAX:
                return None
            arr = np.array([[x]], dtype=np.int64)
        else:
            if x is None or x is _MISSING:
                if not spec.nullable:
                    return None
                x = math.nan
            elif t is float or t is int:
                try:
                    f = float(x)
                except OverflowError:
                    return None
                if not math.isfinite(f) or (kind == "FP32" and not abs(f) < _FP32_OVERFLOW):
                    return None
            else:
                return None
            arr = np.array([[x]], dtype=_FLOAT_DTYPE[kind])
        feeds[spec.name] = arr
    if seen != len(record):  # a key that is not a column
        return None
    return feeds


def records_feeds(
    request: RecordsRequest | list[dict[str, Any]],
    signature: Signature,
    limits: Limits,
    *,
    body: bytes | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Feeds for the session from records; a missing nullable column is null (NaN).

    Args:
        request: the records (a `RecordsRequest` or its `instances` list of dicts).
        signature: the routed version's signature.
        limits: row and string limits.
        body: the raw JSON body, for the duplicate-key check (None: not checked).

    Returns:
        ({input name: `[n, 1]` array}, n rows).

    Raises:
        RequestError: 400 / 413 naming the column (and row).
    """
    instances = request.instances if isinstance(request, RecordsRequest) else request
    n = len(instances)
    specs = signature.inputs
    feeds: dict[str, np.ndarray] | None = None
    if n == 1:  # the common case of a person or a service scoring one flight
        feeds = _one_record(instances[0], specs, limits)
    if feeds is None:
        feeds = _records_columns(instances, specs, limits)
    if body is not None:

        def string_colons() -> int:  # values of the BYTES columns, and the keys (column names)
            values = sum("".join(feeds[s.name][:, 0]).count(":") for s in specs if s.datatype == "BYTES")
            names = sum(name.count(":") * count for name, count in _key_counts(instances).items())
            return values + names

        check_duplicate_keys(body, 1 + sum(map(len, instances)), string_colons)
    return feeds, n


def _key_counts(instances: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in instances:
        for key in record:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _records_columns(instances: list[dict[str, Any]], specs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray]:
    n = len(instances)
    if n > limits.max_rows:
        raise RequestError(413, f"instances: {n} rows; the limit is {limits.max_rows} per request")
    names = [s.name for s in specs]
    columns = None
    if sum(map(len, instances)) == n * len(names):
        # As many keys as columns in total; if every record has every column, none has another key.
        # One C-level lookup of every column per record, then a transpose: about 25% less than
        # one `map(itemgetter(name))` pass per column.
        try:
            if len(names) == 1:
                columns = [list(map(itemgetter(names[0]), instances))]
            else:
                columns = list(zip(*map(itemgetter(*names), instances), strict=True))
        except KeyError:
            columns = None
    if columns is None:
        columns = _records_columns_checked(instances, specs)
    return {
        spec.name: column_array(f"instances[*].{spec.name}", spec, column, limits)
        for spec, column in zip(specs, columns, strict=True)
    }


def _records_columns_checked(instances: list[dict[str, Any]], specs: list[TensorSpec]) -> list[list[Any]]:
    """Columns of records that may lack nullable columns or carry unknown keys (400 naming them)."""
    known = {s.name for s in specs}
    extra = sorted(set().union(*instances) - known)
    if extra:
        i = next(i for i, inst in enumerate(instances) if not set(inst) <= known)
        raise RequestError(400, f"instances[{i}]: unknown column(s) {', '.join(extra[:5])}")
    columns = []
    for spec in specs:
        if not spec.nullable:
            for i, inst in enumerate(instances):
                if spec.name not in inst:
                    raise RequestError(400, f"instances[{i}].{spec.name}: missing; the column is not nullable")
        columns.append([inst.get(spec.name) for inst in instances])
    return columns


def parse_records(body: bytes) -> list[dict[str, Any]]:
    """The `instances` of a records body, with the envelope checked (no pydantic pass per record).

    Raises:
        RequestError: 422 naming the location, as pydantic would for `RecordsRequest`.
    """
    obj = loads(body)
    if type(obj) is not dict:
        raise RequestError(422, "invalid request body: body: Input should be a valid dictionary")
    extra = sorted(set(obj) - {"instances"})
    if extra:
        raise RequestError(422, f"invalid request body: {extra[0]}: Extra inputs are not permitted")
    instances = obj.get("instances", _MISSING)
    if instances is _MISSING:
        raise RequestError(422, "invalid request body: instances: Field required")
    if type(instances) is not list or not instances:
        raise RequestError(422, "invalid request body: instances: should be a non-empty list of objects")
    if set(map(type, instances)) != {dict}:
        i = next(i for i, x in enumerate(instances) if type(x) is not dict)
        raise RequestError(422, f"invalid request body: instances.{i}: Input should be a valid dictionary")
    return instances
