"""The app factory: Open Inference Protocol v2 REST, the records endpoint, repository control, metrics.

Routes live by concern in `serving/routes/` (health, inference, repository, metrics) over one
`serving.dataplane.DataPlane`, which knows nothing of HTTP; `serving.http` is the shared edge.

Endpoints (the OpenAPI document is at `/openapi.json`, the interactive one at `/docs`):
    GET  /v2/health/live, /v2/health/ready                      no API key needed
    GET  /v2                                                     server metadata
    GET  /v2/models/{name}[/versions/{version}]                  model metadata (from signature.json)
    GET  /v2/models/{name}[/versions/{version}]/ready
    GET  /v2/models/{name}[/versions/{version}]/config           Triton's model configuration (JSON)
    GET  /v2/models[/{name}[/versions/{version}]]/stats          Triton's statistics extension
    POST /v2/models/{name}[/versions/{version}]/infer            v2 tensors (JSON or the binary tensor
                                                                 extension) -> `probability` FP32 [n, 1]
    POST /v1/models/{name}:predict                               {"instances": [{col: value}]} -> predictions
    POST /v1/models/{name}:explain                               the same body -> SHAP attributions per row
    GET|POST /v2/repository/index                                models on disk / loaded, with state
    POST /v2/repository/models/{name}/load                       {"parameters": {"version": "2"}} optional
    POST /v2/repository/models/{name}/unload                     {"parameters": {"version": "1"}} optional
    GET|POST /v2/repository/models/{name}/traffic                {"weights": {"1": 90, "2": 10}} (percent, sum 100)
    GET  /metrics                                                Prometheus text format

Every scoring and metadata response carries headers `x-model-name`, `x-model-version`,
`x-lineage-id` (and the same in the body); scoring responses also carry `x-request-id`, taken from
the request's header (or the v2 body's `id`) or generated.

Errors are `{"error": "<message naming the field>"}` with 400 / 401 / 403 / 404 / 413 / 415 / 422 /
429 / 503; a client gone mid-body is counted as 499. Bodies are read with a byte limit before any
parsing (chunked and gzip bodies included: the limit applies to the decompressed size) and decoded
by `serving.validation` from the raw bytes; handlers never call `request.json()`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from driftloop import __version__
from driftloop.protocol import SCORING_ENDPOINTS
from serving.config import ServeSettings
from serving.dataplane import DataPlane
from serving.http import allowed_methods, error_response
from serving.middleware import FastPath, Observe
from serving.openapi import app_document
from serving.repository import ModelRepository
from serving.routes import explain, health, inference, metrics
from serving.routes import repository as repository_routes


def served_contract(repository: ModelRepository) -> dict[str, Any]:
    """The inputs and an example row for the OpenAPI document, from the loaded packages only.

    The server reads no params: the contract is the served `signature.json`. When every loaded
    model has the same inputs, they are the document's `Record` and the example is the first row
    of that package's reference sample; otherwise (none loaded, or different inputs) neither.

    Returns:
        {"inputs": [TensorSpec] | None, "example": {column: value} | None}.
    """
    import pandas as pd

    from driftloop.payloads import json_value

    versions = [mv for mvs in repository.loaded().values() for mv in mvs]
    contracts = {tuple(s.model_dump_json() for s in mv.signature.inputs) for mv in versions}
    if len(contracts) != 1:
        return {"inputs": None, "example": None}
    inputs = list(versions[0].signature.inputs)
    try:
        row = pd.read_parquet(versions[0].folder / "reference.parquet").iloc[0]
        example = {s.name: json_value(row[s.name]) for s in inputs}
    except (OSError, ValueError, KeyError, IndexError):
        example = None
    return {"inputs": inputs, "example": example}


def create_app(
    settings: ServeSettings, *, repository: ModelRepository | None = None, span_exporter: Any = None
) -> FastAPI:
    """Build the server: one `DataPlane`, the route modules over it, and two ASGI middlewares.

    Args:
        settings: the server's settings.
        repository: an existing registry (tests, the release plane); default one over
            `settings.repository`. Models in `settings.models` (or all on disk) load at start-up.
        span_exporter: an OpenTelemetry `SpanExporter` spans go to synchronously (turns tracing on;
            tests pass `InMemorySpanExporter`); else `settings.tracing` and the `OTEL_*` variables decide.

    Returns:
        The FastAPI app; its lifespan starts the batcher and the prediction log, loads the
        models, and on shutdown drains the queue and flushes the log. `app.state.driftloop` is
        the data plane.
    """
    plane = DataPlane(settings, repository, span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await plane.start()
        try:
            yield
        finally:
            await plane.stop()

    app = FastAPI(
        title="driftloop model server",
        version=__version__,
        description="ONNX Runtime behind the Open Inference Protocol v2, with micro-batching.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks look up the global providers on every request
        # (~6% of a single-row request's CPU here); /metrics is our telemetry. Turn them off.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.driftloop = plane

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """404 / 405 and other routing errors in the same `{"error": ...}` shape as the rest.

        A 405's `Allow` lists every method of every route on that path (Starlette's lists only
        the first route's, while GET and POST of one path are two routes here).
        """
        headers = {k: v for k, v in (getattr(exc, "headers", None) or {}).items() if k.lower() != "allow"}
        if exc.status_code == 405:
            headers["allow"] = ", ".join(allowed_methods(app.router.routes, request.scope))
        return error_response(exc.status_code, str(exc.detail), headers or None)

    scoring = inference.router(plane)
    routers = (health.router(plane), scoring, explain.router(plane), repository_routes.router(plane), metrics.router(plane))
    for router in routers:
        app.include_router(router)

    # The scoring routes, answered ahead of FastAPI's router (taken from their own router: FastAPI
    # keeps included routers as wrappers in `app.router.routes`).
    fast_routes: list[tuple[Any, Any]] = [(r, r.endpoint) for r in scoring.routes if r.path in SCORING_ENDPOINTS]
    assert len(fast_routes) == len(SCORING_ENDPOINTS), "a scoring endpoint has no handler"
    app.state.fast_routes = fast_routes  # (route, handler); bench/serve_common.py adds its no-op here
    app.add_middleware(FastPath, routes=fast_routes)
    app.add_middleware(Observe, plane=plane)  # added last = outermost: auth and metrics cover the fast path

    def openapi() -> dict[str, Any]:
        # The document names the models on disk and the loaded packages' columns: rebuild it when
        # either changes (a load, an unload, a new release), reuse it otherwise.
        models = plane.repository.available()
        loaded = tuple((name, mv.version, mv.load_seq) for name, mvs in plane.repository.loaded().items() for mv in mvs)
        key = (tuple((m, tuple(v)) for m, v in models.items()), loaded)
        if app.openapi_schema is None or app.state.openapi_key != key:
            app.openapi_schema = app_document(
                app,
                max_string_length=settings.max_string_length,
                api_keys=settings.api_key is not None,
                extensions=plane.server_metadata()["extensions"],
                models=models,
                **served_contract(plane.repository),
            )
            app.state.openapi_key = key
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
