"""Typed decoding of v2 infer bodies (msgspec): the fast path ahead of `parse_v2` + `v2_feeds`.

`parse_v2` parses the JSON into dicts and lists (orjson), walks it to vouch for the request model
(`_plain_v2`), then `v2_feeds` walks it again per tensor and per value. Here msgspec decodes the
body straight into structs typed from the routed version's signature, so the parser itself checks
most of the rules while it reads, with no dict per tensor:
  * the request's fields and lengths (`InferenceRequest`), every key known, no nulls;
  * each tensor is a struct chosen by its `name` (a tagged union: an unknown input fails here),
    declared in the column's own datatype (`Literal`), `data` typed per column; a JSON tensor
    carries `data`, a binary header's tensor carries `parameters.binary_data_size` instead (its
    data is checked by `v2_feeds`).

JSON bodies are read by one of two decoders, by size (`_BULK_BYTES`). A small body's values are
checked while parsing (strings of at most `max_string_length` characters, integers within INT64,
numbers below 2**53 in magnitude: exact as integers and finite in FP32; null only in a nullable
column), then go to numpy in one `np.fromiter` per datatype. A bulk body's numbers are read
unbounded and checked on the arrays (`serving.columns.number_block`: the same ranges, about 10%
less CPU a request than a bound per value), and its BYTES tensors are read from their raw JSON
(valid: msgspec checks it while skipping it) by `_strings`: fixed-width ASCII strings straight
from their bytes into a unicode array (`json_fixed_width_ascii`), others decoded value by value.

What is left is checked here on the decoded structs (every input once, one row count, shapes
`[n, 1]` or `[n]`, the outputs, the request id's pattern, the duplicate-key count). Anything the
decoder refuses or this path does not vouch for (another declared datatype, nested `data`, a
backslash escape, a ':' count that does not match, a number out of those ranges, an integer
orjson would not read as one, nesting deeper than the stack, any error) returns None, and the
general path decides from the raw body as before, with its own message: this path only accepts,
never refuses, so errors and their order are the general path's by construction. The hypothesis
tests in tests/serving check that whatever it accepts (either decoder), the general path accepts
with the same request fields and the same arrays (a BYTES column may be fixed-width unicode where
the general path has `str` objects: the same strings, which ONNX Runtime reads faster).

The decoders depend on the signature's inputs and the string limit; they are built once per
(inputs, limit) and shared by the versions that have the same inputs.
"""

from __future__ import annotations

import functools
import re
import typing
import weakref
from itertools import accumulate, chain
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from driftloop.schema import NUMPY_DTYPE, OUTPUT, TensorSpec
from serving.columns import (
    _EXACT_INTEGERS,
    _INT64_MAX,
    _INT64_MIN,
    _WIRE,
    binary_block,
    binary_column,
    number_block,
)
from serving.request_models import MAX_REQUEST_ID, REQUEST_ID_PATTERN, InferenceRequest, Limits
from serving.wire import (
    RequestError,
    count_byte,
    count_keys,
    fixed_width_ascii,
    fixed_width_columns,
    json_fixed_width_ascii,
)

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_DATA, _SHAPE, _PARAMETERS = attrgetter("data"), attrgetter("shape"), attrgetter("parameters")
_DATATYPE, _SIZE = attrgetter("datatype"), attrgetter("parameters.binary_data_size")


