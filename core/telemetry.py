"""Telemetry of Keel's processes: the Temporal runtime that serves a worker's Prometheus
metrics, and optional OpenTelemetry tracing through Temporal's interceptor."""

from typing import TYPE_CHECKING

from temporalio.client import Interceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor


def metrics_runtime(host: str, port: int) -> Runtime:
    """A Temporal runtime serving, at http://host:port/metrics, the SDK's own metrics and
    those Keel records through `activity.metric_meter()` and `workflow.metric_meter()`.
    Clients connected with it (and their workers) report there; each runtime has its own
    threads, so a process makes one."""
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}"))
    )


def tracing_interceptors(
    enabled: bool, service: str, span_processor: "SpanProcessor | None" = None
) -> list[Interceptor]:
    """Temporal's OpenTelemetry `TracingInterceptor` when `enabled`, for a client and the
    workers built on it: spans for starting workflows, running them and their activities,
    linked across processes. Spans go to `span_processor`, by default batched to the OTLP
    endpoint named by the standard OTEL_EXPORTER_OTLP_* variables. Needs the `tracing`
    extra (`pip install 'keel[tracing]'`); the default install never imports it."""
    if not enabled:
        return []
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:
        raise RuntimeError(
            "KEEL_TRACING is on but OpenTelemetry is not installed: "
            "install Keel with its tracing extra (pip install 'keel[tracing]')"
        ) from exc
    if span_processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(span_processor)
    return [TracingInterceptor(provider.get_tracer("keel"))]
