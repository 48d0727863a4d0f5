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

The code lives by concern: `serving.request_models` (the pydantic bodies, patterns, limits),
`serving.columns` (one column's rules), `serving.v2_tensors` (v2 JSON and binary),
`serving.records` (records), over `serving.wire` (JSON without duplicate keys, BYTES elements).
`serving.v2_typed` is the v2 fast path ahead of them (msgspec structs typed from the signature):
it only accepts, and what it accepts they accept with the same arrays (hypothesis tests).
This module keeps the names the rest of the server and the tests import.
"""

from __future__ import annotations

from serving.columns import _ACCEPTED, binary_column, column_array, one_record
from serving.records import parse_records, records_fast, records_feeds
from serving.request_models import (
    FP32_ROUNDS_TO_INF,
    MAX_REQUEST_ID,
    NAME_PATTERN,
    REQUEST_ID_PATTERN,
    Dimension,
    IndexRequest,
    InferenceRequest,
    Limits,
    LoadParameters,
    LoadRequest,
    RecordsRequest,
    RequestInput,
    RequestOutput,
    TrafficRequest,
    parse_model,
)
from serving.v2_tensors import _plain_v2, parse_v2, v2_feeds
from serving.wire import RequestError

__all__ = [
    "FP32_ROUNDS_TO_INF",
    "MAX_REQUEST_ID",
    "NAME_PATTERN",
    "REQUEST_ID_PATTERN",
    "_ACCEPTED",
    "Dimension",
    "IndexRequest",
    "InferenceRequest",
    "Limits",
    "LoadParameters",
    "LoadRequest",
    "RecordsRequest",
    "RequestError",
    "RequestInput",
    "RequestOutput",
    "TrafficRequest",
    "_plain_v2",
    "binary_column",
    "column_array",
    "one_record",
    "parse_model",
    "parse_records",
    "parse_v2",
    "records_fast",
    "records_feeds",
    "v2_feeds",
]
