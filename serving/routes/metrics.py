"""The Prometheus route."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from serving.dataplane import DataPlane


def router(plane: DataPlane) -> APIRouter:
    """GET /metrics: the text exposition of this server's registry."""
    r = APIRouter()

    @r.get("/metrics", tags=["metrics"])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this server's registry."""
        payload, content_type = plane.exposition()
        return Response(payload, media_type=content_type)

    return r
