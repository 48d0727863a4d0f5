"""The explanation route: `POST /v1/models/{name}:explain` (KServe's v1 convention; serving/explain.py)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from driftloop.protocol import V1_EXPLAIN
from serving.dataplane import DataPlane
from serving.http import encode_response, guarded, model_headers, openapi_body, read_body, request_id_of
from serving.validation import parse_records


def router(plane: DataPlane) -> APIRouter:
    """POST /v1/models/{name}:explain: the `:predict` records body -> per-row SHAP attributions."""
    from serving.openapi import ExplainRequest

    r = APIRouter()
    max_body = plane.settings.max_body_bytes

    async def explain(request: Request, name: str) -> Response:
        raw = await read_body(request, max_body)
        instances = parse_records(raw)
        request_id = request_id_of(request)
        mv, body = await plane.explain(name, request_id, instances, raw)
        payload = orjson.dumps({**body, "model_name": mv.name, "model_version": mv.version,
                                "lineage_id": mv.lineage_id, "request_id": request_id})  # fmt: skip
        return encode_response(request, payload, model_headers(mv, request_id))

    r.post(
        V1_EXPLAIN,
        tags=["explanations"],
        summary="Explain records (SHAP)",
        description="Per-row feature attributions (Kernel SHAP against the package's reference sample): "
        "`sum(attributions) = score - base_value` within 1e-5. At most 4 rows (422 past it: the request model's limit); 501 when the "
        "server was installed without SHAP (`pip install 'driftloop[explain]'`).",
        openapi_extra=openapi_body(ExplainRequest),
    )(guarded(explain, plane.settings.retry_after_s, plane.redact))
    return r
