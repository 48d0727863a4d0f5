"""The HTTP edge shared by every route module: responses, body reading, request ids, error mapping.

Nothing here knows a model; `serving.dataplane` knows models and nothing of HTTP.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from driftloop.errors import DriftloopError
from serving.batcher import BatcherClosed, QueueFull
from serving.repository import ModelNotFound, ModelVersion
from serving.validation import MAX_REQUEST_ID, REQUEST_ID_PATTERN, RequestError

log = logging.getLogger(__name__)

JSON = "application/json"
BINARY = "application/octet-stream"  # the binary tensor extension's type (KServe's client sends it)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
GZIP_MIN_BYTES = 1024  # smaller responses are sent as they are: compressing them costs more than it saves
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the answer"
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


def header(request: Request, name: bytes) -> str | None:
    """The first value of a request header (latin-1, as Starlette decodes it), or None.

    One pass over the raw ASGI headers. `request.headers.get` builds a `Headers` mapping and, for
    a header the request lacks (the usual case for `x-request-id`), raises and catches a KeyError
    inside `Mapping.get`: about 2 us per lookup on every scoring request.

    Args:
        request: the request.
        name: the header's name, lowercase (ASGI servers lowercase the names they pass).
    """
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


_ACCEPTED_TYPES = (JSON, BINARY)


def check_content_type(value: bytes | None) -> None:
    """Refuse a body that does not say it is JSON or the binary tensor extension.

    No Content-Type at all is accepted: Triton's own client (`tritonclient.http`) sends none.
    Browsers send `text/plain` or a form type on a cross-site request without a CORS preflight;
    those get 415 here, and the repository routes also refuse cross-site requests outright
    (`check_same_site`).

    Args:
        value: the raw Content-Type header, or None.

    Raises:
        RequestError: 415 naming the type and the ones accepted.
    """
    if value is None:
        return
    media = value.split(b";", 1)[0].strip().lower().decode("latin-1")
    if media not in _ACCEPTED_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise RequestError(
            415, f"content-type: {media[:100]!r}; send application/json (or {BINARY} with the binary tensor extension)"
        )


def check_same_site(request: Request) -> None:
    """Refuse a browser's cross-site request (repository and traffic routes).

    A web page the user opens can POST to a loopback server without a preflight; browsers mark
    such requests with `Sec-Fetch-Site` (cross-site / same-site) and an `Origin` that differs from
    the `Host`. Non-browser clients send neither header.

    Raises:
        RequestError: 403.
    """
    headers = request.headers
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise RequestError(403, f"sec-fetch-site: {site}; repository routes refuse requests from other web sites")
    origin = headers.get("origin")
    if origin is not None:
        host = origin.split("://", 1)[-1].rstrip("/")
        if host != headers.get("host", ""):
            raise RequestError(403, f"origin: {origin[:100]}; repository routes refuse requests from other web sites")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes before parsing.

    The limit applies to the bytes received (declared or streamed, chunked bodies included) and
    again to the decompressed size of a `Content-Encoding: gzip` / `deflate` body, which is
    inflated at most `limit + 1` bytes at a time: a zip bomb costs no more memory than the limit.

    Raises:
        RequestError: 413 past the limit; 400 on a bad Content-Length or a corrupt compressed
            body; 415 on an unsupported Content-Type or Content-Encoding.
        ClientDisconnect: the client closed the connection mid-body.
    """
    content_type = declared = encoding = None
    for name, value in request.scope["headers"]:  # one pass over the raw headers
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            declared = value
        elif name == b"content-encoding":
            encoding = value
    check_content_type(content_type)
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "content-length: not an integer") from None
        if size > limit:
            raise RequestError(413, f"body: {size} bytes; the limit is {limit}")
    chunks = []
    size = 0
    receive = request.receive  # ASGI messages directly: `request.stream()`, an async generator, costs
    while True:  # a hook registration per request (asyncio's asyncgen tracking)
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            raise ClientDisconnect()
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than {limit} bytes; the limit is {limit}")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding is None or encoding == b"identity":
        return body
    return _inflate(body, encoding.strip().lower().decode("latin-1"), limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise RequestError(415, f"content-encoding: {encoding!r}; send gzip, deflate or none")
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"content-encoding: the {encoding} body is corrupt ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RequestError(413, f"body: more than {limit} bytes once decompressed; the limit is {limit}")
    if not inflater.eof:
        raise RequestError(400, f"content-encoding: the {encoding} body is truncated")
    return out


def encode_response(
    request: Request, body: bytes, headers: dict[str, str], media_type: str = JSON, status: int = 200
) -> Response:
    """A response, gzip- or deflate-compressed when the client accepts it and it is large.

    Args:
        request: for its `Accept-Encoding`.
        body: the encoded body.
        headers: extra headers (a binary response's `Inference-Header-Content-Length` included).
        media_type: Content-Type.
        status: HTTP status.
    """
    if len(body) >= GZIP_MIN_BYTES:
        accept = header(request, b"accept-encoding") or ""
        if "gzip" in accept:
            body = gzip.compress(body, compresslevel=1)
            headers["content-encoding"] = "gzip"
            headers["vary"] = "accept-encoding"
        elif "deflate" in accept:
            body = zlib.compress(body, 1)
            headers["content-encoding"] = "deflate"
            headers["vary"] = "accept-encoding"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def request_id_of(request: Request, fallback: str | None = None) -> str:
    """`x-request-id` header, else `fallback` (the v2 body's id), else 32 random hex digits.

    Raises:
        RequestError: 400 when the header is present but is not 1..128 printable ASCII characters
            without a leading or trailing space (`serving.validation.REQUEST_ID_PATTERN`, the
            rule the OpenAPI document states).
    """
    rid = header(request, b"x-request-id")
    if rid is None:
        rid = fallback
        if rid is None:
            return os.urandom(16).hex()  # as `uuid.uuid4().hex` long, without building a UUID object
    if len(rid) > MAX_REQUEST_ID or _REQUEST_ID.fullmatch(rid) is None:
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


def guarded(handler: Handler, retry_after_s: int, redact: Callable[[str], str] = str) -> Handler:
    """Map the known errors to their status; anything else is a logged 500.

    Args:
        handler: the route handler.
        retry_after_s: Retry-After of a 429 / 503.
        redact: applied to messages of model errors (cuts the repository's absolute path).
    """

    @functools.wraps(handler)
    async def wrapper(request: Request, **kwargs: Any) -> Response:
        try:
            return await handler(request, **kwargs)
        except ClientDisconnect:
            log.debug("client closed the connection mid-body on %s %s", request.method, request.url.path)
            return Response(status_code=CLIENT_CLOSED)  # never sent; counted in the request metrics
        except RequestError as exc:
            return error_response(exc.status, exc.message)
        except ModelNotFound as exc:
            return error_response(404, redact(str(exc)))
        except QueueFull as exc:
            return error_response(429, f"server busy: {exc}", {"retry-after": str(retry_after_s)})
        except BatcherClosed as exc:
            return error_response(503, str(exc), {"retry-after": str(retry_after_s)})
        except DriftloopError as exc:
            return error_response(400, redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, answered as JSON
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    return wrapper


def openapi_body(model: type) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body (handlers read raw bytes)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref}}}}