class _Decoders:
    """The decoders of one (inputs, string limit): JSON bodies (bulk and small), binary extension headers."""

    __slots__ = ("specs", "json", "small", "header", "groups", "names", "header_types", "datatypes", "numeric",
                 "itemsizes", "runs", "strings", "regroup", "__weakref__")

    def __init__(self, specs: tuple[TensorSpec, ...], max_string_length: int) -> None:
        self.specs = specs
        self.names = [s.name for s in specs]
        string = Annotated[str, msgspec.Meta(max_length=max_string_length)]
        raw_tensors, small_tensors, header_tensors = [], [], []
        for i, spec in enumerate(specs):
            kind = spec.datatype
            # `data` of a bulk body: BYTES as its raw JSON (`_strings` reads it), numbers unbounded
            # (`number_block` checks their range on the arrays: a bound per value here cost ~10%).
            # Of a small body: every value checked while parsing (strings of at most the limit,
            # integers within INT64, numbers below 2**53 in magnitude), then one `np.fromiter`.
            if kind == "BYTES":
                bulk: Any = msgspec.Raw
                small: Any = list[string]
            elif kind == "INT64":
                bulk, small = list[int], list[_Int64]
            elif kind in ("FP32", "FP64"):
                bulk, small = (list[float | None], list[_Number | None]) if spec.nullable else (list[float], list[_Number])
            else:  # pragma: no cover - a datatype the server does not score (BOOL): no typed path
                raise ValueError(kind)
            common = {"tag_field": "name", "tag": spec.name, "forbid_unknown_fields": True, "gc": False,
                      "namespace": {"name": spec.name, "index": i}}  # fmt: skip
            for tensors, data in ((raw_tensors, bulk), (small_tensors, small)):
                tensors.append(msgspec.defstruct(
                    f"Json{i}", [("shape", _Shape), ("datatype", Literal[kind]), ("data", data),
                                 ("parameters", dict[str, Any], None)], **common))  # fmt: skip
            header_tensors.append(msgspec.defstruct(
                f"Header{i}", [("shape", _Shape), ("datatype", Annotated[str, msgspec.Meta(max_length=16)]),
                               ("parameters", _BinaryParameters)], **common))  # fmt: skip
            header_tensors[-1].data = None  # read by `v2_feeds` as `RequestInput.data`: binary data has none
        # (decoder, tensor types in the signature's order, bulk?) of JSON bodies: bulk ones, small ones.
        self.json = msgspec.json.Decoder(_request_type(raw_tensors)), raw_tensors, True
        self.small = msgspec.json.Decoder(_request_type(small_tensors)), small_tensors, False
        # A BYTES tensor's raw `data` that `json_fixed_width_ascii` does not take, value by value.
        self.strings = msgspec.json.Decoder(list[string])
        self.header = msgspec.json.Decoder(_request_type(header_tensors))
        self.header_types = header_tensors
        # The binary layout of a header listing every input in the signature's order and datatypes:
        # runs of adjacent columns of one datatype and nullability, (first, end, specs) each.
        self.datatypes = [s.datatype for s in specs]
        numeric = [i for i, s in enumerate(specs) if s.datatype != "BYTES"]
        self.numeric = _take(numeric) if numeric else lambda values: ()  # their sizes, from all sizes
        self.itemsizes = [_WIRE[s.datatype].itemsize for s in specs if s.datatype != "BYTES"]
        runs: list[tuple[int, int, list[TensorSpec]]] = []
        for i, spec in enumerate(specs):
            last = runs[-1] if runs else None
            if last is not None and (last[2][0].datatype, last[2][0].nullable) == (spec.datatype, spec.nullable):
                runs[-1] = (last[0], i + 1, [*last[2], spec])
            else:
                runs.append((i, i + 1, [spec]))
        # (first, end, specs, names, datatype) of each run
        self.runs = [(a, b, run, [s.name for s in run], run[0].datatype) for a, b, run in runs]
        # Columns converted together: one numpy array per datatype (and per column for BYTES).
        groups: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault(spec.datatype, []).append(i)
        # (datatype, columns' values from a list in the signature's order, names)
        self.groups = [(kind, _take(indices), [specs[i].name for i in indices]) for kind, indices in groups.items()]
        # Columns of one datatype not adjacent (e.g. FP32, INT64, FP32): the feeds, built a group at a
        # time, are put back in the signature's order, as every other path gives them (the
        # prediction log's columns follow it).
        self.regroup = [i for indices in groups.values() for i in indices] != list(range(len(specs)))


# `RequestInput.shape`: 1..4 dimensions, each an integer of at most 2**53 (JSON's 7.0, which the
# request model reads as 7, fails here: the general path takes it) and at least -2**63 (orjson reads
# a smaller one as a float, or past float64 refuses the body: the general path answers).
_Shape = Annotated[list[Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=2**53)]], msgspec.Meta(min_length=1, max_length=4)]
_Int64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
_Number = Annotated[float, msgspec.Meta(gt=-_EXACT_INTEGERS, lt=_EXACT_INTEGERS)]


