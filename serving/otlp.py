"""OTLP/HTTP export of the server's request traces: the library's exporter, with the request spans
encoded straight from each request's readings.

`RequestTrace`s (serving/tracing.py) are what a sampled request leaves: its clock readings, request
id, the model version that answered, its status. The library's path makes each into six SDK
`ReadableSpan`s (`expand`) and encodes those (`encode_spans`): ~100 us of the export thread's CPU per
sampled request, most of it the encoder's Python-level walk of every span's properties, which at a 10%
sampling ratio is ~3.5% of a single-row request's CPU on its own (bench/serve_tracing.py).

`encode_request_traces` builds the same OTLP message (`ExportTraceServiceRequest`, from the
`opentelemetry-proto` package's generated classes, built in place) directly from the readings: ~20 us
per sampled request, a fifth of the library's path (`python bench/serve_tracing.py` prints the export
thread's CPU per request). It is not a second reading of the OTLP mapping but a shortcut to the
library's: tests/observe/test_tracing.py checks that its bytes equal those of
`encode_spans(expand(...))` for the same traces and span ids, for any mix of callers, trace states,
statuses, escaped exceptions, phases and attribute values (hypothesis).

`RequestSpanExporter` is the library's `OTLPSpanExporter` (configured by the `OTEL_EXPORTER_OTLP_*`
variables: endpoint, headers, timeout, compression, certificates; retries and backoff its own) whose
`export` encodes a batch of request traces this way and posts it with the exporter's own HTTP client
(`_client.export`, the one private name used here: requirements.lock pins the library and the test
above posts through it to a collector on loopback). Anything else (a batch holding SDK spans, the
exporter's own metrics turned on with `OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`, a batch over its
`max_request_size`) goes the library's whole way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope

from serving.tracing import _IDS, RequestTrace, expand, wall_ns

_INTERNAL, _SERVER = Span.SpanKind.SPAN_KIND_INTERNAL, Span.SpanKind.SPAN_KIND_SERVER
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK  # the library's `_span_flags`: is_remote is known
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_STATUS_ERROR = 2  # StatusCode.ERROR.value
_log = logging.getLogger(__name__)


def put_value(out: AnyValue, value: Any) -> None:
    """Set the empty `out` (in its message) to an attribute value as OTLP encodes it: bool, str, int,
    float, bytes, a sequence or mapping of those (the library's `_encode_value`; None: set, empty).

    Raises:
        TypeError: any other type; ValueError: an int outside int64 (the library skips such an
            attribute, logging it; so does `put_attributes`).
    """
    if value is None:
        out.SetInParent()
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Sequence):
        out.array_value.SetInParent()
        add = out.array_value.values.add
        for v in value:
            put_value(add(), v)
    elif isinstance(value, Mapping):
        out.kvlist_value.SetInParent()
        add = out.kvlist_value.values.add
        for k, v in value.items():
            put_value(add(key=str(k)).value, v)
    else:
        raise TypeError(f"attribute value of type {type(value).__name__} has no OTLP encoding")


def put_attributes(out, attributes: Mapping[str, Any] | None) -> None:
    """Append `attributes` to the repeated `KeyValue` field `out`, in order; a value `put_value` cannot
    encode is left out (the library logs and skips it)."""
    for key, value in (attributes or {}).items():
        kv = out.add(key=key)
        try:
            put_value(kv.value, value)
        except (TypeError, ValueError) as error:
            del out[-1]
            _log.warning("span attribute %r left out: %s", key, error)


def _put_request(rt: RequestTrace, spans) -> None:
    """Append the request span of `rt` and its phases' spans (`RequestTrace.phases_ns`) to the repeated
    `Span` field `spans`, with span ids drawn in `expand`'s order (the request's, `rt.span_id()`, then a
    new one for each phase)."""
    span_id = rt.span_id().to_bytes(8, "big")
    trace_id = rt.trace_id.to_bytes(16, "big")
    state = ",".join(f"{k}={v}" for k, v in rt.trace_state.items()) if rt.trace_state is not None else ""
    parent = rt.parent
    method, route, status = rt.http
    span = spans.add(
        trace_id=trace_id, span_id=span_id, trace_state=state,
        parent_span_id=None if parent is None else parent.span_id.to_bytes(8, "big"),
        name=f"{method} {route}", kind=_SERVER, start_time_unix_nano=wall_ns(rt.start),
        end_time_unix_nano=wall_ns(rt.end), flags=_REMOTE if parent is not None and parent.is_remote else _LOCAL,
    )  # fmt: skip
    put_attributes(span.attributes, rt.request_attributes())
    for event in rt.exception_events():
        put_attributes(span.events.add(name=event.name, time_unix_nano=event.timestamp).attributes, event.attributes)
    span.status.SetInParent()
    if status >= 500:
        span.status.code = _STATUS_ERROR
    add, new_id = spans.add, _IDS.generate_span_id
    for name, start, end in rt.phases_ns:
        add(trace_id=trace_id, span_id=new_id().to_bytes(8, "big"), trace_state=state, parent_span_id=span_id,
            name=name, kind=_INTERNAL, start_time_unix_nano=start, end_time_unix_nano=end,
            flags=_LOCAL).status.SetInParent()  # fmt: skip


def encode_request_traces(traces: Sequence[RequestTrace], resource: Resource, scope: SdkScope) -> ExportTraceServiceRequest:
    """The OTLP request for `traces` (each its request span followed by its phases' spans), all under
    `resource` and `scope`: equal to the library's `encode_spans(expand(traces, resource, scope))` when
    the span ids are drawn from the same `random` state. Built in place (a message passed to a protobuf
    constructor is copied); the traces are not materialized."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(schema_url=resource.schema_url)
    put_attributes(resource_spans.resource.attributes, resource.attributes)
    resource_spans.resource.SetInParent()
    scope_spans = resource_spans.scope_spans.add(schema_url=scope.schema_url)
    scope_spans.scope.SetInParent()
    scope_spans.scope.name = scope.name
    if scope.version is not None:
        scope_spans.scope.version = scope.version
    put_attributes(scope_spans.scope.attributes, scope.attributes)
    spans = scope_spans.spans
    for rt in traces:
        _put_request(rt, spans)
    return request


class RequestSpanExporter(OTLPSpanExporter):
    """The library's OTLP/HTTP span exporter (the `OTEL_EXPORTER_OTLP_*` variables configure it), given
    the processor's batches as they are (`RequestTrace`s; SDK spans), with the app's `resource` and
    `scope` for the request spans. See the module docstring for which batches take the short encoding."""

    def __init__(self, resource: Resource, scope: SdkScope) -> None:
        super().__init__()
        self.resource, self.scope = resource, scope
        metrics = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true"
        self._short = not metrics and hasattr(self, "_client")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._short and not self._shutdown and all(type(s) is RequestTrace for s in spans):
            data = encode_request_traces(spans, self.resource, self.scope).SerializePartialToString()
            if not 0 < self._max_request_size < len(data):
                return SpanExportResult.SUCCESS if self._client.export(data).success else SpanExportResult.FAILURE
        return super().export(expand(spans, self.resource, self.scope))
