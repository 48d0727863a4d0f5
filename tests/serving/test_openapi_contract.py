"""The OpenAPI document is the contract: schemathesis against a real server on a real package.

A uvicorn server on 127.0.0.1 (free port) serves a complete model package (`build_test_package`:
model.onnx, signature.json, SHA256SUMS, ...). Schemathesis reads the server's own `/openapi.json`
and runs every check (`tests/serving/schemathesis.toml`, shared with `make fuzz`) in all four
phases: examples, coverage and fuzzing through `@schema.parametrize()`, stateful through the
state machine. Seeds are fixed and the examples bounded (a few seconds per operation on 2 cores);
`make fuzz` runs the same contract longer.

Next to it, the disagreements issue 17 listed, each pinned by a direct test so a regression names
itself: undeclared statuses, the request id rule, the optional index body, `/metrics`' content
type, 405 `Allow`; and the document validates as OpenAPI 3.1.
"""

from __future__ import annotations

import math
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.config import SchemathesisConfig

from driftloop.payloads import json_value
from serving.app import create_app
from serving.config import ServeSettings
from serving.openapi import BINARY, BINARY_EXTENSION, HEADER_LENGTH, OPERATIONS, app_document
from serving.testing import TEST_INPUTS, build_test_package, running_server, synthetic_rows
from serving.validation import FP32_ROUNDS_TO_INF, REQUEST_ID_PATTERN

MODEL = "flight_delay"
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
SEED = 20261130
MAX_EXAMPLES = 8  # per operation and phase; `make fuzz` runs hundreds
SETTINGS = {"max_rows": 500, "max_body_bytes": 256 * 1024, "max_string_length": 16}


def contract_config(seed: int = SEED, max_examples: int = MAX_EXAMPLES) -> SchemathesisConfig:
    """The shared TOML plus a fixed seed and a bound on examples (top-level keys go first in TOML)."""
    head = f"seed = {seed}\n\n[generation]\nmax-examples = {max_examples}\ndatabase = \"none\"\n\n"
    return SchemathesisConfig.from_str(head + CONFIG_FILE.read_text(), base_dir=str(CONFIG_FILE.parent))


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory) -> Iterator[str]:
    """A real server over one real package, version 1 of `flight_delay`; yields its base URL."""
    root = tmp_path_factory.mktemp("contract_repo")
    build_test_package(root / MODEL / "1", model_name=MODEL)
    app = create_app(ServeSettings(repository=root, **SETTINGS))
    with running_server(app) as base:
        yield base


# What the server derives from the loaded package (`serving.app.served_contract`): its signature's
# inputs and the first row of its reference sample (build_test_package: synthetic_rows(300, seed=0)).
_FIRST = synthetic_rows(300, seed=0).iloc[0]
CONTRACT = {"inputs": TEST_INPUTS, "example": {s.name: json_value(_FIRST[s.name]) for s in TEST_INPUTS}}


def contract_document() -> dict:
    """The document a server with `SETTINGS` and `MODEL` version 1 on disk serves (built without one)."""
    app = create_app(ServeSettings(repository=Path("contract-repository-not-created"), **SETTINGS))
    return app_document(
        app,
        max_string_length=SETTINGS["max_string_length"],
        api_keys=False,
        extensions=app.state.driftloop.server_metadata()["extensions"],
        models={MODEL: ["1"]},
        **CONTRACT,
    )


# Loaded at collection: schemathesis' lazy `from_fixture` does not run under pytest 9.2 (it sets a
# node's `_nodeid`, which pytest no longer has); `test_the_served_document_is_the_tested_one`
# checks that the running server serves exactly this document.
DOCUMENT = contract_document()
runpy.run_path(str(Path(__file__).with_name("contract_hooks.py")))  # binary bodies are frames
schema = schemathesis.openapi.from_dict(DOCUMENT, config=contract_config())


@pytest.fixture(scope="module")
def document(contract_server) -> dict:
    """The served document with `MODEL` loaded: the schemathesis runs unload it, and the document
    follows what is loaded, so load it first whatever ran before."""
    r = httpx.post(f"{contract_server}/v2/repository/models/{MODEL}/load")
    assert r.status_code == 200, r.text
    return httpx.get(f"{contract_server}/openapi.json").json()


