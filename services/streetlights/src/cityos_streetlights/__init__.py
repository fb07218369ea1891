"""CityOS streetlights: lights, groups, cabinets, feeders, schedules, control, faults, energy."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="streetlights",
    dev_port=50065,
    factory="cityos_streetlights.app:create",
    description="streetlights: schedules, control through device jobs, faults, energy",
)
