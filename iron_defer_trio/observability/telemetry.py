"""The telemetry ``serve`` owns: a meter provider rendered at ``GET /metrics``, a tracer
provider, and optional OTLP/HTTP export of both.

The library never uses this (it takes the application's providers); only the standalone
server builds it, and it never installs the providers globally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from iron_defer_trio._version import __version__

if TYPE_CHECKING:
    from iron_defer_trio.config import ObservabilitySettings

#: Time allowed to flush exporters when the server stops.
SHUTDOWN_TIMEOUT_MILLIS = 5000


@dataclass(frozen=True)
class Telemetry:
    """Providers and the Prometheus registry of one server."""

    meter_provider: MeterProvider
    #: The SDK's provider when traces are exported (OTLP), else the API's no-op provider.
    tracer_provider: trace.TracerProvider
    registry: CollectorRegistry

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) of every metric, collected now."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking; call it after the event loop ended)."""
        if isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_MILLIS)


def build_telemetry(settings: ObservabilitySettings) -> Telemetry:
    """Providers for ``serve``: Prometheus always; OTLP/HTTP when an endpoint is set.

    Metrics and traces go to their own paths under the one base URL (``/v1/metrics``,
    ``/v1/traces``), as OTLP/HTTP defines, rather than both to the same URL.
    """
    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": __version__}
    )
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [
        PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=registry
        )
    ]
    # Without an exporter, spans would be built and dropped (an SDK span costs ~20 us per
    # attempt on the hot path): the API's no-op provider makes them free instead.
    tracer_provider: trace.TracerProvider = trace.NoOpTracerProvider()
    if settings.otlp_endpoint:
        # Imported here: the exporters load protobuf and requests, needed only when pushing.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otlp_endpoint.rstrip("/")
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                export_interval_millis=settings.otlp_interval * 1000,
            )
        )
        sdk_tracer_provider = TracerProvider(resource=resource)
        sdk_tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        )
        tracer_provider = sdk_tracer_provider
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(meter_provider, tracer_provider, registry)
