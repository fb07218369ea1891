"""OpenTelemetry traces and metrics for every RPC.

`Telemetry` bundles the tracer and the instruments the interceptor uses. `configure_telemetry()` sets the
process's providers once: OTLP/gRPC export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OTel
variables apply: headers, protocol, timeouts), no export otherwise. Tests pass their own providers with
in-memory exporters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer, TracerProvider

INSTRUMENTATION = "cityos_platform.grpc"
DURATION_METRIC = "rpc.server.duration"


@dataclass(frozen=True)
class Telemetry:
    """What the interceptor records into: a tracer and the RPC duration histogram (milliseconds)."""

    tracer: Tracer
    duration: Histogram

    @classmethod
    def from_providers(
        cls, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
    ) -> Telemetry:
        tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(INSTRUMENTATION)
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(INSTRUMENTATION)
        duration = meter.create_histogram(
            DURATION_METRIC, unit="ms", description="Duration of inbound RPCs, by method and status code"
        )
        return cls(tracer=tracer, duration=duration)


_configured = False


def configure_telemetry(service_name: str) -> Telemetry:
    """Install the process-wide providers (once) and return the RPC instruments."""
    global _configured
    if not _configured:
        resource = Resource.create({"service.name": f"cityos-{service_name}", "service.namespace": "cityos"})
        tracer_provider = SdkTracerProvider(resource=resource)
        readers = []
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(SdkMeterProvider(resource=resource, metric_readers=readers))
        _configured = True
    return Telemetry.from_providers()
