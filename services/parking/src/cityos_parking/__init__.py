"""CityOS parking: sites, zones and spots, live occupancy, availability, reservations, sessions, fees."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="parking",
    dev_port=50063,
    factory="cityos_parking.app:create",
    description="parking sites, groups and spots, occupancy (in progress: search, reservations, sessions)",
)
