"""OpenTelemetry tracing of the server: off by default; on with `driftloop serve --tracing`.

When on, every sampled HTTP request gives one SERVER span (a child of the caller's W3C `traceparent`
when there is one) with child spans for its phases:

    parse        read + decode the body          [arrival, routed]
    validate     route + check against the signature [routed, queued]
    queue wait   waiting for the micro-batch     [queued, batch start]
    inference    session.run of the batch        [batch start, + its duration]
    log write    appending to the prediction log buffer (the disk write is the log's thread)

(Encoding the response is the rest of the request span after `log write`.)

The request span carries `driftloop.request_id`, `driftloop.model`, `driftloop.model_version`,
`driftloop.lineage_id`, `driftloop.rows` and the HTTP semantic-convention attributes
(`http.request.method`, `http.route`, `http.response.status_code`); a 5xx sets its status to ERROR and
an exception that escapes is recorded as the standard `exception` event.

Cost (bench/serve_tracing.py; target <= 5 % of single-row req/s at a 10 % sampling ratio):
- The sampler decides first (`Tracing.begin`), before anything else is made. A request without a
  `traceparent` under a standard ratio or constant sampler costs one 128-bit random trace id and the
  sampler's own test (`trace_id & TRACE_ID_LIMIT < bound`, what `TraceIdRatioBased.should_sample`
  computes); any other case asks the SDK's sampler (`Sampler.should_sample`). An unsampled request
  then costs nothing more: no span object, no context, no attributes, no clock reads.
- A sampled request carries a `RequestTrace` (a context variable) that the handler fills with the
  readings it takes anyway (clock readings, the request id, the `ModelVersion` that answered). At its
  end it is handed as it is to the `BatchSpanProcessor` (the SDK's processor for export: a queue,
  exported by its own thread in batches): no span context, span id, attribute dict or timestamp is
  made on the request's path. A sampled request runs cold (one in ten at 10%), so every step it
  skips counts several times over; no span is started and ended through the tracer, no context is
  attached.
- On the export thread, the OTLP exporter (serving/otlp.py: the library's `OTLPSpanExporter`) encodes
  each `RequestTrace` straight from its readings into the library's protobuf classes, the same bytes the
  library's encoder gives for its span and its phases' spans (proved by a hypothesis test), in ~20 us
  instead of ~100 us per sampled request (six spans, batches of 512). Any other exporter (console,
  in-memory) is given the spans themselves (`PhaseSpans`): each `RequestTrace` made into its SERVER
  span (`materialize`) followed by its phases as spans of their own (`expand`). The resource's hash is
  taken once (`HashedResource`: the OTLP encoder hashes every span's resource, a JSON dump of its
  attributes).

Everything else is the OpenTelemetry SDK's, configured by the standard environment variables:
`OTEL_SERVICE_NAME` (default "driftloop-server"), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
(e.g. `parentbased_traceidratio` / `0.1`), `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` (batching: its sizes
count requests, each exported as its span and its phases' spans);
`OTEL_TRACES_EXPORTER=console` prints spans instead, `none` drops them. The provider is the app's own
(not the process-global one), so several apps in one process stay apart. The flows' stage spans
(flows/tracing.py) use `Tracing.tracer`, the ordinary SDK tracer on the same provider.
"""

from __future__ import annotations

import os
import time
import traceback
from contextvars import ContextVar
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

_IDS = RandomIdGenerator()  # the span ids of the spans made on the export thread

_OFFSET_NS = time.time_ns() - time.perf_counter_ns()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT
_PENDING = SpanContext(1, 1, False, _SAMPLED)  # a RequestTrace's context until it is materialized


def wall_ns(perf_s: float) -> int:
    """Epoch nanoseconds of a `time.perf_counter()` reading (spans need wall-clock times)."""
    return int(perf_s * 1e9) + _OFFSET_NS


