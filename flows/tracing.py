"""OpenTelemetry spans of the flows' stages and checks: off by default.

`DRIFTLOOP_TRACING=1` in a flow's environment turns them on, with the same `OTEL_*` configuration as
the server (serving/tracing.py: sampler, OTLP exporter; service name `driftloop-flows` unless
`OTEL_SERVICE_NAME` says otherwise). Otherwise the spans go to OpenTelemetry's global tracer, a no-op
unless the process configured an SDK itself. Spans: the training flow's run (`training`: as_of,
window_months, verdict) with each DVC stage it runs as a child (`stage <name>`: stage, ran), and the
drift check's steps (`drift read-window`, `drift read-reference`, `drift measure`), with `driftloop.*`
attributes (stage, model, version, rows, verdict).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

_TRACER: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The flows' tracer (made on first use; see the module docstring)."""
    global _TRACER
    if _TRACER is None:
        if os.environ.get("DRIFTLOOP_TRACING", "").strip().lower() in ("1", "true", "yes", "on"):
            from serving.tracing import Tracing

            _TRACER = Tracing(service_name="driftloop-flows").tracer
        else:
            _TRACER = trace.get_tracer("driftloop.flows")
    return _TRACER


def set_tracer(t: trace.Tracer | None) -> None:
    """Use `t` from now on (tests: a tracer whose provider exports to memory); None = decide again."""
    global _TRACER
    _TRACER = t


@contextmanager
def stage_span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span around one stage or check; `attributes` become `driftloop.<key>` (None values dropped)."""
    attrs = {f"driftloop.{k}": v for k, v in attributes.items() if v is not None}
    with tracer().start_as_current_span(name, attributes=attrs) as span:
        yield span
