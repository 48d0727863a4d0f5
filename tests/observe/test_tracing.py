"""OpenTelemetry spans of a real server (uvicorn on loopback), caught by the SDK's in-memory exporter."""

from __future__ import annotations

import datetime as dt
import random

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import TEST_INPUTS, build_test_package, records_payload, running_server, synthetic_rows

MODEL = "flight_delay"
PHASES = ["parse", "validate", "queue wait", "inference", "log write"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace_repo")
    build_test_package(root / MODEL / "1", model_name=MODEL, version_weight=1.0, lineage_id="lin-trace")
    return root


def test_tracing_is_off_by_default(repo):
    assert create_app(ServeSettings(repository=repo)).state.driftloop.tracer is None


@pytest.mark.slow
def test_each_request_gets_a_server_span_with_its_phases_under_the_callers_trace(repo, tmp_path):
    exporter = InMemorySpanExporter()
    app = create_app(ServeSettings(repository=repo, log_dir=tmp_path / "logs"), span_exporter=exporter)
    body = records_payload(synthetic_rows(3, seed=1))
    with running_server(app) as base, httpx.Client(base_url=base) as client:
        r = client.post(f"/v1/models/{MODEL}:predict", json=body,
                        headers={"x-request-id": "req-42", "traceparent": f"00-{TRACE_ID}-{PARENT}-01"})  # fmt: skip
        assert r.status_code == 200
        assert client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{}]}).status_code == 400
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("driftloop.request_id") == "req-42"]
    assert server.name == "POST /v1/models/{name}:predict"
    assert format(server.context.trace_id, "032x") == TRACE_ID and format(server.parent.span_id, "016x") == PARENT
    assert server.attributes["driftloop.model_version"] == "1" and server.attributes["driftloop.lineage_id"] == "lin-trace"
    assert server.attributes["driftloop.rows"] == 3 and server.attributes["http.response.status_code"] == 200
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id),
                      key=lambda s: s.start_time)  # fmt: skip
    assert [s.name for s in children] == PHASES
    for child in children:  # each phase lies inside the request, in order
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    for before, after in zip(children, children[1:], strict=False):
        assert before.end_time <= after.start_time + 1000  # ns: phases follow each other
    bad = [s for s in spans if s.attributes.get("http.response.status_code") == 400]
    assert len(bad) == 1 and bad[0].kind == SpanKind.SERVER  # a refused request is traced too (no phases)


