"""Request bodies -> ONNX Runtime feeds, checked against the model's signature.

Two request shapes, both pydantic models validated straight from the raw bytes
(`model_validate_json`, no `request.json()`):
  * Open Inference Protocol v2 `InferenceRequest`: named tensors `{name, shape, datatype, data}`,
    `data` flat (row-major) or nested, datatypes BYTES / FP32 / FP64 / INT64 (INT32 accepted for
    integer columns, FP64 for FP32 columns). An integer column takes integral JSON numbers only
    (7 or 7.0, as JSON Schema's `integer`), so a truncation never happens silently; a float
    column takes integers and floats.
  * Records (`RecordsRequest`): `{"instances": [{column: value, ...}, ...]}`, one object per row.

Every failure is a `RequestError` with an HTTP status and a message that names the field:
  * 422: the body is not JSON or not the request model (pydantic's error, with its location);
  * 400: the body does not fit the signature (missing/extra/duplicate input, wrong datatype,
    shape mismatch, a value of the wrong type, a null or non-finite value in a non-nullable column,
    a string longer than the limit);
  * 413: more rows than the limit (the byte-size limit is checked earlier, in `serving.app`).
Nullable columns (the FP32 weather columns) take JSON null, or a missing key in a record; both
become NaN, which the graph routes as training did.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from driftloop.schema import OUTPUT, Signature, TensorSpec

_INT64_MAX = np.iinfo(np.int64).max
M = TypeVar("M", bound=BaseModel)

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


class RequestError(Exception):
    """A client error: `status` (400, 413, 422) and a one-line message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Per-request limits: rows and characters per BYTES value."""

    max_rows: int = 10_000
    max_string_length: int = 64


class RequestInput(BaseModel):
    """One named input tensor of a v2 request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    shape: list[Dimension] = Field(min_length=1, max_length=4)
    datatype: str = Field(max_length=16)
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    """A requested output of a v2 request (only `probability` exists)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The v2 `POST .../infer` body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID, pattern=REQUEST_ID_PATTERN)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


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
    """Body of `POST /v2/repository/models/{name}/traffic`: {version: weight}, or null for "latest"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    weights: dict[str, float] | None


class IndexRequest(BaseModel):
    """Body of `POST /v2/repository/index` (optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ready: bool = False


def parse_model(model: type[M], body: bytes) -> M:
    """Validate raw JSON bytes into `model`.

    Raises:
        RequestError: 422 with the first errors' locations and messages.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False)[:3]:
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg']}")
        more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise RequestError(422, "invalid request body: " + "; ".join(parts) + more) from None


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


def column_array(field: str, spec: TensorSpec, values: list[Any], limits: Limits) -> np.ndarray:
    """Convert one column's values (a flat list, None for null) to the signature's dtype.

    Args:
        field: the name used in error messages (e.g. `inputs[temp]` or `instances[*].temp`).
        spec: the column's signature entry.
        values: flat list of JSON values, one per row.
        limits: string-length limit.

    Returns:
        `[n, 1]` array: object (str) for BYTES, int64 for INT64, float32/float64 for FP32/FP64.

    Raises:
        RequestError: 400 naming `field` and the first offending row.
    """
    kind = spec.datatype
    if kind == "BYTES":
        for i, x in enumerate(values):
            if type(x) is not str:
                what = "null" if x is None else type(x).__name__
                raise RequestError(400, f"{field}: row {i} is {what}; expected a string (BYTES)")
        longest = max(map(len, values), default=0)
        if longest > limits.max_string_length:
            i = next(i for i, x in enumerate(values) if len(x) > limits.max_string_length)
            raise RequestError(
                400,
                f"{field}: row {i} is {len(values[i])} characters long; the limit is {limits.max_string_length}",
            )
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(-1, 1)
    if len(values) <= _SMALL:
        return _small_column(field, spec, values)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, huge ints
        arr = None
    if arr is not None and arr.ndim != 1:  # a list where a scalar belongs
        arr = None
    if kind == "INT64":
        if arr is not None and arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
            raise RequestError(400, f"{field}: a value exceeds the INT64 range")
        if arr is None or arr.dtype.kind not in "iu":
            whole = _integral(values)
            if whole is not None:
                return column_array(field, spec, whole, limits)
            raise RequestError(400, f"{field}: {_first_bad(values, int)}; expected integers (INT64)")
        return arr.astype(np.int64).reshape(-1, 1)
    # FP32 / FP64
    if arr is None or arr.dtype.kind not in "fiu":
        try:
            if not all(x is None or type(x) in (int, float) for x in values):
                raise TypeError
            arr = np.array(values, dtype=np.float64)  # None -> NaN
        except (TypeError, OverflowError):
            raise RequestError(
                400, f"{field}: {_first_bad(values, float)}; expected numbers ({kind})"
            ) from None
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32 if kind == "FP32" else np.float64)
    finite = np.isfinite(out)
    if not finite.all():
        isnan_in = np.isnan(arr.astype(np.float64))
        bad = ~finite & ~isnan_in if spec.nullable else ~finite
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raw = values[i]
            what = "null" if raw is None else repr(raw)
            extra = "" if raw is None else f" (not finite as {kind})"
            rule = "must be finite" if spec.nullable else "is not nullable and must be finite"
            raise RequestError(400, f"{field}: row {i} is {what}{extra}; the column {rule}")
    return out.reshape(-1, 1)


