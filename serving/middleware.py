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

ADMIN_PREFIX = "/v2/repository"  # load, unload, traffic, index: the admin key only


class Observe:
    """API-key check, request count and latency per route template.

    Two keys (least privilege): the admin key (`api_key`) opens every route; the score key
    (`score_api_key`) opens every route but `/v2/repository/*` (403 there). Health routes need
    no key. With no key set the server is open (bind it to loopback).
    """

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        key = plane.settings.api_key
        score = plane.settings.score_api_key
        self.api_key = key.encode() if key else None
        self.score_key = score.encode() if score else None
        self.tracing = plane.tracing  # None unless tracing is on (serving/tracing.py)
        if self.tracing is not None:
            from serving.tracing import REQUEST_TRACE

            self._current = REQUEST_TRACE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing is not None and (rt := self.tracing.begin(scope)) is not None:
            await self._traced(rt, scope, receive, send)
            return
        await self._observe(scope, receive, send)  # tracing off, or not sampled: nothing else happens

    async def _traced(self, rt: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """`_observe` of a sampled request: its `RequestTrace` is current while the app runs, and is
        handed to the span processor at the end (serving/tracing.py)."""
        token = self._current.set(rt)
        status, endpoint, error = 500, "unmatched", None
        try:
            status, endpoint = await self._observe(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._current.reset(token)
            self.tracing.finish(rt, scope["method"], endpoint, status, error)

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str]:
        """Check the key, run the app, count the request; returns (status, route template)."""
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            role = "admin" if self.api_key is None or scope["path"].startswith("/v2/health") else self._role(scope)
            if role is None:
                response = error_response(
                    401,
                    "missing or wrong API key (header x-api-key or Authorization: Bearer)",
                    {"www-authenticate": "Bearer"},
                )
                await response(scope, receive, send_wrapper)
            elif role == "score" and scope["path"].startswith(ADMIN_PREFIX):
                response = error_response(
                    403, "this API key may score only; repository routes need the admin key (DRIFTLOOP_API_KEY)"
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            count, latency = self.plane.metrics.request_children(endpoint, status)
            count.inc()
            latency.observe(time.perf_counter() - start)
        return status, endpoint

    def _role(self, scope: Scope) -> str | None:
        """"admin", "score", or None for a missing or wrong key."""
        assert self.api_key is not None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            else:
                continue
            if hmac.compare_digest(given, self.api_key):
                return "admin"
            if self.score_key is not None and hmac.compare_digest(given, self.score_key):
                return "score"
        return None


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