class _BinaryParameters(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A binary tensor's `parameters` holding `binary_data_size` only (other keys: the general path).

    Read by `v2_feeds` as the dict it is there (`.get`); its value is checked there (an integer
    >= 0), as for any request. Within INT64: orjson reads an integer past 64 bits as a float (which
    `v2_feeds` refuses with its own message) and one past float64 not at all.
    """

    binary_data_size: Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]

    def get(self, key: str, default: Any = None) -> Any:
        return self.binary_data_size if key == "binary_data_size" else default


def _take(indices: list[int]) -> Any:
    """A function picking these items of a list, as a tuple (C-level `itemgetter` for several)."""
    if len(indices) == 1:
        i = indices[0]
        return lambda values: (values[i],)
    return itemgetter(*indices)


_Output = msgspec.defstruct(
    "Output", [("name", Annotated[str, msgspec.Meta(max_length=256)]), ("parameters", dict[str, Any], None)],
    forbid_unknown_fields=True, gc=False,
)  # fmt: skip


def _request_type(tensors: list[type]) -> type:
    """The request struct over these tensor structs (the fields and limits of `InferenceRequest`)."""
    return msgspec.defstruct(
        "Request",
        [
            ("inputs", Annotated[list[typing.Union[tuple(tensors)]], msgspec.Meta(min_length=1)]),  # noqa: UP007
            ("id", Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REQUEST_ID)], None),
            ("model_name", Annotated[str, msgspec.Meta(max_length=256)], None),
            ("model_version", Annotated[str, msgspec.Meta(max_length=64)], None),
            ("parameters", dict[str, Any], None),
            ("outputs", list[_Output], None),
        ],
        forbid_unknown_fields=True,
        gc=False,
        namespace={"binary_output": InferenceRequest.binary_output},
    )


@functools.lru_cache(maxsize=32)
def _decoders_for(inputs: tuple[tuple[str, str, bool], ...], max_string_length: int) -> _Decoders | None:
    specs = tuple(TensorSpec(name=n, datatype=d, shape=[-1, 1], nullable=nu) for n, d, nu in inputs)
    if any(s.datatype not in ("BYTES", "INT64", "FP32", "FP64") or len(s.name) > 256 for s in specs):
        return None  # BOOL is not scored; a name longer than `RequestInput.name` allows is a 422 there
    return _Decoders(specs, max_string_length)


_BY_VERSION: weakref.WeakKeyDictionary[Any, tuple[int, _Decoders | None]] = weakref.WeakKeyDictionary()


def decoders(mv: Any, limits: Limits) -> _Decoders | None:
    """The decoders of a loaded version's inputs (looked up once per version), or None (no typed path).

    Versions with the same inputs share one `_Decoders`, so `decoders(a) is decoders(b)` says a body
    decoded for `a` fits `b`.
    """
    cached = _BY_VERSION.get(mv)
    if cached is None or cached[0] != limits.max_string_length:
        key = tuple((s.name, s.datatype, s.nullable) for s in mv.signature.inputs)
        cached = _BY_VERSION[mv] = (limits.max_string_length, _decoders_for(key, limits.max_string_length))
    return cached[1]


class TypedV2:
    """A v2 request the typed path vouched for.

    Attributes:
        request: the request (the attributes of `InferenceRequest` the routes read, and `binary_output()`).
        decoders: the decoders it was read with (it fits a version with `decoders(mv) is this`).
        feeds, rows: the validated feeds of a JSON body; None for a binary one (`binary` holds its tail).
        binary: the bytes after the JSON header, or None.
    """

    __slots__ = ("request", "decoders", "feeds", "rows", "binary", "header")

    def __init__(self, request: Any, dec: _Decoders, feeds: dict[str, np.ndarray] | None, rows: int,
                 binary: memoryview | None) -> None:  # fmt: skip
        self.request, self.decoders, self.feeds, self.rows, self.binary = request, dec, feeds, rows, binary
        self.header: _Header | None = None


def typed_v2(body: bytes, header_length: str | None, dec: _Decoders | None, limits: Limits) -> TypedV2 | None:
    """Decode a v2 infer body with the typed decoders; None whenever the general path must decide.

    Args:
        body: the raw body (JSON, or the binary extension's header and tensors).
        header_length: the `Inference-Header-Content-Length` header, or None (plain JSON).
        dec: `decoders(mv, limits)` of the version expected to answer (None: no typed path).
        limits: row and string limits (the string limit is the decoders').

    Returns:
        The request with its feeds (JSON) or its binary tail, or None. Never raises a `RequestError`:
        a body this path does not accept goes to `parse_v2`, which names the field.
    """
    if dec is None:
        return None
    if header_length is None:
        if b"\\" in body:  # an escape: the ':' count below would not be exact
            return None
        decoder, types, bulk = dec.json if len(body) >= _BULK_BYTES else dec.small
        try:
            request = decoder.decode(body)
        except (msgspec.MsgspecError, RecursionError):  # nesting deeper than the stack: msgspec's RecursionError
            return None
        if not _plain_request(request):
            return None
        fed = _json_feeds(request, dec, types, bulk, limits)
        if fed is None or not _no_duplicate_keys(body, request, True):
            return None
        return TypedV2(request, dec, fed[0], fed[1], None)
    try:
        size = int(header_length)
    except ValueError:
        return None
    if not 0 < size <= len(body):
        return None
    header = body[:size]
    key = (header, dec, limits)
    entry = _HEADERS.get(key) if size <= _HEADER_CACHE_BYTES else None
    if entry is None:
        if b"\\" in header:
            return None
        try:
            request = dec.header.decode(header)
        except (msgspec.MsgspecError, RecursionError):
            return None
        types = list(map(type, request.inputs))
        if types != dec.header_types and len(set(types)) != len(types):  # an input twice: the general path names it
            return None
        if not _plain_request(request) or not _no_duplicate_keys(header, request, False):
            return None
        entry = _Header(request)
        if size <= _HEADER_CACHE_BYTES:
            if len(_HEADERS) >= _HEADER_CACHE_SIZE:
                _HEADERS.clear()  # atomic (servers on other threads share it); a client's next header refills it
            _HEADERS[key] = entry
    typed = TypedV2(entry.request, dec, None, 0, memoryview(body)[size:])
    typed.header = entry
    return typed


class _Header:
    """A binary request's header the typed path accepted: its request, and the layout `binary_feeds`
    derives from it (None until computed, False when not the plain layout)."""

    __slots__ = ("request", "layout")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.layout: Any = None


# Accepted binary headers by their exact bytes (with the decoders and limits that read them): a
# client sending batches of one shape (fixed-width strings, one batch size) sends the same header
# every time, and decoding and checking it again would give the same request and layout. A pure
# memo: the tensors' bytes are decoded and checked on every request. Bounded in entries and size.
_HEADER_CACHE_SIZE = 64
_HEADER_CACHE_BYTES = 16 * 1024
_HEADERS: dict[tuple[bytes, _Decoders, Limits], _Header] = {}


def _plain_request(request: Any) -> bool:
    """Checks the decoder cannot make: the id's pattern, the outputs named `probability`, integers
    in the free-form `parameters` that orjson reads as the same integers."""
    rid = request.id
    if rid is not None and _REQUEST_ID.fullmatch(rid) is None:  # ^...$ with fullmatch: no final newline
        return False
    if request.parameters and not _orjson_integers(request.parameters):
        return False
    outputs = request.outputs
    if outputs:
        for o in outputs:
            if o.name != OUTPUT or (o.parameters and not _orjson_integers(o.parameters)):
                return False
    return True


_ORJSON_INT_MIN, _ORJSON_INT_MAX = -(2**63), 2**64 - 1


def _orjson_integers(obj: dict[str, Any]) -> bool:
    """True when every integer in a free-form object is one orjson reads as that integer.

    msgspec (`Any`) reads any integer literal as an int; orjson, which the general path parses with,
    reads one outside [-2**63, 2**64 - 1] as a float and refuses one past float64 (a 422): such a
    body goes to the general path. Walked with a stack (the object may nest deeper than Python's
    recursion limit).
    """
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        t = type(value)
        if t is dict:
            stack.extend(value.values())
        elif t is list:
            stack.extend(value)
        elif t is int and not _ORJSON_INT_MIN <= value <= _ORJSON_INT_MAX:
            return False
    return True


def _json_feeds(request: Any, dec: _Decoders, tensor_types: list[type], bulk: bool, limits: Limits
                ) -> tuple[dict[str, np.ndarray], int] | None:  # fmt: skip
    """Feeds of a JSON request whose every input is present once, declared in its own datatype.

    Attribute by attribute over all tensors (C-level maps and list counts), not tensor by tensor.
    `tensor_types`: the tensor structs of the decoder that read it, in the signature's order;
    `bulk`: read by the bulk decoder (raw BYTES, numbers unbounded), else by the small one.
    """
    inputs = request.inputs
    k = len(dec.specs)
    types = list(map(type, inputs))
    if types != tensor_types:  # not every input once in the signature's order
        if len(types) != k or len(set(types)) != k:  # one missing, or one twice: the general path names it
            return None
        ordered: list[Any] = [None] * k
        for t in inputs:
            ordered[t.index] = t
        inputs = ordered
    shapes = list(map(_SHAPE, inputs))
    n = shapes[0][0]
    if not 1 <= n <= limits.max_rows or shapes.count([n, 1]) + shapes.count([n]) != k:
        return None
    parameters = list(map(_PARAMETERS, inputs))
    if parameters.count(None) != k:
        for p in parameters:  # binary data announced without the extension: the general path's 400
            if p is not None and ("binary_data_size" in p or not _orjson_integers(p)):
                return None
    column = list(map(_DATA, inputs))  # a list of numbers, or a BYTES tensor's raw JSON
    feeds: dict[str, np.ndarray] = {}
    for kind, take, names in dec.groups:
        values = take(column)
        if bulk and kind == "BYTES":  # raw JSON: column by column
            for name, raw in zip(names, values, strict=True):
                strings = _strings(raw, n, dec, limits)
                if strings is None:
                    return None
                feeds[name] = strings
            continue
        if list(map(len, values)).count(n) != len(values):
            return None
        if bulk:  # within INT64; below 2**53 in magnitude, so finite in FP32 too (else None)
            block = number_block(values, kind, n)
            if block is None:
                return None
        else:  # checked by the decoder: one flat pass; null (nullable floats only) -> NaN
            # BYTES: str objects, as `column_array` keeps them.
            block = np.fromiter(chain.from_iterable(values), NUMPY_DTYPE[kind], len(names) * n)
        feeds.update(zip(names, block.reshape(len(names), n, 1), strict=True))  # a contiguous [n, 1] view each
    if dec.regroup:
        feeds = {name: feeds[name] for name in dec.names}
    return feeds, n


# From this body size (about 100 rows of the flight schema) the bulk decoder reads the body: its
# conversions cost less per value and more per request (a few numpy calls a column) than the
# small decoder's, which keeps a single row's cost (the bulk one would add ~2 us to its ~20 us).
_BULK_BYTES = 16 * 1024
# From this many rows, `json_fixed_width_ascii` (about 5 us of fixed numpy cost a column) costs less
# than decoding `str` objects (about 20 ns each, and ONNX Runtime reads them ~10 ns slower each).
_FIXED_WIDTH_ROWS = 128


def _strings(raw: msgspec.Raw, n: int, dec: _Decoders, limits: Limits) -> np.ndarray | None:
    """A BYTES tensor's `data` as its raw JSON (valid) -> `[n, 1]` array, or None (the general path).

    From `_FIXED_WIDTH_ROWS` rows, fixed-width ASCII strings straight from the bytes
    (`json_fixed_width_ascii`: a unicode array, no `str` per value); else decoded value by value
    into `str` objects (an object array, as `column_array` keeps them). Either way `n` strings of
    at most the string limit.
    """
    if n >= _FIXED_WIDTH_ROWS:
        fixed = json_fixed_width_ascii(raw, n, limits.max_string_length)
        if fixed is not None:
            return fixed
    try:
        values = dec.strings.decode(raw)
    except (msgspec.MsgspecError, RecursionError):  # not a list of strings (a deep one: RecursionError)
        return None
    if len(values) != n:
        return None
    return np.fromiter(values, object, n).reshape(n, 1)


def _no_duplicate_keys(body: bytes, request: Any, json: bool) -> bool:
    """True when the body's ':' count proves the decoder kept every key it read (no duplicate).

    The exact count of `serving.wire.check_duplicate_keys`, on the structs: keys of every object the
    decoder kept plus ':' inside strings. A body without a backslash (checked by the caller) has a
    ':' for each key and each such character, so a duplicate key (which the decoder overwrites)
    leaves one more. False sends the body to the general path, which names the key.

    Args:
        body: the JSON (a binary request's header).
        request: its decoded struct.
        json: True for a JSON body (tensors with `data`), False for a binary header.
    """
    keys = 1  # "inputs"
    extra = []  # free-form objects, counted by walking them
    if request.id is not None:
        keys += 1
    if request.model_name is not None:
        keys += 1
    if request.model_version is not None:
        keys += 1
    if request.parameters is not None:
        keys += 1
        extra.append(request.parameters)
    if json:
        parameters = list(map(_PARAMETERS, request.inputs))
        if parameters.count(None) != len(parameters):
            for p in parameters:
                if p is not None:
                    keys += 1
                    extra.append(p)
        keys += 4 * len(request.inputs)  # name, shape, datatype, data
    else:  # name, shape, datatype, parameters and its one key, binary_data_size
        keys += 5 * len(request.inputs)
    if request.outputs is not None:
        keys += 1
        for o in request.outputs:
            keys += 1
            if o.parameters is not None:
                keys += 1
                extra.append(o.parameters)
    colons = 0
    for obj in extra:
        a, b = count_keys(obj)
        keys, colons = keys + a, colons + b
    found = count_byte(body, b":")
    if found == keys:
        return True
    for value in (request.id, request.model_name, request.model_version):
        if value is not None:
            colons += value.count(":")
    colons += sum(o.name.count(":") for o in request.outputs or ())
    for t in request.inputs:
        colons += t.name.count(":") + t.datatype.count(":")
        if not json:
            continue
        data = t.data
        if type(data) is msgspec.Raw:  # a BYTES tensor's raw array: ':' only inside its strings
            colons += count_byte(memoryview(data), b":")
        elif data and type(data[0]) is str:  # a BYTES tensor's strings
            colons += "".join(data).count(":")
    return found == keys + colons


def binary_feeds(typed: TypedV2, limits: Limits) -> tuple[dict[str, np.ndarray], int] | None:
    """Feeds of a binary request whose header lists every input in the signature's order and datatypes.

    The accepting path of `v2_feeds` (and its `_binary_feeds`) for the layout clients send, with
    the per-tensor checks made a list at a time against the layout precomputed per signature:
    every shape `[n, 1]` or `[n]`, every size >= 0 and together the whole binary tail, each numeric
    tensor `n` values of its datatype. Then the same decoding: `binary_block` per run of adjacent
    numeric columns; per run of adjacent BYTES tensors `fixed_width_columns` (each tensor of one
    width), else `fixed_width_ascii` per group of one size, else `binary_column` per tensor. None for anything else (another order or datatype, any value that
    one of them refuses): then `v2_feeds` decides, naming the field.
    """
    dec = typed.decoders
    binary = typed.binary
    header = typed.header
    layout = None if header is None else header.layout
    if layout is None:
        layout = _plain_layout(typed.request.inputs, dec, limits)
        if header is not None:
            header.layout = layout
    if layout is False:
        return None
    n, sizes, ends = layout
    if ends[-1] != len(binary):  # the tensors' sizes add up to the binary tail
        return None
    feeds: dict[str, np.ndarray] = {}
    for first, end, specs, names, kind in dec.runs:
        buf = binary[ends[first] - sizes[first] : ends[end - 1]]
        if kind != "BYTES":
            arrays = binary_block(specs, kind, buf, n)
            if arrays is None:
                return None
            feeds.update(zip(names, arrays, strict=True))
            continue
        columns = fixed_width_columns(buf, n, sizes[first:end], limits.max_string_length)
        if columns is not None:  # every tensor of the run of one width: decoded together
            feeds.update(zip(names, columns, strict=True))
            continue
        i = first
        while i < end:  # adjacent BYTES tensors of one size: one fixed-width decoding
            j = i + 1
            while j < end and sizes[j] == sizes[i]:
                j += 1
            part = binary[ends[i] - sizes[i] : ends[j - 1]]
            block = fixed_width_ascii(part, n * (j - i), limits.max_string_length) if j - i > 1 else None
            if block is not None:
                for m in range(i, j):
                    feeds[dec.names[m]] = block[(m - i) * n : (m - i + 1) * n]
            else:
                for m in range(i, j):
                    try:
                        feeds[dec.names[m]] = binary_column(
                            "", dec.specs[m], "BYTES", binary[ends[m] - sizes[m] : ends[m]], n, limits
                        )
                    except RequestError:
                        return None
            i = j
    return feeds, n


def _plain_layout(inputs: list[Any], dec: _Decoders, limits: Limits) -> tuple[int, list[int], list[int]] | bool:
    """(rows, sizes, ends) of a header listing every input in the signature's order and datatypes,
    each `[n, 1]` or `[n]`, sizes >= 0, numeric ones `n` values of their datatype; else False."""
    if list(map(type, inputs)) != dec.header_types or list(map(_DATATYPE, inputs)) != dec.datatypes:
        return False  # an input missing, another order, another declared datatype
    shapes = list(map(_SHAPE, inputs))
    n = shapes[0][0]
    if not 1 <= n <= limits.max_rows or shapes.count([n, 1]) + shapes.count([n]) != len(inputs):
        return False
    sizes = list(map(_SIZE, inputs))
    if min(sizes) < 0 or dec.numeric(sizes) != tuple(map(n.__mul__, dec.itemsizes)):
        return False
    return n, sizes, list(accumulate(sizes))