_SMALL = 16  # below this many rows, per-value Python checks beat numpy's per-call overhead


def _small_column(field: str, spec: TensorSpec, values: list[Any]) -> np.ndarray:
    """`column_array` for a few rows of a numeric column: the same rules, checked value by value."""
    if spec.datatype == "INT64":
        for x in values:
            if type(x) is not int or not -(2**63) <= x < 2**63:
                whole = _integral(values)
                if whole is not None:
                    return _small_column(field, spec, whole)
                raise RequestError(400, f"{field}: {_first_bad(values, int)}; expected integers (INT64)")
        return np.array(values, dtype=np.int64).reshape(-1, 1)
    limit = FP32_ROUNDS_TO_INF if spec.datatype == "FP32" else math.inf
    out = []
    for i, x in enumerate(values):
        t = type(x)
        if t is float or t is int:
            try:
                f = float(x)
            except OverflowError:
                f = math.inf
            if f != f:  # NaN
                if not spec.nullable:
                    raise RequestError(
                        400, f"{field}: row {i} is NaN; the column is not nullable and must be finite"
                    )
            elif not -limit < f < limit:
                raise RequestError(
                    400,
                    f"{field}: row {i} is {x!r} (not finite as {spec.datatype}); the column must be finite",
                )
            out.append(f)
        elif x is None and spec.nullable:
            out.append(math.nan)
        elif x is None:
            raise RequestError(
                400, f"{field}: row {i} is null; the column is not nullable and must be finite"
            )
        else:
            raise RequestError(
                400, f"{field}: {_first_bad(values, float)}; expected numbers ({spec.datatype})"
            )
    return np.array(out, dtype=np.float32 if spec.datatype == "FP32" else np.float64).reshape(-1, 1)


def _integral(values: list[Any]) -> list[Any] | None:
    """`values` with every integral float (1315.0) as an int; None when there is none to convert.

    JSON (RFC 8259) and JSON Schema's `integer` do not tell 1315.0 from 1315, so neither does an
    integer column; a fraction (1315.5) is still refused, never truncated, and so is a float past
    2**53.
    """
    if not any(_whole(x) for x in values):
        return None
    return [int(x) if _whole(x) else x for x in values]


def _whole(x: Any) -> bool:
    # Up to 2**53 only: past it a float is not exactly the integer a client wrote (JSON parsers
    # read an integer beyond 64 bits as the nearest float), so it is refused, not guessed.
    return type(x) is float and x.is_integer() and abs(x) <= 2**53


def _first_bad(values: list[Any], want: type) -> str:
    for i, x in enumerate(values):
        if x is None:
            return f"row {i} is null"
        if isinstance(x, bool) or not isinstance(x, int | float) or (want is int and not isinstance(x, int)):
            return f"row {i} is {type(x).__name__} {x!r}"[:120]
        if isinstance(x, int) and not -(2**63) <= x < 2**63:
            return f"row {i} is out of range"
    return "a value has the wrong type"


