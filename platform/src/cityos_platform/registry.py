"""Services are found through entry points; the platform never imports a service by name.

A service package declares, in its pyproject.toml:

    [project.entry-points."cityos.services"]
    parking = "cityos_parking:SERVICE"

where `SERVICE` is a `ServiceDefinition`. Its `factory` (an import path, loaded only by the process
that serves it) builds a `ServiceApp`: `start()` opens what the service needs and returns the gRPC
services to mount; `stop()` closes it after the server has drained.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from cityos_platform.config import Settings
from cityos_platform.server import Mount

ENTRY_POINT_GROUP = "cityos.services"


class ServiceApp(Protocol):
    """A running service's lifecycle around its gRPC server.

    An app may also have `token_verifiers`: {prefix: async verify(token) -> Principal} for opaque
    tokens it issues itself (the devices service's device tokens); `cityos serve` adds them to the
    caller verification chain."""

    async def start(self) -> Sequence[Mount]: ...

    async def stop(self) -> None: ...


class ServiceFactory(Protocol):
    def __call__(self, settings: Settings) -> ServiceApp: ...


@dataclass(frozen=True)
class ServiceDefinition:
    """What an entry point names: a service's name, its embedded-mode port and its factory."""

    name: str
    dev_port: int
    factory: str  # "package.module:callable", a ServiceFactory
    description: str = ""
    # The embedded port of the service's HTTP listener, if it has one (0: none). The launcher hands the
    # port it chose to the service as `CITYOS_<NAME>_HTTP_PORT` and shows it beside the gRPC endpoint.
    dev_http_port: int = 0

    @property
    def http_port_variable(self) -> str:
        return f"CITYOS_{self.name.upper().replace('-', '_')}_HTTP_PORT"

    def load_factory(self) -> ServiceFactory:
        module_name, _, attribute = self.factory.partition(":")
        factory: ServiceFactory = getattr(importlib.import_module(module_name), attribute)
        return factory


class StaticApp:
    """A ServiceApp for services whose servicers need no resources opened or closed."""

    def __init__(self, mounts: Sequence[Mount]) -> None:
        self.mounts = list(mounts)

    async def start(self) -> Sequence[Mount]:
        return self.mounts

    async def stop(self) -> None:
        return None


class UnknownService(LookupError):
    pass


def discover() -> dict[str, ServiceDefinition]:
    """Every installed service, by name, sorted by name."""
    found: dict[str, ServiceDefinition] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        definition = entry.load()
        if not isinstance(definition, ServiceDefinition):
            raise TypeError(f"entry point {entry.name} = {entry.value} is not a ServiceDefinition")
        if definition.name != entry.name:
            raise TypeError(f"entry point {entry.name} names a service called {definition.name!r}")
        found[entry.name] = definition
    return dict(sorted(found.items()))


def lookup(name: str) -> ServiceDefinition:
    services = discover()
    if name not in services:
        known = ", ".join(services) or "none installed"
        raise UnknownService(f"no service named {name!r} (installed: {known})")
    return services[name]
