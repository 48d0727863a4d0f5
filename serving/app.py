"""HTTP routes: Open Inference Protocol v2 REST, the records endpoint, repository control, metrics.

Endpoints (the OpenAPI document is at `/openapi.json`, the interactive one at `/docs`):
    GET  /v2/health/live, /v2/health/ready                      no API key needed
    GET  /v2                                                     server metadata
    GET  /v2/models/{name}[/versions/{version}]                  model metadata (from signature.json)
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer            v2 tensors -> `probability` FP32 [n, 1]
    POST /v1/models/{name}:predict                               {"instances": [{col: value}]} -> predictions
    GET|POST /v2/repository/index                                models on disk / loaded, with state
    POST /v2/repository/models/{name}/load                       {"parameters": {"version": "2"}} optional
    POST /v2/repository/models/{name}/unload                     {"parameters": {"version": "1"}} optional
    GET|POST /v2/repository/models/{name}/traffic                {"weights": {"1": 90, "2": 10}}
    GET  /metrics                                                Prometheus text format

Every scoring and metadata response carries headers `x-model-name`, `x-model-version`,
`x-lineage-id` (and the same in the body); scoring responses also carry `x-request-id`, taken from
the request's header (or the v2 body's `id`) or generated.

Errors are `{"error": "<message naming the field>"}` with 400 / 401 / 404 / 413 / 422 / 429 / 503.
Bodies are read with a byte limit before any parsing (chunked bodies included) and validated by
pydantic models from the raw bytes; handlers never call `request.json()`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop import __version__
from driftloop.errors import DriftloopError
from driftloop.protocol import SCORING_ENDPOINTS, V1_PREDICT, V2_INFER, V2_VERSION_INFER
from driftloop.schema import OUTPUT
from serving.batcher import BatcherClosed, MicroBatcher, QueueFull
from serving.config import ServeSettings
from serving.metrics import ServerMetrics
from serving.predlog import PredictionLog
from serving.repository import ModelNotFound, ModelRepository, ModelVersion
from serving.validation import (
    IndexRequest,
    InferenceRequest,
    Limits,
    LoadRequest,
    RecordsRequest,
    RequestError,
    TrafficRequest,
    parse_model,
    records_feeds,
    v2_feeds,
)

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
_JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
MAX_REQUEST_ID = 128


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An orjson-encoded response (numpy arrays serialised natively)."""
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, headers=headers, media_type=_JSON)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}` with `status`."""
    return json_response({"error": message}, status, headers)


def model_headers(mv: ModelVersion, request_id: str | None = None) -> dict[str, str]:
    """The headers that name the answering model version (and the request id)."""
    headers = {"x-model-name": mv.name, "x-model-version": mv.version, "x-lineage-id": mv.lineage_id}
    if request_id is not None:
        headers["x-request-id"] = request_id
    return headers


@dataclass
class ServerState:
    """Everything a request handler needs, created once per app."""

    settings: ServeSettings
    repository: ModelRepository
    batcher: MicroBatcher
    metrics: ServerMetrics
    predlog: PredictionLog | None
    limits: Limits


class _Observe:
    """Pure-ASGI middleware: API-key check, request count and latency per route template.

    Pure ASGI rather than `BaseHTTPMiddleware`, which costs a task and a queue per request.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = state.settings.api_key
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
            metrics = self.state.metrics
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


class _FastPath:
    """Pure-ASGI dispatch of the scoring routes, ahead of FastAPI's router.

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
        RequestError: 400 when the given id is longer than 128 characters or not printable.
    """
    rid = request.headers.get("x-request-id") or fallback
    if rid is None:
        return uuid.uuid4().hex
    if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
        raise RequestError(400, f"x-request-id: must be 1..{MAX_REQUEST_ID} printable characters")
    return rid


def observe_scores(metrics: ServerMetrics, mv: ModelVersion, scores: np.ndarray) -> None:
    """Add every score to the score histogram (bulk, not one `observe` per row)."""
    child = metrics.score.labels(mv.name, mv.version)
    values = scores.reshape(-1)
    if len(values) == 1:
        child.observe(float(values[0]))
        return
    try:  # prometheus-client keeps per-bucket (non-cumulative) counters; bulk-add them.
        bounds = np.asarray(child._upper_bounds)
        index = np.searchsorted(bounds, values.astype(np.float64), side="left")
        for i, count in enumerate(np.bincount(index, minlength=len(bounds))):
            if count:
                child._buckets[i].inc(int(count))
        child._sum.inc(float(values.sum(dtype=np.float64)))
    except AttributeError:  # pragma: no cover - a future prometheus-client
        for v in values:
            child.observe(float(v))


def _openapi_body(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": ref}}}}


def create_app(settings: ServeSettings, *, repository: ModelRepository | None = None) -> FastAPI:
    """Build the server.

    Args:
        settings: the server's settings.
        repository: an existing registry (tests, the release plane); default one over
            `settings.repository`. Models in `settings.models` (or all on disk) load at start-up.

    Returns:
        The FastAPI app; its lifespan starts the batcher and the prediction log, loads the
        models, and on shutdown drains the queue and flushes the log.
    """
    metrics = ServerMetrics()

    def on_change() -> None:
        metrics.set_loaded({name: len(vs) for name, vs in state.repository.loaded().items()})

    if repository is None:
        repository = ModelRepository(
            settings.repository,
            intra_op_threads=settings.intra_op_threads,
            warmup_rows=settings.warmup_rows,
            on_change=on_change,
        )
    else:
        repository._on_change = on_change
    batcher = MicroBatcher(
        max_batch_size=settings.max_batch_size,
        max_queue_delay_ms=settings.max_queue_delay_ms,
        max_queue_rows=settings.max_queue_rows,
        on_batch=lambda mv, rows: metrics.batch_rows.labels(mv.name, mv.version).observe(rows),
    )
    predlog = (
        PredictionLog(
            settings.log_dir,
            flush_interval_s=settings.flush_interval_s,
            max_rows_per_file=settings.max_rows_per_file,
        )
        if settings.log_dir is not None
        else None
    )
    state = ServerState(
        settings=settings,
        repository=repository,
        batcher=batcher,
        metrics=metrics,
        predlog=predlog,
        limits=Limits(max_rows=settings.max_rows, max_string_length=settings.max_string_length),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if predlog is not None:
            predlog.start()
        await batcher.start()
        if not repository.loaded():
            await asyncio.to_thread(repository.load_all, settings.models)
        on_change()
        log.info("serving %s", {n: [mv.version for mv in vs] for n, vs in repository.loaded().items()})
        try:
            yield
        finally:
            await batcher.stop()
            if predlog is not None:
                await asyncio.to_thread(predlog.close)
            log.info("server stopped")

    app = FastAPI(
        title="driftloop model server",
        version=__version__,
        description="ONNX Runtime behind the Open Inference Protocol v2, with micro-batching.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks look up the global providers on every request
        # (~6% of a single-row request's CPU here); /metrics is our telemetry. Turn them off.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.driftloop = state

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """404 / 405 and other routing errors in the same `{"error": ...}` shape as the rest."""
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    fast_routes: list[tuple[Any, Callable[..., Awaitable[Response]]]] = []
    app.state.fast_routes = fast_routes  # (route, handler); bench/serve_common.py adds its no-op here
    app.add_middleware(_FastPath, routes=fast_routes)
    app.add_middleware(_Observe, state=state)  # added last = outermost: auth and metrics cover the fast path

    def guarded(
        handler: Callable[..., Awaitable[Response]],
    ) -> Callable[..., Awaitable[Response]]:
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
                return error_response(
                    429, f"server busy: {exc}", {"retry-after": str(settings.retry_after_s)}
                )
            except BatcherClosed as exc:
                return error_response(503, str(exc), {"retry-after": str(settings.retry_after_s)})
            except DriftloopError as exc:
                return error_response(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, answered as JSON
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

        return wrapper

    # ------------------------------------------------------------------ health & metadata
    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        """Liveness: the process answers."""
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        """Readiness: at least one model version is loaded and warmed up (503 otherwise)."""
        ok = repository.ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        """Server metadata (name, version, protocol extensions)."""
        return json_response(
            {"name": "driftloop", "version": __version__, "extensions": ["model_repository", "traffic"]}
        )

    async def _model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        mv = repository.get(name, version)
        sig = mv.signature
        body = {
            "name": mv.name,
            "versions": [v.version for v in repository.loaded().get(name, [])],
            "platform": PLATFORM,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in sig.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in sig.outputs],
            "model_version": mv.version,
            "lineage_id": mv.lineage_id,
            "parameters": {
                "nullable_inputs": [s.name for s in sig.inputs if s.nullable],
                "traffic_pct": repository.traffic(name),
            },
        }
        return json_response(body, headers=model_headers(mv))

    app.get("/v2/models/{name}", tags=["metadata"], summary="Model metadata")(guarded(_model_metadata))
    app.get("/v2/models/{name}/versions/{version}", tags=["metadata"], summary="Model version metadata")(
        guarded(_model_metadata)
    )

    async def _model_ready(request: Request, name: str, version: str | None = None) -> Response:
        mv = repository.get(name, version)
        return json_response(
            {"name": mv.name, "version": mv.version, "ready": True}, headers=model_headers(mv)
        )

    app.get("/v2/models/{name}/ready", tags=["health"], summary="Model readiness")(guarded(_model_ready))
    app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], summary="Model version readiness")(
        guarded(_model_ready)
    )

    # ------------------------------------------------------------------ scoring
    async def _score(
        mv: ModelVersion, feeds: dict[str, np.ndarray], rows: int, request_id: str, start: float
    ) -> np.ndarray:
        scores, service_ms, _ = await batcher.submit_timed(mv, feeds, rows)
        observe_scores(metrics, mv, scores)
        if predlog is not None:
            predlog.append(
                model=mv.name,
                version=mv.version,
                request_id=request_id,
                feeds=feeds,
                scores=scores,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                service_ms=service_ms,
            )
        return scores

    async def _infer(request: Request, name: str, version: str | None = None) -> Response:
        start = time.perf_counter()
        body = parse_model(InferenceRequest, await read_body(request, settings.max_body_bytes))
        request_id = request_id_of(request, body.id)
        mv = repository.route(name, request_id, version)
        feeds, rows = v2_feeds(body, mv.signature, state.limits)
        scores = await _score(mv, feeds, rows, request_id, start)
        response = {
            "model_name": mv.name,
            "model_version": mv.version,
            "id": request_id,
            "lineage_id": mv.lineage_id,
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [rows, 1], "data": scores.reshape(-1)}],
        }
        return json_response(response, headers=model_headers(mv, request_id))

    infer_doc = _openapi_body(InferenceRequest)
    app.post(V2_INFER, tags=["inference"], summary="Infer (v2)", openapi_extra=infer_doc)(
        guarded(_infer)
    )
    app.post(
        V2_VERSION_INFER,
        tags=["inference"],
        summary="Infer on a version (v2)",
        openapi_extra=infer_doc,
    )(guarded(_infer))

    async def _predict(request: Request, name: str) -> Response:
        start = time.perf_counter()
        body = parse_model(RecordsRequest, await read_body(request, settings.max_body_bytes))
        request_id = request_id_of(request)
        mv = repository.route(name, request_id)
        feeds, rows = records_feeds(body, mv.signature, state.limits)
        scores = await _score(mv, feeds, rows, request_id, start)
        response = {
            "predictions": scores.reshape(-1),
            "model_name": mv.name,
            "model_version": mv.version,
            "lineage_id": mv.lineage_id,
            "request_id": request_id,
        }
        return json_response(response, headers=model_headers(mv, request_id))

    app.post(
        V1_PREDICT,
        tags=["inference"],
        summary="Predict on records",
        description='`{"instances": [{"carrier": "UA", "origin": "EWR", ...}]}` -> `{"predictions": [...]}`',
        openapi_extra=_openapi_body(RecordsRequest),
    )(guarded(_predict))
    scoring_paths = set(SCORING_ENDPOINTS)
    fast_routes.extend((r, r.endpoint) for r in app.router.routes if getattr(r, "path", None) in scoring_paths)

    # ------------------------------------------------------------------ repository extension
    async def _optional(model: type, request: Request):
        raw = await read_body(request, settings.max_body_bytes)
        return parse_model(model, raw) if raw.strip() else model()

    async def repository_index(request: Request) -> Response:
        """Every model version on disk or loaded, with state (READY / UNAVAILABLE) and reason."""
        body = await _optional(IndexRequest, request) if request.method == "POST" else IndexRequest()
        rows = repository.index()
        if body.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return json_response(rows)

    app.get(
        "/v2/repository/index",
        tags=["repository"],
        summary="Repository index",
        operation_id="repository_index_get",
    )(guarded(repository_index))
    app.post(
        "/v2/repository/index",
        tags=["repository"],
        summary="Repository index (v2)",
        operation_id="repository_index",
        openapi_extra=_openapi_body(IndexRequest),
    )(guarded(repository_index))

    async def _load(request: Request, name: str) -> Response:
        body = await _optional(LoadRequest, request)
        params = body.parameters or {}
        version = params.get("version")
        mv = await asyncio.to_thread(repository.load, name, None if version is None else str(version))
        return json_response(
            {
                "name": mv.name,
                "version": mv.version,
                "lineage_id": mv.lineage_id,
                "state": "READY",
                "traffic_pct": repository.traffic(name),
            },
            headers=model_headers(mv),
        )

    app.post(
        "/v2/repository/models/{name}/load",
        tags=["repository"],
        summary="Load (or hot-swap) a model version",
        description='Body optional: `{"parameters": {"version": "2"}}`; default the latest on disk. '
        "A package that fails verification, ONNX Runtime or the warm-up is refused (400) and "
        "whatever was serving keeps serving.",
        openapi_extra=_openapi_body(LoadRequest),
    )(guarded(_load))

    async def _unload(request: Request, name: str) -> Response:
        body = await _optional(LoadRequest, request)
        version = (body.parameters or {}).get("version")
        gone = repository.unload(name, None if version is None else str(version))
        return json_response({"name": name, "unloaded": gone})

    app.post(
        "/v2/repository/models/{name}/unload",
        tags=["repository"],
        summary="Unload a model (or one version)",
        openapi_extra=_openapi_body(LoadRequest),
    )(guarded(_unload))

    async def _traffic(request: Request, name: str) -> Response:
        if request.method == "POST":
            body = parse_model(TrafficRequest, await read_body(request, settings.max_body_bytes))
            try:
                pct = repository.set_traffic(name, body.weights)
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
        else:
            pct = repository.traffic(name)
        return json_response({"name": name, "traffic_pct": pct})

    app.get(
        "/v2/repository/models/{name}/traffic",
        tags=["repository"],
        summary="Get the traffic split",
        operation_id="traffic_get",
    )(guarded(_traffic))
    app.post(
        "/v2/repository/models/{name}/traffic",
        tags=["repository"],
        summary="Set the traffic split",
        operation_id="traffic_set",
        description='`{"weights": {"1": 90, "2": 10}}`: sticky per request id; `{"weights": null}`: the latest '
        "loaded version takes 100%.",
        openapi_extra=_openapi_body(TrafficRequest),
    )(guarded(_traffic))

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics", tags=["metrics"])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this server's registry."""
        metrics.queue_rows.set(batcher.queued_rows)
        if predlog is not None:
            metrics.log_pending.set(predlog.pending_rows)
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferenceRequest, RecordsRequest, LoadRequest, TrafficRequest, IndexRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