@pytest.fixture
def server(contract_server) -> str:
    """The contract server with `MODEL` loaded again: the schemathesis runs unload it on purpose."""
    r = httpx.post(f"{contract_server}/v2/repository/models/{MODEL}/load")
    assert r.status_code == 200, r.text
    return contract_server


def test_the_served_document_is_the_tested_one(document):
    assert document == DOCUMENT


@schema.parametrize()
def test_every_operation_keeps_the_contract(case, contract_server):
    """Examples, coverage and fuzzing phases, every check: statuses, bodies, headers, acceptance."""
    case.call_and_validate(base_url=contract_server)


def test_stateful_sequences_keep_the_contract(contract_server):
    """Stateful phase: chains of calls linked by what the responses return (load, unload, traffic, infer)."""
    stateful = schemathesis.openapi.from_dict(DOCUMENT, config=contract_config())
    stateful.config.update(base_url=contract_server)
    stateful.as_state_machine().run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=6,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# ---------------------------------------------------------------------------- the document itself
def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def test_every_route_is_declared_and_every_error_has_the_error_body(document):
    declared = {(m, p) for p, item in document["paths"].items() for m in item}
    assert declared <= set(OPERATIONS)
    for (method, path) in declared:
        responses = document["paths"][path][method]["responses"]
        for status, response in responses.items():
            if int(status) >= 400 and not (path == "/v2/health/ready" and status == "503"):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict"):
        assert {"400", "401", "404", "413", "415", "422", "429", "503"} <= set(document["paths"][path]["post"]["responses"])
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_binary_extension_and_api_keys_are_declared_when_the_server_has_them(document, server):
    app = create_app(ServeSettings(repository=Path("contract-repository-not-created"), **SETTINGS))
    doc = app_document(app, max_string_length=16, api_keys=True, extensions=[BINARY_EXTENSION])
    validate_openapi(doc)
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert BINARY in infer["requestBody"]["content"] and HEADER_LENGTH in infer["description"]
    assert HEADER_LENGTH in infer["responses"]["200"]["headers"] and BINARY in infer["responses"]["200"]["content"]
    assert HEADER_LENGTH not in {p["name"] for p in infer["parameters"]}  # not with JSON bodies
    assert infer["security"] and "/v2/health/live" not in {
        p for p, item in doc["paths"].items() if any("security" in op for op in item.values())
    }
    advertised = BINARY_EXTENSION in httpx.get(f"{server}/v2").json()["extensions"]
    assert (BINARY in document["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]) == advertised


def test_binary_bodies_keep_the_contract(server):
    """The infer operation with the binary content type declared: generated frames are answered as declared."""
    app = create_app(ServeSettings(repository=Path("contract-repository-not-created"), **SETTINGS))
    doc = app_document(
        app, max_string_length=SETTINGS["max_string_length"], api_keys=False,
        extensions=[BINARY_EXTENSION], models={MODEL: ["1"]}, **CONTRACT,
    )  # fmt: skip
    operation = schemathesis.openapi.from_dict(doc, config=contract_config())["/v2/models/{name}/infer"]["POST"]
    statuses = []

    @settings(max_examples=10, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(path_parameters={"name": MODEL}).filter(lambda c: c.media_type == BINARY))
    def answered_as_declared(case) -> None:
        assert isinstance(case.body, bytes)
        response = case.call_and_validate(base_url=server)
        statuses.append(response.status_code)

    answered_as_declared()
    assert 200 in statuses  # the whole example is a complete request (a part is a 400 naming the inputs)


# ---------------------------------------------------------------------------- the listed disagreements
def test_request_id_rule_is_the_same_in_the_document_and_the_server(document, server):
    """The header's schema and the server agree on every id hypothesis tries (printable ASCII, 1..128)."""
    header = next(
        p for p in document["paths"]["/v1/models/{name}:predict"]["post"]["parameters"] if p["name"] == "x-request-id"
    )
    body = {"instances": [{"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 0,
                           "day_of_week": 0, "distance": 719}]}
    with httpx.Client(base_url=server) as client:

        @settings(max_examples=40, derandomize=True, database=None, deadline=None)
        # What an HTTP client can send in a header value: tab, and 0x20..0xFF (h11 refuses other controls).
        @given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF) | st.just("\t"), max_size=130))
        def agree(rid: str) -> None:
            stripped = rid.strip(" \t")  # HTTP strips these around a header value
            if not stripped:
                return
            r = client.post(f"/v1/models/{MODEL}:predict", json=body, headers={"x-request-id": rid.encode("latin-1")})
            try:
                jsonschema.validate(stripped, header["schema"])
                valid = True
            except jsonschema.ValidationError:
                valid = False
            assert (r.status_code == 200) == valid, (rid, r.status_code, r.text)

        agree()
    assert re.fullmatch(REQUEST_ID_PATTERN, "abc-1") and not re.fullmatch(REQUEST_ID_PATTERN, "a\x1fb")