_ACCEPTED = {
    "BYTES": ("BYTES",),
    "INT64": ("INT64", "INT32"),
    "FP32": ("FP32", "FP64"),
    "FP64": ("FP64", "FP32"),
}


def v2_feeds(
    request: InferenceRequest, signature: Signature, limits: Limits
) -> tuple[dict[str, np.ndarray], int]:
    """Feeds for the session from a v2 request.

    Returns:
        ({input name: `[n, 1]` array}, n rows).

    Raises:
        RequestError: 400 / 413 naming the input.
    """
    specs = {s.name: s for s in signature.inputs}
    names = [i.name for i in request.inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RequestError(400, f"inputs: duplicate input(s) {', '.join(dupes)}")
    extra = [n for n in names if n not in specs]
    if extra:
        raise RequestError(
            400, f"inputs: unknown input(s) {', '.join(extra[:5])}; the model takes {', '.join(specs)}"
        )
    missing = [n for n in specs if n not in set(names)]
    if missing:
        raise RequestError(400, f"inputs: missing input(s) {', '.join(missing)}")
    if request.outputs:
        unknown = [o.name for o in request.outputs if o.name != OUTPUT]
        if unknown:
            raise RequestError(
                400, f"outputs: unknown output(s) {', '.join(unknown)}; the model has {OUTPUT}"
            )
    n_rows: int | None = None
    feeds: dict[str, np.ndarray] = {}
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
        try:
            flat = _flatten(tensor.data)
        except ValueError as exc:
            raise RequestError(400, f"{field}: {exc}") from None
        if len(flat) != n:
            raise RequestError(400, f"{field}: shape {shape} needs {n} values but data holds {len(flat)}")
        feeds[tensor.name] = column_array(field, spec, flat, limits)
    assert n_rows is not None
    return feeds, n_rows


_MISSING = object()
_FLOAT_DTYPE = {"FP32": np.float32, "FP64": np.float64}


def _one_record(record: dict[str, Any], specs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray] | None:
    """Feeds for one record that is valid, in one pass; None at the first thing that is not.

    Only the happy path lives here: on None, `records_feeds` runs its general checks, which name
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
            if t is not int or not -(2**63) <= x < 2**63:
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
                limit = FP32_ROUNDS_TO_INF if kind == "FP32" else math.inf
                if not -limit < f < limit:  # NaN fails the range test too
                    return None
            else:
                return None
            arr = np.array([[x]], dtype=_FLOAT_DTYPE[kind])
        feeds[spec.name] = arr
    if seen != len(record):  # a key that is not a column
        return None
    return feeds


def records_feeds(
    request: RecordsRequest, signature: Signature, limits: Limits
) -> tuple[dict[str, np.ndarray], int]:
    """Feeds for the session from a records request; a missing nullable column is null (NaN).

    Returns:
        ({input name: `[n, 1]` array}, n rows).

    Raises:
        RequestError: 400 / 413 naming the column (and row).
    """
    instances = request.instances
    n = len(instances)
    if n == 1:  # the common case of a person or a service scoring one flight
        feeds = _one_record(instances[0], signature.inputs, limits)
        if feeds is not None:
            return feeds, 1
    if n > limits.max_rows:
        raise RequestError(413, f"instances: {n} rows; the limit is {limits.max_rows} per request")
    specs = signature.inputs
    known = {s.name for s in specs}
    keys = set(itertools.chain.from_iterable(instances))
    extra = sorted(keys - known)
    if extra:
        i = next(i for i, inst in enumerate(instances) if not set(inst) <= known)
        raise RequestError(400, f"instances[{i}]: unknown column(s) {', '.join(extra[:5])}")
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name = spec.name
        if not spec.nullable:
            for i, inst in enumerate(instances):
                if name not in inst:
                    raise RequestError(400, f"instances[{i}].{name}: missing; the column is not nullable")
        values = [inst.get(name) for inst in instances]
        feeds[name] = column_array(f"instances[*].{name}", spec, values, limits)
    return feeds, n
