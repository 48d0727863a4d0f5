"""Pure-ASGI middleware: API key and request metrics (`Observe`), scoring fast path (`FastPath`).

Pure ASGI rather than `BaseHTTPMiddleware`, which costs a task and a queue per request.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.dataplane import DataPlane
from serving.http import error_response


class Observe:
    """API-key check, request count and latency per route template."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        key = plane.settings.api_key
        self.api_key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if (
                self.api_key is not None
                and not scope["path"].startswith("/v2/health")
                and not self._authorized(scope)
            ):
                response = error_response(
                    401,
                    "missing or wrong API key (header x-api-key or Authorization: Bearer)",
                    {"www-authenticate": "Bearer"},
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics = self.plane.metrics
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope["headers"]:
            if name == b"x-api-key" and hmac.compare_digest(value, self.api_key):
                return True
            if (
                name == b"authorization"
                and value[:7].lower() == b"bearer "
                and hmac.compare_digest(value[7:].strip(), self.api_key)
            ):
                return True
        return False


class FastPath:
    """Dispatch of the scoring routes ahead of FastAPI's router.

    The scoring handlers take a `Request` and return a `Response` and need no dependency
    injection, so they skip FastAPI's routing, `solve_dependencies` and exception layers, which
    cost about half of a single-row request's CPU time here (py-spy, bench/serve_http.py). The same
    routes stay declared on the FastAPI app, so the OpenAPI document lists them; this class only
    answers them first. `routes` is filled after the routes are declared (the middleware stack is
    built on the first request).
    """

    def __init__(self, app: ASGIApp, routes: list[tuple[Any, Callable[..., Awaitable[Response]]]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route, handler in self.routes:
                match = route.path_regex.match(path)
                if match is not None:
                    scope["route"] = route  # the metrics label is the route template
                    response = await handler(Request(scope, receive), **match.groupdict())
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