def test_index_body_is_optional_on_both_sides(document, server):
    assert document["paths"]["/v2/repository/index"]["post"]["requestBody"]["required"] is False
    r = httpx.post(f"{server}/v2/repository/index")
    assert r.status_code == 200 and r.json()[0]["name"] == MODEL


def test_metrics_is_prometheus_text(document, server):
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    r = httpx.get(f"{server}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_405_allow_lists_every_declared_method_of_the_path(document, server):
    for path, url in (("/v2/repository/index", "/v2/repository/index"),
                      ("/v2/repository/models/{name}/traffic", f"/v2/repository/models/{MODEL}/traffic"),
                      ("/v2/models/{name}/infer", f"/v2/models/{MODEL}/infer")):
        r = httpx.request("OPTIONS", f"{server}{url}")
        assert r.status_code == 405
        allowed = {m.strip().lower() for m in r.headers["allow"].split(",")}
        assert allowed == set(document["paths"][path]), (path, r.headers["allow"])


def test_load_of_a_package_not_on_disk_is_404(server):
    r = httpx.post(f"{server}/v2/repository/models/no_such_model/load")
    assert r.status_code == 404 and "no version" in r.json()["error"]
    r = httpx.post(f"{server}/v2/repository/models/{MODEL}/load", json={"parameters": {"version": 9}})
    assert r.status_code == 404


def test_with_an_api_key_every_protected_operation_answers_401_as_declared(tmp_path):
    """What schemathesis' `ignored_auth` check asks, on a server that has a key: no key, no answer."""
    root = tmp_path / "repo"
    build_test_package(root / MODEL / "1", model_name=MODEL)
    app = create_app(ServeSettings(repository=root, api_key="s3cret", **SETTINGS))
    with running_server(app) as base, httpx.Client(base_url=base) as client:
        doc = client.get("/openapi.json", headers={"x-api-key": "s3cret"}).json()
        validate_openapi(doc)
        assert set(doc["components"]["securitySchemes"]) == {"ApiKeyHeader", "BearerAuth"}
        for path, item in doc["paths"].items():
            url = path.replace("{name}", MODEL).replace("{version}", "1")
            for method, operation in item.items():
                r = client.request(method.upper(), url, json={} if "requestBody" in operation else None)
                if "security" in operation:
                    assert r.status_code == 401 and "401" in operation["responses"], (method, path)
                    assert "www-authenticate" in r.headers
                else:
                    assert path.startswith("/v2/health") and r.status_code == 200, (method, path, r.status_code)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("hour", 7.0),  # JSON Schema's integer: 7.0 is 7
        ("hour", 7.5),
        ("distance", 2.0**53),  # the largest float taken as an integer
        ("hour", True),
        ("hour", "7"),
        ("visib", math.nextafter(FP32_ROUNDS_TO_INF, 0)),  # rounds to FP32's largest value
        ("visib", FP32_ROUNDS_TO_INF),  # rounds to infinity
        ("visib", None),
        ("distance", None),
        ("carrier", "x" * SETTINGS["max_string_length"]),
        ("carrier", "x" * (SETTINGS["max_string_length"] + 1)),
    ],
)
def test_records_schema_and_server_agree_at_the_edges(document, server, column, value):
    row = {"carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 7, "minute": 0, "day_of_week": 0,
           "distance": 719, column: value}  # fmt: skip
    record = document["components"]["schemas"]["Record"]
    try:
        jsonschema.validate(row, record)
        valid = True
    except jsonschema.ValidationError:
        valid = False
    r = httpx.post(f"{server}/v1/models/{MODEL}:predict", json={"instances": [row]})
    assert (r.status_code == 200) == valid, (column, value, r.status_code, r.text)
    assert r.status_code in (200, 400)
