"""CityOS devices: the registry of the city's 5G / NB-IoT fleet and the telemetry path."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="devices",
    dev_port=50061,
    factory="cityos_devices.app:create",
    description="device registry, credentials, telemetry ingest and feed",
)