def root_bound(sampler: Sampler) -> int | None:
    """The bound a request with no `traceparent` is sampled under (`trace_id & TRACE_ID_LIMIT < bound`),
    when the sampler is one of the standard ratio/constant ones (`OTEL_TRACES_SAMPLER`) or a
    `ParentBased` over one; None for anything else (the SDK's sampler decides)."""
    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return root.bound
    if root is ALWAYS_ON:
        return TraceIdRatioBased.TRACE_ID_LIMIT + 1
    if root is ALWAYS_OFF:
        return 0
    return None


class HashedResource(Resource):
    """The SDK's `Resource` with its hash computed once.

    The OTLP encoder (`encode_spans`) groups a batch's spans by resource, hashing each span's, and
    `Resource.__hash__` JSON-encodes the attributes every time: ~3.5 us a span, a fifth of the
    library's encoding of a phase span (bench/serve_tracing.py). A resource never changes after it is
    made (its attributes are immutable), so its hash is taken once; equality is the SDK's.
    """

    def __init__(self, attributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class RequestTrace(ReadableSpan):
    """One sampled request: filled in as the request goes (`current()`), handed to the processor as
    it ends (`Tracing.finish`), and made into its SERVER span on the export thread (`materialize`).

    A `ReadableSpan` whose fields are set late: until `materialize` its `context` is a placeholder
    with the sampled flag (all the `BatchSpanProcessor` reads of a span it is given) and nothing else
    of a span is set; `PhaseSpans` materializes every one before its exporter sees it. So a sampled
    request's own work is a few assignments and the processor's queue append: making the span
    context, span ids, attributes and timestamps is the export thread's, in its batch loop.

    Attributes (set by the request):
        trace_id: the request span's trace id; parent (the SDK's property): the caller's span
            context, or None; trace_state: the sampler's, or None.
        start: `perf_counter()` at arrival; parsed: when the body was decoded (routing starts), or None.
        request_id, version: the request id and the `ModelVersion` that answered (set when routed).
        rows: rows scored; phases: (queued, queue_s, run_s, log_start, log_end) of a scored request,
            else None: seconds, `perf_counter()` readings except the two durations (log_* None: no
            prediction log).
        span_attributes: more attributes for the request span (merged before the HTTP ones), or None.
        end, http (method, route template, status code), error: set by `Tracing.finish`.
    """

    _context = _PENDING  # until `materialize`
    parsed: float | None = None  # class defaults: a request sets only what it reads
    request_id: str | None = None
    version: Any = None
    rows: int | None = None
    phases: tuple[float, float, float, float | None, float | None] | None = None
    span_attributes: dict[str, Any] | None = None
    materialized = False
    _span_id: int | None = None

    def __init__(self, trace_id: int, parent: SpanContext | None, trace_state, start: float) -> None:
        # ReadableSpan.__init__ is `materialize`'s, on the export thread
        self._parent = parent
        self.trace_id = trace_id
        self.trace_state = trace_state
        self.start = start

    def span_id(self) -> int:
        """The request span's id: drawn on first use from `random` (as the SDK's `RandomIdGenerator`
        draws it), then the same for every exporter that encodes this request."""
        if self._span_id is None:
            self._span_id = _IDS.generate_span_id()
        return self._span_id

    def request_attributes(self) -> dict[str, Any]:
        """The request span's attributes: `driftloop.request_id`, `driftloop.model`, `.model_version`,
        `.lineage_id` (when routed), `driftloop.rows` (when scored), `span_attributes`, then the HTTP ones."""
        attrs: dict[str, Any] = {}
        if self.request_id is not None:
            attrs["driftloop.request_id"] = self.request_id
        if self.version is not None:
            mv = self.version
            attrs.update({"driftloop.model": mv.name, "driftloop.model_version": mv.version,
                          "driftloop.lineage_id": mv.lineage_id})  # fmt: skip
        if self.rows is not None:
            attrs["driftloop.rows"] = self.rows
        if self.span_attributes:
            attrs.update(self.span_attributes)
        method, route, status = self.http
        attrs.update({"http.request.method": method, "http.route": route, "http.response.status_code": status})
        return attrs

    def exception_events(self) -> tuple[Event, ...]:
        """The standard `exception` event of an exception that escaped the app, at the request's end; ()."""
        if (error := self.error) is None:
            return ()
        module, qualname = type(error).__module__, type(error).__qualname__
        return (Event("exception", {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(error),
            "exception.stacktrace": "".join(traceback.format_exception(error)),
            "exception.escaped": "True",
        }, timestamp=wall_ns(self.end)),)  # fmt: skip

    def materialize(self, resource: Resource, scope: InstrumentationScope) -> None:
        """Set the span's fields from the request's readings (once): its SpanContext (`span_id()`),
        `request_attributes()`, ERROR status on a 5xx, `exception_events()`."""
        if self.materialized:
            return
        method, route, status = self.http
        context = SpanContext(self.trace_id, self.span_id(), False, _SAMPLED, self.trace_state)
        ReadableSpan.__init__(
            self, f"{method} {route}", context, self._parent, resource, self.request_attributes(),
            self.exception_events(), kind=SpanKind.SERVER, status=_ERROR if status >= 500 else _UNSET,
            start_time=wall_ns(self.start), end_time=wall_ns(self.end), instrumentation_scope=scope,
        )  # fmt: skip
        self.materialized = True

    @property
    def phases_ns(self) -> tuple[tuple[str, int, int], ...]:
        """((name, start_ns, end_ns), ...): parse (when the body was decoded), validate, queue wait,
        inference, log write (when logged), in epoch nanoseconds; () for a request not scored."""
        if self.phases is None:
            return ()
        start, parsed, (queued, queue_s, run_s, log_start, log_end) = self.start, self.parsed, self.phases
        batch_start = queued + queue_s
        phases = [] if parsed is None else [("parse", start, parsed)]
        phases += [("validate", start if parsed is None else parsed, queued),
                   ("queue wait", queued, batch_start), ("inference", batch_start, batch_start + run_s)]  # fmt: skip
        if log_start is not None and log_end is not None:
            phases.append(("log write", log_start, log_end))
        return tuple((phase, wall_ns(t0), wall_ns(max(t0, t1))) for phase, t0, t1 in phases)


REQUEST_TRACE: ContextVar[RequestTrace | None] = ContextVar("driftloop_request_trace", default=None)
"""The sampled request of this task (set by the `Observe` middleware around the app), else None."""


current = REQUEST_TRACE.get
"""current() -> the sampled request being handled in this task, or None (not sampled, or tracing off)."""


class Tracing:
    """The app's tracing, on a provider of its own, with the sampler and exporter from `OTEL_*` variables.

    Args:
        exporter: export here instead (tests: `InMemorySpanExporter`; still through a
            `BatchSpanProcessor`: read it after `provider.force_flush()` or `shutdown()`); None = from
            `OTEL_TRACES_EXPORTER` (default `otlp`: OTLP over HTTP/protobuf).
        service_name: `service.name` unless `OTEL_SERVICE_NAME` is set.

    Attributes:
        tracer: the SDK tracer (the flows' stage spans).
        provider: call `shutdown()` at exit to flush.
        sampler: the SDK's reading of `OTEL_TRACES_SAMPLER(_ARG)`.
    """

    def __init__(self, exporter: SpanExporter | None = None, service_name: str = "driftloop-server") -> None:
        created = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
        resource = HashedResource(created.attributes, created.schema_url)
        self.provider = TracerProvider(resource=resource)  # its sampler: the SDK's reading of OTEL_TRACES_SAMPLER
        self.sampler = self.provider.sampler
        self.processor: SpanProcessor | None = None
        scope = InstrumentationScope("driftloop.serving")
        if exporter is not None:
            exporter = PhaseSpans(exporter, resource, scope)  # request spans made, phases added on export
        else:
            kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
            if kind == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                exporter = PhaseSpans(ConsoleSpanExporter(), resource, scope)
            elif kind != "none":
                from serving.otlp import RequestSpanExporter

                exporter = RequestSpanExporter(resource, scope)  # encodes request traces as they are
        if exporter is not None:
            self.processor = BatchSpanProcessor(exporter)
            self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer(f"driftloop.{service_name.removeprefix('driftloop-')}")
        self._bound = root_bound(self.sampler)
        self._ids = RandomIdGenerator()

    def begin(self, scope: dict[str, Any]) -> RequestTrace | None:
        """The sampler's decision on an ASGI request: a `RequestTrace` when sampled, else None.

        Without a `traceparent` header and with a standard sampler this is one random trace id and
        one comparison (the module docstring); otherwise the SDK's sampler decides, on the caller's
        context (`ParentBased` follows the caller's sampled flag).
        """
        headers = scope["headers"]
        for k, _ in headers:
            if k == b"traceparent":
                break
        else:
            trace_id = self._ids.generate_trace_id()
            if self._bound is not None:
                if trace_id & _LIMIT >= self._bound:
                    return None
                return RequestTrace(trace_id, None, None, time.perf_counter())
            result = self.sampler.should_sample(None, trace_id, scope["method"], SpanKind.SERVER)
            if not result.decision.is_sampled():
                return None
            return RequestTrace(trace_id, None, result.trace_state, time.perf_counter())
        start = time.perf_counter()
        context = propagate.extract({k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
        parent = trace.get_current_span(context).get_span_context()
        if not parent.is_valid:
            parent, context = None, None
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        result = self.sampler.should_sample(context, trace_id, scope["method"], SpanKind.SERVER)
        if not result.decision.is_sampled():
            return None
        state = result.trace_state if result.trace_state is not None else (parent.trace_state if parent else None)
        return RequestTrace(trace_id, parent, state, start)

    def finish(self, rt: RequestTrace, method: str, route: str, status: int, error: BaseException | None) -> None:
        """Hand the sampled request to the processor; its spans are made on the export thread.

        Args:
            rt: from `begin`, as the request filled it.
            method, route: the HTTP method and route template (the span's name is `{method} {route}`).
            status: the response status code; >= 500 sets the span's status to ERROR.
            error: an exception that escaped the app (recorded as an `exception` event), or None.
        """
        rt.end = time.perf_counter()
        rt.http = (method, route, status)
        rt.error = error
        if self.processor is not None:
            self.processor.on_end(rt)


def expand(spans, resource: Resource | None = None, scope: InstrumentationScope | None = None) -> list:
    """`spans` with each request span (`RequestTrace`, materialized here with `resource` and `scope`
    when it is not yet) followed by its phases as spans of their own (INTERNAL, children of the
    request span, new span ids from `random`, as the SDK's `RandomIdGenerator` draws them)."""
    out = []
    for span in spans:
        if isinstance(span, RequestTrace):
            span.materialize(resource, scope)
            out.append(span)
            ctx, new_id = span.context, _IDS.generate_span_id
            resource_, scope_ = span.resource, span.instrumentation_scope
            out += [ReadableSpan(name, SpanContext(ctx.trace_id, new_id(), False, _SAMPLED, ctx.trace_state), ctx,
                                 resource_, start_time=t0, end_time=t1, instrumentation_scope=scope_)
                    for name, t0, t1 in span.phases_ns]  # fmt: skip
        else:
            out.append(span)
    return out



class PhaseSpans(SpanExporter):
    """The exporter (OTLP, console, in-memory), given `expand(spans)`: every request span materialized
    with `resource` and `scope` (the app's), followed by its phases' spans."""

    def __init__(self, inner: SpanExporter, resource: Resource | None = None,
                 scope: InstrumentationScope | None = None) -> None:  # fmt: skip
        self.inner = inner
        self.resource, self.scope = resource, scope

    def export(self, spans):
        return self.inner.export(expand(spans, self.resource, self.scope))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
