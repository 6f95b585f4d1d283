"""The OpenTelemetry providers of one process and the Prometheus registry they export to."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclasses.dataclass(slots=True)
class Observability:
    """The OpenTelemetry providers of one process and the Prometheus registry they export to."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    registry: CollectorRegistry

    def prometheus_text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def build_observability(env: Mapping[str, str], *, tracer_provider: TracerProvider | None = None) -> Observability:
    """Prometheus export always; OTLP (metrics and traces) when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "kube-prewarm")})
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if tracer_provider is None:
        tracer_provider = TracerProvider(resource=resource)
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Observability(
        meter_provider=MeterProvider(metric_readers=readers, resource=resource),
        tracer_provider=tracer_provider,
        registry=registry,
    )
