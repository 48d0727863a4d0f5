"""The HTTP edge shared by every route module: responses, body reading, request ids, error mapping.

Nothing here knows a model; `serving.dataplane` knows models and nothing of HTTP.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from driftloop.errors import DriftloopError
from serving.batcher import BatcherClosed, QueueFull
from serving.repository import ModelNotFound, ModelVersion
from serving.validation import MAX_REQUEST_ID, REQUEST_ID_PATTERN, RequestError

log = logging.getLogger(__name__)

JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

Handler = Callable[..., Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An orjson-encoded response (numpy arrays serialised natively)."""
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, headers=headers, media_type=JSON)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}` with `status`."""
    return json_response({"error": message}, status, headers)


def model_headers(mv: ModelVersion, request_id: str | None = None) -> dict[str, str]:
    """The headers that name the answering model version (and the request id)."""
    headers = {"x-model-name": mv.name, "x-model-version": mv.version, "x-lineage-id": mv.lineage_id}
    if request_id is not None:
        headers["x-request-id"] = request_id
    return headers


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before parsing (chunked bodies included).

    Raises:
        RequestError: 413 when the declared or streamed size exceeds `limit`; 400 on a bad
            Content-Length.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "content-length: not an integer") from None
        if size > limit:
            raise RequestError(413, f"body: {size} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def request_id_of(request: Request, fallback: str | None = None) -> str:
    """`x-request-id` header, else `fallback` (the v2 body's id), else a new uuid4 hex.

    Raises:
        RequestError: 400 when the header is present but is not 1..128 printable ASCII characters
            without a leading or trailing space (`serving.validation.REQUEST_ID_PATTERN`, the
            rule the OpenAPI document states).
    """
    rid = request.headers.get("x-request-id")
    if rid is None:
        rid = fallback
        if rid is None:
            return uuid.uuid4().hex
    if len(rid) > MAX_REQUEST_ID or _REQUEST_ID.match(rid) is None:
        raise RequestError(
            400,
            f"x-request-id: must be 1..{MAX_REQUEST_ID} printable ASCII characters, "
            "not starting or ending with a space",
        )
    return rid


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route answers on this request's path, sorted: a 405's `Allow`.

    Asks each route with Starlette's public `matches` (which included routers implement too),
    once per method, so every route of the path counts, not only the first one found.
    """
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def guarded(handler: Handler, retry_after_s: int) -> Handler:
    """Map the known errors to their status; anything else is a logged 500."""

    @functools.wraps(handler)
    async def wrapper(request: Request, **kwargs: Any) -> Response:
        try:
            return await handler(request, **kwargs)
        except RequestError as exc:
            return error_response(exc.status, exc.message)
        except ModelNotFound as exc:
            return error_response(404, str(exc))
        except QueueFull as exc:
            return error_response(429, f"server busy: {exc}", {"retry-after": str(retry_after_s)})
        except BatcherClosed as exc:
            return error_response(503, str(exc), {"retry-after": str(retry_after_s)})
        except DriftloopError as exc:
            return error_response(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, answered as JSON
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    return wrapper


def openapi_body(model: type) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body (handlers read raw bytes)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref}}}}
