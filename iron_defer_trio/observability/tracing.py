"""Traces: a task carries the W3C trace context of the code that enqueued it, and every
attempt runs as a span in that trace, so a task is followed from the request that created it
through each retry.

Spans come from the application's tracer provider (the global one unless another is passed to
``open_engine``); iron-defer-trio never installs a provider itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iron_defer_trio._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer, TracerProvider

#: Span names.
ENQUEUE_SPAN = "iron_defer.enqueue"
EXECUTE_SPAN = "iron_defer.execute"

#: Span attribute names.
ATTR_TASK_ID = "iron_defer.task_id"
ATTR_QUEUE = "iron_defer.queue"
ATTR_KIND = "iron_defer.kind"
ATTR_ATTEMPT = "iron_defer.attempt"
ATTR_MAX_ATTEMPTS = "iron_defer.max_attempts"
ATTR_COUNT = "iron_defer.count"
ATTR_OUTCOME = "iron_defer.outcome"

_PROPAGATOR = TraceContextTextMapPropagator()


def get_tracer(provider: TracerProvider | None = None) -> Tracer:
    """The package's tracer, from ``provider`` or the global provider."""
    return (provider or trace.get_tracer_provider()).get_tracer("iron_defer_trio", __version__)


def is_recording(tracer: Tracer) -> bool:
    """False when ``tracer`` certainly makes only non-recording spans: the API's no-op tracer,
    or the global proxy while no provider is installed (asked at each call, since an
    application may install one later). Callers then skip building spans on hot paths."""
    if isinstance(tracer, trace.NoOpTracer):
        return False
    if isinstance(tracer, trace.ProxyTracer):
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return True


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, or None when there is no valid one (tracing
    is not configured, or nothing is being traced)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """A context whose parent is the span a stored ``traceparent`` names (None if absent)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context of an incoming request (W3C ``traceparent``/``tracestate``)."""
    return _PROPAGATOR.extract({k.lower(): v for k, v in headers.items()})


def attach(context: Context) -> object:
    """Make ``context`` current for this task; pass the result to :func:`detach`."""
    return otel_context.attach(context)


def detach(token: object) -> None:
    """Undo :func:`attach`."""
    otel_context.detach(token)  # type: ignore[arg-type]  # the token attach returned
