"""Health and metadata routes: liveness, readiness, server and model metadata, model configuration
(Triton's `GET /v2/models/{name}/config`) and statistics (Triton's `GET /v2/models/{name}/stats`)."""

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

    def add(path: str, handler, summary: str, tag: str = "metadata") -> None:
        r.get(path, tags=[tag], summary=summary)(guarded(handler, retry, plane.redact))

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

    async def model_config(request: Request, name: str, version: str | None = None) -> Response:
        mv, body = plane.model_config(name, version)
        return json_response(body, headers=model_headers(mv))

    async def model_stats(request: Request, name: str | None = None, version: str | None = None) -> Response:
        return json_response(plane.model_statistics(name, version))

    add("/v2/models/stats", model_stats, "Statistics of every loaded model (Triton)")
    add("/v2/models/{name}", model_metadata, "Model metadata")
    add("/v2/models/{name}/versions/{version}", model_metadata, "Model version metadata")
    add("/v2/models/{name}/ready", model_ready, "Model readiness", "health")
    add("/v2/models/{name}/versions/{version}/ready", model_ready, "Model version readiness", "health")
    add("/v2/models/{name}/config", model_config, "Model configuration (Triton's config.pbtxt as JSON)")
    add("/v2/models/{name}/versions/{version}/config", model_config, "Model version configuration")
    add("/v2/models/{name}/stats", model_stats, "Model statistics (Triton's statistics extension)")
    add("/v2/models/{name}/versions/{version}/stats", model_stats, "Model version statistics")
    return r
