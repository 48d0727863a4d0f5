"""OpenTelemetry tracing of the server: off by default; on with `driftloop serve --tracing`.

When on, every HTTP request gets a SERVER span (`Observe` middleware; a W3C `traceparent` header makes
it a child of the caller's trace), and every scored request gets child spans for its phases, made
after the fact from the timestamps the handler and the batcher already take (so the hot path gains no
span bookkeeping while a request waits):

    parse        read + decode the body          [arrival, parsed]
    validate     route + check against the signature [parsed, queued]
    queue wait   waiting for the micro-batch     [queued, batch start]
    inference    session.run of the batch        [batch start, + its duration]
    log write    appending to the prediction log buffer (the disk write is the log's thread)

(Encoding the response is the rest of the request span after `log write`; a span of its own would
cost a seventh of the export for a phase that takes microseconds: bench/serve_tracing.py.)

The request span carries `driftloop.request_id`, `driftloop.model`, `driftloop.model_version`,
`driftloop.lineage_id` and `driftloop.rows`. Everything else is the OpenTelemetry SDK's, configured by
the standard environment variables: `OTEL_SERVICE_NAME` (default "driftloop-server"),
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` / `0.1`),
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_BSP_*` (batching); `OTEL_TRACES_EXPORTER=console` prints spans instead, `none` drops them. The
provider is the app's own (not the process-global one), so several apps in one process stay apart.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def wall_ns(perf_s: float) -> int:
    """Epoch nanoseconds of a `time.perf_counter()` reading (spans need wall-clock times)."""
    return int(perf_s * 1e9) + _OFFSET_NS


_PRESAMPLED = context_api.create_key("driftloop.presampled")


class _Presampled(Sampler):
    """The env's sampler, except that a span started with `_PRESAMPLED` in its context is sampled.

    The request's sampling is decided before any OpenTelemetry call (`Tracing.root_rate`), so an
    unsampled request costs one `random()`; the SDK must then not draw a second time.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if parent_context is not None and context_api.get_value(_PRESAMPLED, parent_context):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"Presampled{{{self.inner.get_description()}}}"


def root_rate(sampler: Sampler) -> float | None:
    """The probability a request with no `traceparent` is sampled, when the sampler is one of the
    standard ratio/constant ones (`OTEL_TRACES_SAMPLER`); None for anything else (the SDK decides)."""
    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return root.rate
    if root is ALWAYS_ON:
        return 1.0
    if root is ALWAYS_OFF:
        return 0.0
    return None


class Tracing:
    """The app's tracer, on a provider of its own, with the sampler and exporter from `OTEL_*` variables.

    Args:
        exporter: export here instead, synchronously (tests: `InMemorySpanExporter`); None = from
            `OTEL_TRACES_EXPORTER` (default `otlp`: OTLP over HTTP/protobuf), batched.

    Attributes:
        tracer: for the request spans.
        provider: call `shutdown()` at exit to flush.
    """

    def __init__(self, exporter: SpanExporter | None = None, service_name: str = "driftloop-server") -> None:
        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
        env_sampler = TracerProvider().sampler  # the SDK's reading of OTEL_TRACES_SAMPLER(_ARG)
        self.provider = TracerProvider(resource=resource, sampler=_Presampled(env_sampler))
        self.rate = root_rate(env_sampler)
        self.processor: SpanProcessor | None = None
        if exporter is not None:
            self.processor = SimpleSpanProcessor(exporter)
        else:
            kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
            if kind == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                self.processor = BatchSpanProcessor(ConsoleSpanExporter())
            elif kind != "none":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                self.processor = BatchSpanProcessor(OTLPSpanExporter())
        if self.processor is not None:
            self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer(f"driftloop.{service_name.removeprefix('driftloop-')}")
        self._resource = resource
        self._scope = InstrumentationScope("driftloop.serving")
        self._ids = RandomIdGenerator()

    def sample_root(self) -> bool:
        """Whether a request without `traceparent` is sampled: one `random()` against the ratio of a
        standard sampler; True (let the SDK decide) for any other sampler."""
        rate = self.rate
        return rate is None or rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def start_request(self, name: str, has_traceparent: bool, carrier: Any, start_ns: int):
        """The request's SERVER span, or None when the SDK's sampler says no (call after `sample_root`
        said yes, or when the request has a `traceparent`).

        Args:
            name: the span's first name (renamed to the route at the end).
            has_traceparent: the request carries a W3C `traceparent` header.
            carrier: () -> {header: value}, called only when there is one.
            start_ns: epoch ns of the request's arrival.
        """
        if not has_traceparent and self.rate is not None:  # `sample_root` said yes: the SDK must not draw again
            parent = context_api.set_value(_PRESAMPLED, True)
        else:
            parent = propagate.extract(carrier()) if has_traceparent else None
        span = self.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, start_time=start_ns)
        return span if span.is_recording() else None

    @staticmethod
    def sampled() -> bool:
        """True when the current request's span is sampled (recording)."""
        return trace.get_current_span().is_recording()

    def request_phases(
        self,
        *,
        attributes: dict[str, Any],
        start: float,
        parsed: float | None,
        queued: float,
        queue_s: float,
        run_s: float,
        log_s: tuple[float, float] | None,
        scored: float,
        end: float,
    ) -> None:
        """Add the phase spans of one scored request under the current (request) span; call only when
        `sampled()`.

        The phases are finished spans handed straight to the processor (`ReadableSpan`), not spans
        started and ended through the SDK: they are already over, a sampled parent's children are
        sampled (`ParentBased`), and this costs a fraction of `start_span` (measured in bench/serve_tracing.py).

        Args:
            attributes: set on the request span (request id, model, version, lineage id, rows).
            start, parsed, queued, scored, end: `perf_counter()` readings: arrival, body decoded,
                handed to the batcher, scores back, response encoded (`parsed` None: no parse span).
            queue_s, run_s: the batcher's queue wait and `session.run` time, seconds.
            log_s: (start, end) `perf_counter()` of the prediction-log append, or None (no log).
        """
        parent = trace.get_current_span()
        if not parent.is_recording():  # phases left over by a request that failed after routing
            return
        parent.set_attributes(attributes)
        if self.processor is None:
            return
        pctx = parent.get_span_context()
        batch_start = queued + queue_s
        phases = (
            ("parse", start, parsed),
            ("validate", parsed if parsed is not None else start, queued),
            ("queue wait", queued, batch_start),
            ("inference", batch_start, batch_start + run_s),
            ("log write", *(log_s or (None, None))),
        )
        for name, t0, t1 in phases:
            if t0 is None or t1 is None:
                continue
            ctx = trace.SpanContext(pctx.trace_id, self._ids.generate_span_id(), False, pctx.trace_flags,
                                    pctx.trace_state)  # fmt: skip
            self.processor.on_end(ReadableSpan(
                name, ctx, pctx, self._resource, start_time=wall_ns(t0), end_time=wall_ns(max(t0, t1)),
                instrumentation_scope=self._scope,
            ))  # fmt: skip
