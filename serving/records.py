"""Records bodies (`{"instances": [{column: value, ...}, ...]}`) -> feeds, one object per row.

Rules and statuses are described in `serving.validation`.
"""

from __future__ import annotations

import functools
import re
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from driftloop.schema import Signature, TensorSpec
from serving.columns import _EXACT_INTEGERS, _FLOAT_DTYPE, _MISSING, column_array, one_record
from serving.request_models import Limits, RecordsRequest
from serving.wire import RequestError, check_duplicate_keys, loads


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
        feeds = one_record(instances[0], specs, limits)
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


_NEXT_RECORD = re.compile(rb"\}\s*,\s*\{")  # where one record ends and the next begins
_astuple = msgspec.structs.astuple


class _RecordsDecoder:
    """The typed decoding of records bodies with exactly these columns (built once per signature).

    Attributes:
        decoder: msgspec decoder of `{"instances": [record, ...]}`. Each record is a struct with
            every column required and no other key; BYTES is `str` of at most the string limit,
            INT64 `int` (any size), FP32/FP64 `float` (JSON integers included), `| None` only for
            a nullable float column. Field names are `c0..` renamed to the column names, so any
            column name works.
        groups: (datatype, column indices, names) per datatype, in the signature's order.
    """

    __slots__ = ("decoder", "groups")

    def __init__(self, inputs: tuple[tuple[str, str, bool], ...], max_string_length: int) -> None:
        fields = []
        for i, (_, datatype, nullable) in enumerate(inputs):
            kind: Any = {"BYTES": str, "INT64": int}.get(datatype, float)
            if kind is str:  # checked while parsing (a pass of `len` over the column cost ~4% of a request)
                kind = Annotated[str, msgspec.Meta(max_length=max_string_length)]
            fields.append((f"c{i}", kind | None if nullable and kind is float else kind))
        record = msgspec.defstruct(
            "Record", fields, rename={f"c{i}": name for i, (name, _, _) in enumerate(inputs)},
            forbid_unknown_fields=True, gc=False,
        )  # fmt: skip
        envelope = msgspec.defstruct("Records", [("instances", list[record])], forbid_unknown_fields=True)
        self.decoder = msgspec.json.Decoder(envelope)
        groups: dict[str, list[int]] = {}
        for i, (_, datatype, _) in enumerate(inputs):
            groups.setdefault(datatype, []).append(i)
        self.groups = [(kind, indices, [inputs[i][0] for i in indices]) for kind, indices in groups.items()]


@functools.lru_cache(maxsize=32)
def _typed_decoder(inputs: tuple[tuple[str, str, bool], ...], max_string_length: int) -> _RecordsDecoder:
    return _RecordsDecoder(inputs, max_string_length)


def records_fast(body: bytes, signature: Signature, limits: Limits) -> tuple[dict[str, np.ndarray], int] | None:
    """Feeds straight from a records body whose every record has every column, else None.

    The body is decoded by msgspec into typed structs (no dict per record, types and string
    lengths checked while parsing), then goes to numpy one table at a time. The accepting path
    of `parse_records` plus `records_feeds`, with the same arrays: anything they might refuse or
    treat specially (a missing nullable key, an unknown key, 7.0 in an integer column, a value
    out of range, a string over the limit, a float of 2**53 or more, JSON the decoder refuses)
    returns None and the general path answers, naming the field. So does a single record (seen
    before decoding: no `}, {` between records), which `one_record` scores in less time.

    Raises:
        RequestError: 400 naming a duplicate key (the same check as `records_feeds`).
    """
    if _NEXT_RECORD.search(body) is None:  # at most one record (or an odd layout): not worth a decode
        return None
    specs = signature.inputs
    dec = _typed_decoder(tuple((s.name, s.datatype, s.nullable) for s in specs), limits.max_string_length)
    try:
        rows = dec.decoder.decode(body).instances
    except msgspec.MsgspecError:
        return None
    n = len(rows)
    if not 2 <= n <= limits.max_rows:  # one record: `one_record` is cheaper (18 vs 30 us)
        return None
    k = len(specs)
    # Rows to columns: every record's fields (a tuple in the signature's order, in C) into one
    # [n, k] object table, then one numpy cast per datatype (about 40% less CPU than transposing
    # the tuples with `zip` and converting column by column).
    table = np.fromiter(chain.from_iterable(map(_astuple, rows)), object, n * k).reshape(n, k)
    feeds: dict[str, np.ndarray] = {}
    for kind, indices, names in dec.groups:
        part = table[:, indices].T  # [columns, n] object (a copy of the pointers)
        if kind == "BYTES":  # str objects, as `column_array` keeps them
            block = np.ascontiguousarray(part)
        elif kind == "INT64":
            try:
                block = part.astype(np.int64, order="C")
            except OverflowError:  # beyond INT64
                return None
        else:  # floats (the decoder's type) or None (-> NaN, nullable columns only)
            wide = part.astype(np.float64, order="C")
            if (np.abs(wide) >= _EXACT_INTEGERS).any():  # NaN (null) compares False
                return None
            block = wide.astype(_FLOAT_DTYPE[kind]) if kind == "FP32" else wide  # below 2**53: finite in FP32
        feeds.update(zip(names, block.reshape(len(names), n, 1), strict=True))  # a contiguous [n, 1] view each
    feeds = {s.name: feeds[s.name] for s in specs}  # the signature's order, as the general path has it

    def string_colons() -> int:  # values of the BYTES columns, and the keys (column names)
        values = sum("".join(feeds[s.name][:, 0]).count(":") for s in specs if s.datatype == "BYTES")
        return values + n * sum(s.name.count(":") for s in specs)

    # Every record holds exactly the signature's columns (the decoder requires each and refuses
    # others), so the keys kept are 1 + n * columns; a duplicate makes the body hold more.
    check_duplicate_keys(body, 1 + n * k, string_colons)
    return feeds, n
