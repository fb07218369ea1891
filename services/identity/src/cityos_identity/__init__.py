"""CityOS identity: organizations, people, service accounts, API keys, authorization and audit."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="identity",
    dev_port=50062,
    factory="cityos_identity.app:create",
    description="organizations, users, service accounts, API keys, CheckPermission, audit",
)