@pytest.mark.slow
def test_the_sampler_comes_from_the_standard_variables(repo, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    app = create_app(ServeSettings(repository=repo), span_exporter=exporter)
    with running_server(app) as base, httpx.Client(base_url=base) as client:
        for _ in range(5):
            assert client.post(f"/v1/models/{MODEL}:predict", json=records_payload(synthetic_rows(1))).status_code == 200
    assert exporter.get_finished_spans() == ()


def test_the_request_is_sampled_as_the_sdk_sampler_decides(monkeypatch):
    """`Tracing.begin` follows the caller's sampled flag (ParentBased) and, with no caller, takes exactly
    the requests `TraceIdRatioBased` would (its test on the trace id, done without the SDK call)."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    from serving.tracing import Tracing

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    tracing = Tracing(InMemorySpanExporter())
    caller = {"method": "POST", "headers": [(b"traceparent", f"00-{TRACE_ID}-{PARENT}-01".encode())]}
    rt = tracing.begin(caller)
    assert format(rt.trace_id, "032x") == TRACE_ID and rt.parent.span_id == int(PARENT, 16) and rt.parent.is_remote
    assert tracing.begin({"method": "POST", "headers": [(b"traceparent", f"00-{TRACE_ID}-{PARENT}-00".encode())]}) is None
    ratio = TraceIdRatioBased(0.5)
    decisions = []
    for seed in range(200):  # trace ids come from `random` (the SDK's RandomIdGenerator): seeded, known
        random.seed(seed)
        sampled = tracing.begin({"method": "POST", "headers": []}) is not None
        random.seed(seed)
        decisions.append((sampled, ratio.should_sample(None, random.getrandbits(128), "POST").decision.is_sampled()))
    assert all(ours == sdk for ours, sdk in decisions) and 50 < sum(s for s, _ in decisions) < 150


def test_the_drift_checks_steps_are_spans(tmp_path):
    """The drift check's tasks (called as plain functions) record spans with their figures."""
    from driftloop.config import PolicyParams
    from flows.monitoring import measure_drift_task, read_reference_task, read_window_task
    from flows.tracing import set_tracer
    from serving.tracing import Tracing

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, service_name="driftloop-flows")
    set_tracer(tracing.tracer)
    try:
        end = dt.datetime(2026, 6, 30)
        frame = read_window_task.fn(str(tmp_path / "logs"), MODEL, end - dt.timedelta(days=1), end).frame
        reference, why = read_reference_task.fn(str(tmp_path / "no-package"))
        assert reference is None and "no reference" in why
        summary = measure_drift_task.fn(frame, synthetic_rows(50), PolicyParams(), model_version="3",
                                       inputs=TEST_INPUTS, time_column="time_hour")
    finally:
        set_tracer(None)
    tracing.provider.force_flush()  # the batch processor's queue
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"drift read-window", "drift read-reference", "drift measure"}
    assert spans["drift read-window"].attributes == {"driftloop.model": MODEL, "driftloop.rows": 0}
    measured = spans["drift measure"].attributes
    assert measured["driftloop.model_version"] == "3" and measured["driftloop.status"] == summary.status == "skipped"
    assert spans["drift measure"].resource.attributes["service.name"] == "driftloop-flows"


def test_a_request_span_and_its_phases_reach_the_collector_as_the_otlp_library_encodes_them(monkeypatch):
    """A request's `RequestTrace` (with and without a caller, an escaped exception, a 5xx) becomes its span
    and its phases' spans (`expand`); the server's OTLP/HTTP exporter posts the library's own message for
    them (encoded from the readings: serving/otlp.py), and for a batch with an SDK span (events, list
    attributes, error status) too, to a collector on loopback."""
    import http.server
    import threading

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.trace import Status, StatusCode

    from serving.otlp import RequestSpanExporter
    from serving.tracing import RequestTrace, Tracing, expand

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter)
    for caller, status, error in [(f"00-{TRACE_ID}-{PARENT}-01", 200, None), (None, 500, ValueError("boom"))]:
        headers = [(b"traceparent", caller.encode())] if caller else []
        rt = tracing.begin({"headers": headers, "method": "POST"})
        rt.parsed = rt.start + 1e-4
        rt.request_id, rt.rows = "r-1", 2
        rt.span_attributes = {"driftloop.x": 0.5, "b": True}
        rt.phases = (rt.start + 2e-4, 1e-4, 3e-4, rt.start + 7e-4, rt.start + 8e-4)
        tracing.finish(rt, "POST", "/v1/models/{name}:predict", status, error)
    with tracing.tracer.start_as_current_span("stage", attributes={"driftloop.list": [1, 2]}) as span:
        span.add_event("checked", {"n": 1})
        span.set_status(Status(StatusCode.ERROR, "failed"))
    tracing.provider.force_flush()
    spans = exporter.get_finished_spans()  # the phases as spans (`expand`)
    assert len(spans) == 2 + 2 * 5 + 1 and sum(isinstance(s, RequestTrace) for s in spans) == 2
    ok, failed = [s for s in spans if isinstance(s, RequestTrace)]  # made on the export thread
    assert ok.name == "POST /v1/models/{name}:predict" and ok.parent.span_id == int(PARENT, 16)
    assert ok.attributes == {"driftloop.request_id": "r-1", "driftloop.rows": 2, "driftloop.x": 0.5, "b": True,
                             "http.request.method": "POST", "http.route": "/v1/models/{name}:predict",
                             "http.response.status_code": 200}  # fmt: skip
    assert ok.status.status_code == StatusCode.UNSET and failed.status.status_code == StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"] and failed.events[0].attributes["exception.message"] == "boom"
    server_spans = [s for s in spans if s.kind == SpanKind.SERVER or s.name == "stage"]  # as the processor had them

    def library(spans, seed: int):  # the phase spans' ids are drawn as they are made: the same seed, the same ids
        random.seed(seed)
        return encode_spans(expand(spans))

    received: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
        exporter = RequestSpanExporter(tracing.provider.resource, ok.instrumentation_scope)
        assert exporter._short  # the pinned library has the client the short encoding posts with
        requests = [s for s in server_spans if isinstance(s, RequestTrace)]
        for seed, batch in [(4, requests), (5, server_spans)]:  # request traces only: the short encoding
            random.seed(seed)
            assert exporter.export(batch).name == "SUCCESS"
    finally:
        server.shutdown()
    assert len(received) == 2
    assert ExportTraceServiceRequest.FromString(received[0]) == library(requests, 4)
    assert ExportTraceServiceRequest.FromString(received[1]) == library(server_spans, 5)


