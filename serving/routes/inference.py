"""Scoring routes: v2 `infer` (with and without a version) and the records `:predict`.

These handlers take a `Request` and return a `Response` with no dependency injection, so
`serving.app` also dispatches them ahead of FastAPI's router (the measured fast path).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from driftloop.protocol import V1_PREDICT, V2_INFER, V2_VERSION_INFER
from driftloop.schema import OUTPUT
from serving.dataplane import DataPlane
from serving.http import guarded, json_response, model_headers, openapi_body, read_body, request_id_of
from serving.validation import InferenceRequest, RecordsRequest, parse_model, records_feeds, v2_feeds


def router(plane: DataPlane) -> APIRouter:
    """POST the scoring endpoints of `driftloop.protocol.SCORING_ENDPOINTS`."""
    r = APIRouter()
    retry = plane.settings.retry_after_s
    max_body = plane.settings.max_body_bytes

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        start = time.perf_counter()
        body = parse_model(InferenceRequest, await read_body(request, max_body))
        request_id = request_id_of(request, body.id)
        mv = plane.route(name, request_id, version)
        feeds, rows = v2_feeds(body, mv.signature, plane.limits)
        scores = await plane.score(mv, feeds, rows, request_id, start)
        response = {
            "model_name": mv.name,
            "model_version": mv.version,
            "id": request_id,
            "lineage_id": mv.lineage_id,
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [rows, 1], "data": scores.reshape(-1)}],
        }
        return json_response(response, headers=model_headers(mv, request_id))

    async def predict(request: Request, name: str) -> Response:
        start = time.perf_counter()
        body = parse_model(RecordsRequest, await read_body(request, max_body))
        request_id = request_id_of(request)
        mv = plane.route(name, request_id)
        feeds, rows = records_feeds(body, mv.signature, plane.limits)
        scores = await plane.score(mv, feeds, rows, request_id, start)
        response = {
            "predictions": scores.reshape(-1),
            "model_name": mv.name,
            "model_version": mv.version,
            "lineage_id": mv.lineage_id,
            "request_id": request_id,
        }
        return json_response(response, headers=model_headers(mv, request_id))

    infer_doc = openapi_body(InferenceRequest)
    r.post(V2_INFER, tags=["inference"], summary="Infer (v2)", openapi_extra=infer_doc)(guarded(infer, retry))
    r.post(V2_VERSION_INFER, tags=["inference"], summary="Infer on a version (v2)", openapi_extra=infer_doc)(
        guarded(infer, retry)
    )
    r.post(
        V1_PREDICT,
        tags=["inference"],
        summary="Predict on records",
        description='`{"instances": [{"carrier": "UA", "origin": "EWR", ...}]}` -> `{"predictions": [...]}`',
        openapi_extra=openapi_body(RecordsRequest),
    )(guarded(predict, retry))
    return r
