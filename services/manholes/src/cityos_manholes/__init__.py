"""CityOS manholes: covers and their monitoring terminals, live state, alarms, work orders, risk."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="manholes",
    dev_port=50064,
    factory="cityos_manholes.app:create",
    description="manhole covers: live state, alarms, work orders, risk",
)
