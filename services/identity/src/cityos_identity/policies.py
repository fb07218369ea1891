"""The city's policy table: every RPC of every CityOS API, read from the generated descriptors.

Each API declares its policy on its RPCs (`(cityos.common.v1.policy)`); the runtime enforces them per
service. The identity service answers `CheckPermission` and `ListPolicies` from the same options of
*all* APIs, found by walking the generated `cityos` package (so a new service's API is picked up by
itself), and derives from them the roles the Keycloak realm must hold.

`cityos.testing.*` (the platform's own test APIs) and `cityos.common.*` (shared messages and the
event stream every service mounts, listed once under its own name) are not domain APIs: the first is
left out, the second kept.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from google.protobuf.descriptor import ServiceDescriptor

import cityos
from cityos_platform.policy import Policy, service_policies

EXCLUDED_PACKAGES = ("cityos.testing.",)
# Roles every principal kind may carry that no RPC lists (devices and services are kinds of caller
# with their own roles; `city-admin` holds every permission without being listed).
BUILT_IN_ROLES = frozenset({"city-admin"})


def api_services() -> list[ServiceDescriptor]:
    """Every gRPC service of the generated CityOS APIs, in a stable order."""
    services: dict[str, ServiceDescriptor] = {}
    for module_info in pkgutil.walk_packages(cityos.__path__, prefix="cityos."):
        if not module_info.name.endswith("_pb2") or module_info.name.startswith(EXCLUDED_PACKAGES):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = service
    return [services[name] for name in sorted(services)]


@cache
def policy_table() -> dict[str, Policy]:
    """Every RPC's policy by full method path (`/cityos.devices.v1.DeviceService/GetDevice`)."""
    return service_policies(api_services())


def permissions() -> dict[str, tuple[str, ...]]:
    """Each permission and the roles that hold it (a permission may be declared by several RPCs)."""
    table: dict[str, set[str]] = {}
    for policy in policy_table().values():
        if policy.permission:
            table.setdefault(policy.permission, set()).update(policy.roles)
    return {permission: tuple(sorted(roles)) for permission, roles in sorted(table.items())}


def policy_roles() -> list[str]:
    """The roles the policy options use, plus the built-in ones: the realm's roles, derived."""
    roles = set(BUILT_IN_ROLES)
    for policy in policy_table().values():
        roles.update(policy.roles)
    return sorted(roles)
