"""Repository-control routes (the v2 model repository extension, plus traffic splits).

Every route here refuses a browser's cross-site request (403; `serving.http.check_same_site`)
and, when an admin key is set, every key but the admin key (`serving.middleware.Observe`).
"""

from __future__ import annotations

import functools

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from serving.dataplane import DataPlane
from serving.http import check_same_site, guarded, json_response, model_headers, openapi_body, read_body
from serving.validation import IndexRequest, LoadRequest, TrafficRequest, parse_model


def router(plane: DataPlane) -> APIRouter:
    """GET|POST /v2/repository/index; POST .../load, .../unload; GET|POST .../traffic."""
    r = APIRouter()
    retry = plane.settings.retry_after_s
    max_body = plane.settings.max_body_bytes

    def admin(handler):
        @functools.wraps(handler)  # FastAPI reads the path parameters from the signature
        async def checked(request: Request, **kwargs) -> Response:
            check_same_site(request)
            return await handler(request, **kwargs)

        return guarded(checked, retry, plane.redact)

    async def optional(model: type[BaseModel], request: Request) -> BaseModel:
        raw = await read_body(request, max_body)
        return parse_model(model, raw) if raw.strip() else model()

    async def repository_index(request: Request) -> Response:
        """Every model version on disk or loaded, with state (READY / UNAVAILABLE) and reason."""
        body = await optional(IndexRequest, request) if request.method == "POST" else IndexRequest()
        return json_response(plane.index(ready_only=body.ready))

    r.get(
        "/v2/repository/index", tags=["repository"], summary="Repository index", operation_id="repository_index_get"
    )(admin(repository_index))
    r.post(
        "/v2/repository/index",
        tags=["repository"],
        summary="Repository index (v2)",
        operation_id="repository_index",
        openapi_extra=openapi_body(IndexRequest),
    )(admin(repository_index))

    async def load(request: Request, name: str) -> Response:
        body = await optional(LoadRequest, request)
        version = body.parameters.version if body.parameters else None
        mv, result = await plane.load(name, None if version is None else str(version))
        return json_response(result, headers=model_headers(mv))

    r.post(
        "/v2/repository/models/{name}/load",
        tags=["repository"],
        summary="Load (or hot-swap) a model version",
        description='Body optional: `{"parameters": {"version": "2"}}`; default the latest on disk. '
        "A package that fails verification, ONNX Runtime or the warm-up is refused (400) and "
        "whatever was serving keeps serving.",
        openapi_extra=openapi_body(LoadRequest),
    )(admin(load))

    async def unload(request: Request, name: str) -> Response:
        body = await optional(LoadRequest, request)
        version = body.parameters.version if body.parameters else None
        return json_response(plane.unload(name, None if version is None else str(version)))

    r.post(
        "/v2/repository/models/{name}/unload",
        tags=["repository"],
        summary="Unload a model (or one version)",
        openapi_extra=openapi_body(LoadRequest),
    )(admin(unload))

    async def traffic(request: Request, name: str) -> Response:
        if request.method == "POST":
            body = parse_model(TrafficRequest, await read_body(request, max_body))
            return json_response(plane.set_traffic(name, body.weights))
        return json_response(plane.traffic(name))

    r.get(
        "/v2/repository/models/{name}/traffic",
        tags=["repository"],
        summary="Get the traffic split",
        operation_id="traffic_get",
    )(admin(traffic))
    r.post(
        "/v2/repository/models/{name}/traffic",
        tags=["repository"],
        summary="Set the traffic split",
        operation_id="traffic_set",
        description='`{"weights": {"1": 90, "2": 10}}`: percent per version, finite, >= 0, summing to 100 '
        '(a version left out gets 0), sticky per request id; `{"weights": null}`: the latest loaded version '
        "takes 100%.",
        openapi_extra=openapi_body(TrafficRequest),
    )(admin(traffic))
    return r
