"""The OpenAPI 3.1 document: the contract a client is generated from, and what the server keeps.

Every declaration that is documentation only lives here: the response bodies (pydantic models, so
`/docs` and the tests read one definition), the table of statuses each operation answers, the
request constraints the server enforces that its pydantic request models do not carry themselves,
and `build_document`, which post-processes FastAPI's generated document. Handlers stay as they
are; a route added to the app shows up in the document, and its entry in `OPERATIONS` says what it
answers.

The contract, checked by `tests/serving/test_openapi_contract.py` (schemathesis, every check):
  * every status the server sends is declared, with its body's schema (errors are `ErrorBody`);
  * every constraint the server enforces that JSON Schema can express is in the schema (request
    ids, datatype enums, shapes, lengths, the records' columns), so that a schema-valid request is
    accepted (2xx, or 404 for a model that is not loaded) and a schema-violating one is refused.
    What no schema expresses is said in the descriptions: the v2 inputs must be exactly the
    model's inputs with as many values as their shape, and the row limit (413);
  * response headers that the server always sends are declared required.

Status meanings (Open Inference Protocol v2 REST, plus this server's edge):
    400 the body does not fit the model's signature, or a bad header (request id, content length)
    401 / 403 no or wrong API key / a key without the right for this route
    404 no such model (version) loaded, or no package of that name on disk
    405 method not allowed; `Allow` lists every method the document declares for the path
    413 the body is larger than `max_body_bytes`, or more rows than `max_rows`
    415 a body whose Content-Type is not one the operation declares
    422 the body is not JSON, or not the request model (pydantic's message, with the location)
    429 / 503 queue full / server shutting down, with `Retry-After` in seconds
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from driftloop.protocol import V1_PREDICT, V2_INFER, V2_VERSION_INFER
from driftloop.schema import OUTPUT, TensorSpec
from serving.validation import (
    _ACCEPTED,
    FP32_ROUNDS_TO_INF,
    MAX_REQUEST_ID,
    NAME_PATTERN,
    REQUEST_ID_PATTERN,
    IndexRequest,
    InferenceRequest,
    LoadRequest,
    RecordsRequest,
    TrafficRequest,
)

log = logging.getLogger(__name__)

JSON = "application/json"
# Open Inference Protocol binary tensor extension (Triton's `binary_tensor_data`): the JSON
# header, then the raw tensors; the header's byte length in `Inference-Header-Content-Length`.
BINARY = "application/octet-stream"
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
PROMETHEUS = "text/plain"
REQUEST_SCHEMAS: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    RecordsRequest,
    LoadRequest,
    TrafficRequest,
    IndexRequest,
)
_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}


# ---------------------------------------------------------------------------- response bodies
class ErrorBody(BaseModel):
    """Every error: one line naming the field and the fix."""

    error: str = Field(description="what is wrong, naming the field", examples=["inputs: missing input(s) temp"])


class LiveBody(BaseModel):
    """`GET /v2/health/live`."""

    live: bool


class ReadyBody(BaseModel):
    """`GET /v2/health/ready`: true (200) when a model version is loaded and warmed up, else false (503)."""

    ready: bool


class ServerMetadata(BaseModel):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions this server implements")


class TensorMetadata(BaseModel):
    """One tensor of a model's metadata; -1 in `shape` is a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}[/versions/{version}]` (from the package's signature.json)."""

    name: str
    versions: list[str] = Field(description="versions loaded")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    model_version: str = Field(description="the version this answer describes")
    lineage_id: str
    parameters: dict[str, Any] = Field(description="`nullable_inputs` and `traffic_pct`")


class ModelReadyBody(BaseModel):
    """`GET /v2/models/{name}[/versions/{version}]/ready` (a model that is not loaded is a 404)."""

    name: str
    version: str
    ready: bool


class OutputTensor(BaseModel):
    """One output tensor of a v2 response: `probability`, FP32, shape [n, 1], data flat row-major."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float | None] | None = None
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    """The v2 infer response."""

    model_name: str
    model_version: str
    id: str = Field(description="the request id: `x-request-id`, else the body's `id`, else generated")
    lineage_id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] | None = None


class RecordsResponse(BaseModel):
    """The records response: one probability per instance, in order."""

    predictions: list[float]
    model_name: str
    model_version: str
    lineage_id: str
    request_id: str


