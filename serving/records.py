"""Records bodies (`{"instances": [{column: value, ...}, ...]}`) -> feeds, one object per row.

Rules and statuses are described in `serving.validation`.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

from driftloop.schema import Signature, TensorSpec
from serving.columns import _MISSING, column_array, one_record
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
