"""CityOS lake exporter: every service's events and the devices telemetry feed into the lake, exactly once."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="exporter",
    dev_port=50069,
    factory="cityos_exporter.app:create",
    description="the lake exporter: events and telemetry into Parquet tables, exactly once",
)