class IndexEntry(BaseModel):
    """One model version of the repository index."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = Field(description="why a version on disk is not loaded (empty when it is)")
    traffic_pct: float | None = Field(None, description="share of the model's traffic, percent (READY only)")


class LoadResponse(BaseModel):
    """`POST /v2/repository/models/{name}/load`."""

    name: str
    version: str
    lineage_id: str
    state: Literal["READY"]
    traffic_pct: dict[str, float]


class UnloadResponse(BaseModel):
    """`POST /v2/repository/models/{name}/unload`."""

    name: str
    unloaded: list[str]


class TrafficResponse(BaseModel):
    """`GET|POST /v2/repository/models/{name}/traffic`: the effective split, percent per version."""

    name: str
    traffic_pct: dict[str, float]


class ModelConfigBody(BaseModel):
    """`GET /v2/models/{name}/config` (what tritonclient's `get_model_config` reads)."""

    model_config = ConfigDict(extra="allow")

    name: str


class ModelStatsBody(BaseModel):
    """`GET /v2/models/{name}/stats` (what tritonclient's `get_inference_statistics` reads)."""

    model_config = ConfigDict(extra="allow")

    model_stats: list[dict[str, Any]]


RESPONSE_SCHEMAS: tuple[type[BaseModel], ...] = (
    ErrorBody,
    LiveBody,
    ReadyBody,
    ServerMetadata,
    ModelMetadata,
    ModelReadyBody,
    InferenceResponse,
    RecordsResponse,
    IndexEntry,
    LoadResponse,
    UnloadResponse,
    TrafficResponse,
    ModelConfigBody,
    ModelStatsBody,
)


# ---------------------------------------------------------------------------- the status table
@dataclass(frozen=True)
class Operation:
    """What one operation answers besides its success, and what it takes.

    Attributes:
        ok: the 200 body (a model, a JSON schema, or the Prometheus text when `PROMETHEUS`).
        statuses: the error statuses it sends (each with `ErrorBody`).
        body: the request model, or None for no body.
        body_required: whether the body is required (optional: an empty body is the default).
        model_headers: the success names the answering model version in headers.
        scoring: a scoring route: `x-request-id` in and out, 429 / 503 with `Retry-After`.
        protected: needs the API key when the server has one (every route but health).
        extra: more statuses with their own body model (e.g. the not-ready 503).
    """

    ok: Any
    statuses: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    model_headers: bool = False
    scoring: bool = False
    protected: bool = True
    extra: dict[int, type[BaseModel]] = field(default_factory=dict)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_INDEX = {"type": "array", "items": _ref("IndexEntry")}
_BODY = (400, 413, 415, 422)  # any route that reads a body: bad Content-Length, too large, type, not the model
_SCORING = (*_BODY, 404, 429, 503)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("get", "/v2/health/live"): Operation(LiveBody, protected=False),
    ("get", "/v2/health/ready"): Operation(ReadyBody, protected=False, extra={503: ReadyBody}),
    ("get", "/v2"): Operation(ServerMetadata),
    ("get", "/v2/models/{name}"): Operation(ModelMetadata, (404,), model_headers=True),
    ("get", "/v2/models/{name}/versions/{version}"): Operation(ModelMetadata, (404,), model_headers=True),
    ("get", "/v2/models/{name}/ready"): Operation(ModelReadyBody, (404,), model_headers=True),
    ("get", "/v2/models/{name}/versions/{version}/ready"): Operation(ModelReadyBody, (404,), model_headers=True),
    ("get", "/v2/models/{name}/config"): Operation(ModelConfigBody, (404,)),
    ("get", "/v2/models/{name}/versions/{version}/config"): Operation(ModelConfigBody, (404,)),
    ("get", "/v2/models/stats"): Operation(ModelStatsBody),
    ("get", "/v2/models/{name}/stats"): Operation(ModelStatsBody, (404,)),
    ("get", "/v2/models/{name}/versions/{version}/stats"): Operation(ModelStatsBody, (404,)),
    ("post", V2_INFER): Operation(InferenceResponse, _SCORING, InferenceRequest, model_headers=True, scoring=True),
    ("post", V2_VERSION_INFER): Operation(
        InferenceResponse, _SCORING, InferenceRequest, model_headers=True, scoring=True
    ),
    ("post", V1_PREDICT): Operation(RecordsResponse, _SCORING, RecordsRequest, model_headers=True, scoring=True),
    ("get", "/v2/repository/index"): Operation(_INDEX),
    ("post", "/v2/repository/index"): Operation(_INDEX, _BODY, IndexRequest, body_required=False),
    ("post", "/v2/repository/models/{name}/load"): Operation(
        LoadResponse, (*_BODY, 404), LoadRequest, body_required=False, model_headers=True
    ),
    ("post", "/v2/repository/models/{name}/unload"): Operation(
        UnloadResponse, (*_BODY, 404), LoadRequest, body_required=False
    ),
    ("get", "/v2/repository/models/{name}/traffic"): Operation(TrafficResponse, (404,)),
    ("post", "/v2/repository/models/{name}/traffic"): Operation(TrafficResponse, (*_BODY, 404), TrafficRequest),
    ("get", "/metrics"): Operation(PROMETHEUS),
}


