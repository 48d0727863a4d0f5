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
- A sampled request carries a small `RequestTrace` (a context variable) that the handler fills with
  the readings it takes anyway. At its end it hands the `BatchSpanProcessor` (the SDK's processor for
  export: a queue, exported by its own thread in batches) one finished span, a `ServerSpan` carrying
  its phases as (name, start, end); their spans are made on the export thread. No span is started and
  ended through the tracer, no context is attached.
- Every exporter (the library's OTLP/HTTP one by default) gets the phases as spans of their own
  (`PhaseSpans`) and encodes them itself. A hand-written OTLP encoder halved the export thread's CPU
  (10% sampling: 0.966x the untraced req/cpu-s instead of 0.92x-0.94x) but reached into the exporter's
  private HTTP client; the library's encoding is kept (the project's rule: a well-kept library over
  our own code outside the product, even a slower one).

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

_OFFSET_NS = time.time_ns() - time.perf_counter_ns()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT


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


class RequestTrace:
    """One sampled request's span data, filled in as the request goes (`current()`); its spans are
    made at the end (`Tracing.finish`).

    Attributes:
        trace_id, span_id: the request span's ids; parent: the caller's span context, or None.
        start: `perf_counter()` at arrival; parsed: when the body was decoded (routing starts), or None.
        attributes: the request span's attributes (`driftloop.*` set by the data plane).
        phases: (queued, queue_s, run_s, log_start, log_end) of a scored request, else None: seconds,
            `perf_counter()` readings except the two durations (log_* None: no prediction log).
    """

    __slots__ = ("trace_id", "span_id", "parent", "trace_state", "start", "parsed", "attributes", "phases")

    def __init__(self, trace_id: int, span_id: int, parent: SpanContext | None, trace_state, start: float) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent = parent
        self.trace_state = trace_state
        self.start = start
        self.parsed: float | None = None
        self.attributes: dict[str, Any] = {}
        self.phases: tuple[float, float, float, float | None, float | None] | None = None


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
        if exporter is None:
            kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
            if kind == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                exporter = ConsoleSpanExporter()
            elif kind != "none":
                exporter = otlp_exporter()
        if exporter is not None:
            self.processor = BatchSpanProcessor(PhaseSpans(exporter))  # each request's phases as spans
            self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer(f"driftloop.{service_name.removeprefix('driftloop-')}")
        self._bound = root_bound(self.sampler)
        self._resource = resource
        self._scope = InstrumentationScope("driftloop.serving")
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
                return RequestTrace(trace_id, self._ids.generate_span_id(), None, None, time.perf_counter())
            result = self.sampler.should_sample(None, trace_id, scope["method"], SpanKind.SERVER)
            if not result.decision.is_sampled():
                return None
            return RequestTrace(trace_id, self._ids.generate_span_id(), None, result.trace_state, time.perf_counter())
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
        return RequestTrace(trace_id, self._ids.generate_span_id(), parent, state, start)

    def finish(self, rt: RequestTrace, name: str, attributes: dict[str, Any], error: BaseException | None) -> None:
        """Hand the request's spans to the processor: the SERVER span, then its phases (when scored).

        Args:
            rt: from `begin`, as the request filled it.
            name: the span name (`{method} {route}`).
            attributes: the HTTP attributes, added to `rt.attributes`; a `http.response.status_code`
                >= 500 sets the status to ERROR.
            error: an exception that escaped the app (recorded as an `exception` event), or None.
        """
        end = time.perf_counter()
        if self.processor is None:
            return
        attrs = rt.attributes
        attrs.update(attributes)
        events = ()
        if error is not None:
            module, qualname = type(error).__module__, type(error).__qualname__
            events = (Event("exception", {
                "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
                "exception.message": str(error),
                "exception.stacktrace": "".join(traceback.format_exception(error)),
                "exception.escaped": "True",
            }),)  # fmt: skip
        marks = None if rt.phases is None else (rt.start, rt.parsed, *rt.phases)
        self.processor.on_end(ServerSpan(
            name, SpanContext(rt.trace_id, rt.span_id, False, _SAMPLED, rt.trace_state), rt.parent,
            self._resource, attrs, events, kind=SpanKind.SERVER,
            status=_ERROR if attrs.get("http.response.status_code", 0) >= 500 else _UNSET,
            start_time=wall_ns(rt.start), end_time=wall_ns(end), instrumentation_scope=self._scope, marks=marks,
        ))  # fmt: skip


class ServerSpan(ReadableSpan):
    """A request's finished SERVER span carrying the `perf_counter()` readings of its phases, whose
    child spans are made on the export thread (`phases`, `expand`): the request hands the processor one
    span, not six, and does no arithmetic for them.

    Args:
        marks: (start, parsed, queued, queue_s, run_s, log_start, log_end) of a scored request (the
            `RequestTrace`'s `start`, `parsed` and `phases`), else None; `phases` reads them.
    """

    def __init__(self, *args: Any, marks: tuple | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks = marks

    @property
    def phases(self) -> tuple[tuple[str, int, int], ...]:
        """((name, start_ns, end_ns), ...): parse (when the body was decoded), validate, queue wait,
        inference, log write (when logged), in epoch nanoseconds; () for a request not scored."""
        if self.marks is None:
            return ()
        start, parsed, queued, queue_s, run_s, log_start, log_end = self.marks
        batch_start = queued + queue_s
        phases = [] if parsed is None else [("parse", start, parsed)]
        phases += [("validate", start if parsed is None else parsed, queued),
                   ("queue wait", queued, batch_start), ("inference", batch_start, batch_start + run_s)]  # fmt: skip
        if log_start is not None and log_end is not None:
            phases.append(("log write", log_start, log_end))
        return tuple((phase, wall_ns(t0), wall_ns(max(t0, t1))) for phase, t0, t1 in phases)


def expand(spans) -> list:
    """`spans` with each `ServerSpan`'s phases after it as spans of their own (INTERNAL, children of the
    request span, new span ids from `random`, as the SDK's `RandomIdGenerator` draws them)."""
    out = []
    for span in spans:
        out.append(span)
        if getattr(span, "marks", None) is not None:
            ctx, new_id = span.context, _IDS.generate_span_id
            resource, scope = span.resource, span.instrumentation_scope
            out += [ReadableSpan(name, SpanContext(ctx.trace_id, new_id(), False, _SAMPLED, ctx.trace_state), ctx,
                                 resource, start_time=t0, end_time=t1, instrumentation_scope=scope)
                    for name, t0, t1 in span.phases]  # fmt: skip
    return out


_IDS = RandomIdGenerator()


class PhaseSpans(SpanExporter):
    """The exporter (OTLP, console, in-memory), given `expand(spans)`."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans):
        return self.inner.export(expand(spans))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def otlp_exporter():
    """The OTLP/HTTP span exporter, configured by the `OTEL_EXPORTER_OTLP_*` variables (the library's own:
    encoding, retries, compression, headers and timeout are all its)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
