"""Scoring routes: v2 `infer` (with and without a version) and the records `:predict`.

v2 `infer` speaks JSON and the binary tensor data extension both ways: a request with
`Inference-Header-Content-Length` carries its tensors as raw bytes after the JSON header, and a
request asking for binary output (`parameters.binary_data_output`, or `binary_data` per output,
as `tritonclient` does by default) gets the scores as raw little-endian FP32 after a JSON header
whose length is in the response's `Inference-Header-Content-Length`. Bodies may be gzip- or
deflate-compressed both ways (`Content-Encoding` / `Accept-Encoding`).

A v2 body is first decoded by `serving.v2_typed` (msgspec structs typed from the signature of a
loaded version, checked against the routed one); whatever that path does not accept goes to
`parse_v2` + `v2_feeds`, which answer as they always did.

These handlers take a `Request` and return a `Response` with no dependency injection, so
`serving.app` also dispatches them ahead of FastAPI's router (the measured fast path).
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from driftloop.protocol import V1_PREDICT, V2_INFER, V2_VERSION_INFER
from driftloop.schema import OUTPUT
from serving.dataplane import DataPlane
from serving.http import (
    BINARY,
    encode_response,
    guarded,
    header,
    model_headers,
    openapi_body,
    read_body,
    request_id_of,
)
from serving.repository import ModelNotFound
from serving.v2_typed import binary_feeds, decoders, typed_v2
from serving.validation import (
    InferenceRequest,
    RecordsRequest,
    RequestError,
    parse_records,
    parse_v2,
    records_fast,
    records_feeds,
    v2_feeds,
)

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def router(plane: DataPlane) -> APIRouter:
    """POST the scoring endpoints of `driftloop.protocol.SCORING_ENDPOINTS`."""
    r = APIRouter()
    retry = plane.settings.retry_after_s
    max_body = plane.settings.max_body_bytes
    limits = plane.limits
    repository = plane.repository

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        start = time.perf_counter()
        raw = await read_body(request, max_body)
        header_length = header(request, b"inference-header-content-length")
        # The typed decoding (serving/v2_typed.py) needs the inputs: those of a loaded version of the
        # model, checked against the routed version below; None: the general path from the raw body.
        hint = repository.peek(name, version)
        typed = None if hint is None else typed_v2(raw, header_length, decoders(hint, limits), limits)
        if typed is not None:
            body, parsed, binary = typed.request, None, typed.binary
        else:
            body, parsed, binary = parse_v2(raw, header_length)
        if body.model_name is not None and body.model_name != name:
            raise RequestError(400, f"model_name: the body names {body.model_name!r}, the URL {name!r}")
        if body.model_version is not None:
            if version is not None and body.model_version != version:
                raise RequestError(
                    400, f"model_version: the body names {body.model_version!r}, the URL {version!r}"
                )
            version = body.model_version
        request_id = request_id_of(request, body.id)
        mv = plane.route(name, request_id, version)
        try:
            if typed is not None and mv is not hint and decoders(mv, limits) is not typed.decoders:  # other inputs
                typed = None
                body, parsed, binary = parse_v2(raw, header_length)
            if typed is None:
                feeds, rows = v2_feeds(body, mv.signature, limits, body=raw, parsed=parsed, binary=binary)
            elif typed.feeds is not None:  # JSON: validated while decoding
                feeds, rows = typed.feeds, typed.rows
            else:  # binary: the header was checked (duplicate keys included); the tensors are checked here
                fed = binary_feeds(typed, limits)
                feeds, rows = fed if fed is not None else v2_feeds(body, mv.signature, limits, binary=binary)
        except RequestError:
            plane.failed(mv, start)
            raise
        scores, timing = await plane.score(mv, feeds, rows, request_id, start)
        encoded = time.perf_counter()
        headers = model_headers(mv, request_id)
        if body.binary_output():
            data = scores.astype("<f4", copy=False).tobytes()
            output = {
                "name": OUTPUT,
                "datatype": "FP32",
                "shape": [rows, 1],
                "parameters": {"binary_data_size": len(data)},
            }
            head = orjson.dumps(
                {
                    "model_name": mv.name,
                    "model_version": mv.version,
                    "id": request_id,
                    "parameters": {"lineage_id": mv.lineage_id},
                    "outputs": [output],
                }
            )
            headers["inference-header-content-length"] = str(len(head))
            response = encode_response(request, head + data, headers, BINARY)
        else:
            payload = orjson.dumps(
                {
                    "model_name": mv.name,
                    "model_version": mv.version,
                    "id": request_id,
                    "lineage_id": mv.lineage_id,
                    "outputs": [
                        {"name": OUTPUT, "datatype": "FP32", "shape": [rows, 1], "data": scores.reshape(-1)}
                    ],
                },
                option=_NUMPY,
            )
            response = encode_response(request, payload, headers)
        plane.scored(mv, rows, start, encoded, timing)
        return response

    async def predict(request: Request, name: str) -> Response:
        start = time.perf_counter()
        raw = await read_body(request, max_body)
        try:
            request_id = request_id_of(request)
            mv = plane.route(name, request_id)
        except (RequestError, ModelNotFound):
            parse_records(raw)  # a bad body is reported first, as ever
            raise
        try:
            fast = records_fast(raw, mv.signature, limits)  # typed decoding: needs the version's signature
        except RequestError:
            plane.failed(mv, start)
            raise
        if fast is not None:
            feeds, rows = fast
        else:
            instances = parse_records(raw)
            try:
                feeds, rows = records_feeds(instances, mv.signature, limits, body=raw)
            except RequestError:
                plane.failed(mv, start)
                raise
        scores, timing = await plane.score(mv, feeds, rows, request_id, start)
        encoded = time.perf_counter()
        payload = orjson.dumps(
            {
                "predictions": scores.reshape(-1),
                "model_name": mv.name,
                "model_version": mv.version,
                "lineage_id": mv.lineage_id,
                "request_id": request_id,
            },
            option=_NUMPY,
        )
        response = encode_response(request, payload, model_headers(mv, request_id))
        plane.scored(mv, rows, start, encoded, timing)
        return response

    infer_doc = openapi_body(InferenceRequest)
    r.post(V2_INFER, tags=["inference"], summary="Infer (v2)", openapi_extra=infer_doc)(
        guarded(infer, retry, plane.redact)
    )
    r.post(V2_VERSION_INFER, tags=["inference"], summary="Infer on a version (v2)", openapi_extra=infer_doc)(
        guarded(infer, retry, plane.redact)
    )
    r.post(
        V1_PREDICT,
        tags=["inference"],
        summary="Predict on records",
        description='`{"instances": [{"<input>": <value>, ...}]}` (the signature\'s inputs) -> `{"predictions": [...]}`',
        openapi_extra=openapi_body(RecordsRequest),
    )(guarded(predict, retry, plane.redact))
    return r