ATTRIBUTE_VALUES = st.recursive(
    st.none() | st.booleans() | st.text(max_size=8) | st.integers(-(2**70), 2**70) | st.floats() | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.fixed_dictionaries({
    "caller": st.sampled_from([None, "01", "00"]), "state": st.sampled_from([None, "vendor=a,other=b"]),
    "status": st.sampled_from([200, 400, 422, 500, 503]), "error": st.sampled_from([None, ValueError("boom"), KeyError(3)]),
    "routed": st.booleans(), "parsed": st.booleans(), "scored": st.booleans(), "logged": st.booleans(),
    "attributes": st.none() | st.dictionaries(st.text(max_size=6), ATTRIBUTE_VALUES, max_size=4),
}), min_size=1, max_size=4), seed=st.integers(0, 2**32))  # fmt: skip
def test_the_short_encoding_is_the_librarys_for_any_request_trace(requests, seed):
    """`encode_request_traces` gives byte for byte the message the OTLP library encodes from `expand`'s spans
    (same resource and scope, the same span ids drawn from the same `random` state), for any mix of callers,
    trace states, statuses, escaped exceptions, phases and attribute values (those the library cannot
    encode, e.g. integers beyond 64 bits, skipped by both)."""
    from types import SimpleNamespace

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    from serving.otlp import encode_request_traces
    from serving.tracing import RequestTrace, Tracing, expand

    resource = Tracing(InMemorySpanExporter()).provider.resource
    scope = InstrumentationScope("driftloop.serving", "1.2", attributes={"k": "v"})

    def traces():
        out = []
        for i, r in enumerate(requests):
            state = TraceState.from_header([r["state"]]) if r["state"] else None
            parent = (SpanContext(int(TRACE_ID, 16), int(PARENT, 16), True, TraceFlags(int(r["caller"], 16)), state)
                      if r["caller"] else None)  # fmt: skip
            rt = RequestTrace(TraceIdRatioBased.TRACE_ID_LIMIT - i, parent, state, 1000.0 + i)
            if r["parsed"]:
                rt.parsed = rt.start + 1e-4
            if r["routed"]:
                rt.request_id = f"r-{i}"
                rt.version = SimpleNamespace(name=MODEL, version=str(i), lineage_id="lin")
            if r["scored"]:
                rt.rows = i + 1
                rt.phases = (rt.start + 2e-4, 1e-4, 3e-4, *((rt.start + 7e-4, rt.start + 8e-4) if r["logged"] else (None, None)))
            rt.span_attributes = r["attributes"]
            rt.end, rt.http, rt.error = rt.start + 1e-3, ("POST", "/v2/models/{name}/infer", r["status"]), r["error"]
            out.append(rt)
        return out

    random.seed(seed)
    ours = encode_request_traces(traces(), resource, scope).SerializeToString(deterministic=True)
    random.seed(seed)
    library = encode_spans(expand(traces(), resource, scope)).SerializeToString(deterministic=True)
    assert ours == library
