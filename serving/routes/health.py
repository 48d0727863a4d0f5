"""Health and metadata routes: liveness, readiness, server and model metadata."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from serving.dataplane import DataPlane
from serving.http import guarded, json_response, model_headers


def router(plane: DataPlane) -> APIRouter:
    """GET /v2/health/{live,ready}, /v2, /v2/models/{name}[/versions/{version}][/ready]."""
    r = APIRouter()
    retry = plane.settings.retry_after_s

    @r.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        """Liveness: the process answers."""
        return json_response({"live": True})

    @r.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        """Readiness: at least one model version is loaded and warmed up (503 otherwise)."""
        ok = plane.ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @r.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        """Server metadata (name, version, protocol extensions)."""
        return json_response(plane.server_metadata())

    async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        mv, body = plane.model_metadata(name, version)
        return json_response(body, headers=model_headers(mv))

    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        mv, body = plane.model_ready(name, version)
        return json_response(body, headers=model_headers(mv))

    r.get("/v2/models/{name}", tags=["metadata"], summary="Model metadata")(guarded(model_metadata, retry))
    r.get("/v2/models/{name}/versions/{version}", tags=["metadata"], summary="Model version metadata")(
        guarded(model_metadata, retry)
    )
    r.get("/v2/models/{name}/ready", tags=["health"], summary="Model readiness")(guarded(model_ready, retry))
    r.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], summary="Model version readiness")(
        guarded(model_ready, retry)
    )
    return r