_UNDECLARED = Operation({}, (400, 404, 413, 415, 422))


# ---------------------------------------------------------------------------- request constraints
def record_schema(specs: list[TensorSpec], max_string_length: int) -> dict[str, Any]:
    """JSON Schema of one records instance, from the model's input signature.

    Every rule `serving.validation.records_feeds` applies is here: the columns and no others,
    the non-nullable ones required, strings of at most `max_string_length` characters (BYTES),
    integers in the int64 range (INT64: JSON integers only), numbers within the FP32 range
    (FP32: finite once rounded to float32; a nullable column also takes null, and may be left out).
    """
    properties: dict[str, Any] = {}
    for spec in specs:
        if spec.datatype == "BYTES":
            schema: dict[str, Any] = {"type": "string", "maxLength": max_string_length}
        elif spec.datatype == "INT64":
            schema = {"type": "integer", **_INT64}
            schema["description"] = "7 and 7.0 alike; written with a fraction part, only up to 2**53 in magnitude"
        elif spec.datatype == "FP32":
            schema = {"type": "number", "exclusiveMinimum": -FP32_ROUNDS_TO_INF, "exclusiveMaximum": FP32_ROUNDS_TO_INF}
        else:  # FP64: any finite JSON number
            schema = {"type": "number"}
        if spec.nullable:
            schema["type"] = [schema["type"], "null"]
        properties[spec.name] = schema
    return {
        "title": "Record",
        "description": "One row: the model's raw input columns by name (a nullable column may be null or left out).",
        "type": "object",
        "properties": properties,
        "required": [s.name for s in specs if not s.nullable],
        "additionalProperties": False,
    }


def _request_id_schema() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID, "pattern": REQUEST_ID_PATTERN}


def example_row(specs: list[TensorSpec]) -> dict[str, Any]:
    """A placeholder row that fits `specs` (string "x", integer 0, number 0.0): used when no served
    package gives a real one (the app passes the first row of a package's reference sample)."""
    return {s.name: "x" if s.datatype == "BYTES" else 0 if s.datatype.startswith(("INT", "UINT")) else 0.0 for s in specs}


def _constrain_requests(
    components: dict[str, Any], max_string_length: int, inputs: list[TensorSpec] | None
) -> None:
    """Write into the request schemas the rules the server enforces beyond its pydantic models."""
    tensor = components["RequestInput"]["properties"]
    tensor["datatype"] = {
        "type": "string",
        "enum": sorted({d for accepted in _ACCEPTED.values() for d in accepted}),
        "description": "a v2 datatype the server takes; it must also fit the input's signature datatype",
    }
    tensor["shape"] = {
        "type": "array",
        "description": "[n] or [n, 1], n >= 1 rows (the row limit is a 413); every input has the same n",
        "prefixItems": [{"type": "integer", "minimum": 1, "maximum": 2**53}],
        "items": {"const": 1},
        "minItems": 1,
        "maxItems": 2,
    }
    tensor["data"]["description"] = (
        "n values, flat (row-major) or nested as [[v], ...]: strings (BYTES), integers (INT64/INT32), "
        "numbers (FP32/FP64), null for a nullable input"
    )
    components["RequestOutput"]["properties"]["name"] = {"type": "string", "enum": [OUTPUT]}
    components["RecordsRequest"]["properties"]["instances"]["items"] = _ref("Record")
    components["Record"] = (
        record_schema(inputs, max_string_length)
        if inputs is not None
        else {"title": "Record", "type": "object", "description": "One row: the served model's raw input columns by name "
              "(its signature.json inputs; GET /v2/models/{name} lists them)."}
    )  # fmt: skip
    weights = components["TrafficRequest"]["properties"]["weights"]
    weights["anyOf"][0]["additionalProperties"] = {"type": "number", "minimum": 0}
    weights["anyOf"][0]["not"] = {"additionalProperties": {"maximum": 0}}  # some weight > 0


# ---------------------------------------------------------------------------- the document
def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("ErrorBody")}}}
    if headers:
        out["headers"] = headers
    return out


_STATUS_TEXT = {
    400: "the request does not fit the model's signature, or a header is malformed",
    401: "no or wrong API key (x-api-key, or Authorization: Bearer)",
    403: "the API key has no right to this route",
    404: "no such model (version) loaded, or no package of that name on disk",
    413: "body larger than the byte limit, or more rows than the row limit",
    415: "a body Content-Type this operation does not take",
    422: "the body is not JSON, or not the request model",
    429: "the queue is full: retry after Retry-After seconds",
    503: "the server is shutting down: retry after Retry-After seconds",
}
_HEADER = {"schema": {"type": "string"}, "required": True}
_RETRY = {"Retry-After": {"description": "seconds", "schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}}


def _responses(op: Operation) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if op.ok == PROMETHEUS:
        ok["description"] = "Prometheus text exposition format"
        ok["content"] = {PROMETHEUS: {"schema": {"type": "string"}}}
    else:
        schema = _ref(op.ok.__name__) if isinstance(op.ok, type) else op.ok
        ok["content"] = {JSON: {"schema": schema}}
    headers: dict[str, Any] = {}
    if op.model_headers:
        for name in ("x-model-name", "x-model-version", "x-lineage-id"):
            headers[name] = dict(_HEADER, description="the model version that answered")
    if op.scoring:
        headers["x-request-id"] = {"schema": _request_id_schema(), "required": True}
    if headers:
        ok["headers"] = headers
    out: dict[str, Any] = {"200": ok}
    for status, model in op.extra.items():
        out[str(status)] = {"description": model.__doc__ or "", "content": {JSON: {"schema": _ref(model.__name__)}}}
    statuses = set(op.statuses)
    if op.protected:
        statuses |= {401, 403}
    for status in sorted(statuses):
        headers = _RETRY if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": dict(_HEADER)}
        out[str(status)] = _error(_STATUS_TEXT[status], headers)
    return out


def _parameters(op: Operation, generated: list[dict[str, Any]], examples: dict[str, list[str]]) -> list[dict[str, Any]]:
    params = []
    for p in generated:
        if p["in"] == "path":
            p = dict(p, schema={"type": "string", "minLength": 1, "pattern": NAME_PATTERN})
            if examples.get(p["name"]):
                p["examples"] = {v: {"value": v} for v in examples[p["name"]]}
            params.append(p)
        # FastAPI lists a handler's optional `version` argument as a query parameter; versions
        # are addressed by path in the protocol (and the scoring fast path never reads a query).
    if op.scoring:
        params.append(
            {
                "name": "x-request-id",
                "in": "header",
                "required": False,
                "description": "request id, echoed back and logged; default the v2 body's `id`, else generated",
                "schema": _request_id_schema(),
            }
        )
    return params


# The framing is not something OpenAPI can state: the header that gives the JSON part's length
# belongs to this media type only, and a parameter cannot be tied to a media type. So the header is
# described here (and declared on the binary response), not listed as a request parameter, which a
# client or a fuzzer would then send with JSON bodies too.
_BINARY_DOC = (
    f"Binary tensor extension (`{BINARY}`): the body is the JSON inference request (this operation's "
    f"JSON body), then the raw tensors in input order; the request header `{HEADER_LENGTH}` gives the "
    "JSON part's byte length (without it the whole body is the JSON request). A binary input carries "
    '`"parameters": {"binary_data_size": <bytes>}` and no `data`. BYTES elements are a 4-byte '
    "little-endian length then the bytes; numeric tensors are raw little-endian, row-major. With "
    '`"parameters": {"binary_data_output": true}` (or `binary_data` on an output) the response is framed '
    f"the same way, its JSON part's length in the response's `{HEADER_LENGTH}`."
)


def example_bodies(specs: list[TensorSpec], row: dict[str, Any] | None = None) -> dict[type[BaseModel], Any]:
    """One example body per request model, for the document (and the contract tests), over the
    inputs `specs` with the values of `row` (default `example_row(specs)`)."""
    row = {s.name: (row if row is not None else example_row(specs)).get(s.name) for s in specs}
    v2 = {
        "id": "request-0001",
        "inputs": [
            {"name": s.name, "datatype": s.datatype, "shape": [1, 1], "data": [row[s.name]]} for s in specs
        ],
    }
    return {
        InferenceRequest: v2,
        RecordsRequest: {"instances": [row]},
        LoadRequest: {"parameters": {"version": "1"}},
        TrafficRequest: {"weights": {"1": 100}},
        IndexRequest: {"ready": True},
    }


def _request_body(op: Operation, binary: bool, examples: dict[type[BaseModel], Any]) -> dict[str, Any]:
    assert op.body is not None
    content: dict[str, Any] = {JSON: {"schema": _ref(op.body.__name__)}}
    if op.body in examples:
        content[JSON]["example"] = examples[op.body]
    if binary and op.body is InferenceRequest:
        content[BINARY] = {"schema": {"type": "string", "contentMediaType": BINARY, "description": _BINARY_DOC}}
    body: dict[str, Any] = {"required": op.body_required, "content": content}
    if not op.body_required:
        body["description"] = "optional: no body (or an empty one) means every default"
    return body


def app_document(
    app: Any,
    *,
    max_string_length: int,
    api_keys: bool,
    extensions: list[str],
    models: dict[str, list[str]] | None = None,
    inputs: list[TensorSpec] | None = None,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`build_document` over FastAPI's generated document of `app` (what `/openapi.json` serves)."""
    from fastapi.openapi.utils import get_openapi

    generated = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    return build_document(
        generated, max_string_length=max_string_length, api_keys=api_keys, extensions=extensions, models=models,
        inputs=inputs, example=example,
    )


def build_document(
    generated: dict[str, Any],
    *,
    max_string_length: int,
    api_keys: bool,
    extensions: list[str],
    models: dict[str, list[str]] | None = None,
    inputs: list[TensorSpec] | None = None,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The served OpenAPI 3.1 document, from FastAPI's generated one.

    Args:
        generated: `fastapi.openapi.utils.get_openapi(...)` of the app (not modified).
        max_string_length: the server's limit on a BYTES value (the records' string columns).
        api_keys: the server requires an API key: declare the schemes and each route's security.
        extensions: the protocol extensions the server advertises (`GET /v2`); with
            `binary_tensor_data`, the infer operations also take the binary framing.
        models: {model: [versions]} on disk, given as the path parameters' examples.
        inputs: the served model's inputs (its `signature.json`): the records' `Record` schema and
            the bodies' examples; None (nothing loaded, or models with different inputs): `Record`
            is any object and the scoring bodies have no example.
        example: one row for the examples (default `example_row(inputs)`).

    Returns:
        A new document.

    A route missing from `OPERATIONS` is documented with every error status and a warning is
    logged; `tests/serving/test_openapi_contract.py` fails on it (declare what it answers).
    """
    doc = copy.deepcopy(generated)
    doc["openapi"] = "3.1.0"
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in (*REQUEST_SCHEMAS, *RESPONSE_SCHEMAS):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
    _constrain_requests(components, max_string_length, inputs)
    bodies = example_bodies(inputs, example) if inputs is not None else {}
    if inputs is None:
        bodies = {k: v for k, v in example_bodies([]).items() if k not in (InferenceRequest, RecordsRequest)}
    binary = BINARY_EXTENSION in extensions
    models = models or {}
    examples = {"name": sorted(models), "version": sorted({v for vs in models.values() for v in vs})}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            op = OPERATIONS.get((method, path))
            if op is None:  # a new route nobody declared yet: the test of the contract fails on it
                log.warning("OpenAPI: %s %s has no entry in serving.openapi.OPERATIONS", method.upper(), path)
                op = _UNDECLARED
            operation["parameters"] = _parameters(op, operation.get("parameters", []), examples)
            if not operation["parameters"]:
                del operation["parameters"]
            operation.pop("requestBody", None)
            if op.body is not None:
                operation["requestBody"] = _request_body(op, binary, bodies)
                if binary and op.body is InferenceRequest:
                    operation["description"] = (operation.get("description", "") + "\n\n" + _BINARY_DOC).strip()
            operation["responses"] = _responses(op)
            if binary and op.body is InferenceRequest:
                ok = operation["responses"]["200"]
                ok["content"][BINARY] = {"schema": {"type": "string", "contentMediaType": BINARY}}
                ok["headers"][HEADER_LENGTH] = {
                    "description": "binary response: byte length of the JSON header that starts the body",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "required": False,
                }
            if api_keys and op.protected:
                operation["security"] = [{"ApiKeyHeader": []}, {"BearerAuth": []}]
    if api_keys:
        doc["components"]["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "BearerAuth": {"type": "http", "scheme": "bearer"},
        }
    return doc
