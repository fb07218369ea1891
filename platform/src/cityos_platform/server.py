"""The gRPC server bootstrap: `serve()` returns a started grpc.aio server without blocking.

Every server gets per-service health and reflection, the runtime interceptor chain, message-size limits,
optional TLS or mutual TLS, and a graceful stop: health turns NOT_SERVING, after the drain delay new
calls are refused and in-flight calls have the grace period to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from cityos_platform.accesslog import AccessLog
from cityos_platform.authz import Authenticator
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.interceptor import RuntimeInterceptor
from cityos_platform.policy import service_policies
from cityos_platform.telemetry import Telemetry, configure_telemetry

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class _FromSettings:
    """Marker default: build the component from the settings."""


FROM_SETTINGS = _FromSettings()


@dataclass(frozen=True)
class Mount:
    """One gRPC service to serve: its descriptor, the servicer, and the generated `add_…_to_server`."""

    descriptor: ServiceDescriptor
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]

    @property
    def name(self) -> str:
        return str(self.descriptor.full_name)


class RunningServer:
    """A started server: its bound port, its health servicer, and a graceful `stop()`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health: HealthServicer,
        settings: Settings,
        names: list[str],
        runtime: RuntimeInterceptor,
    ) -> None:
        self.server = server
        self.runtime = runtime  # the interceptor: its `limits` show what is admitted right now
        self.port = port
        self.health = health
        self.settings = settings
        self.service_names = names
        self._stopping: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def set_serving(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, wait the drain delay, refuse new calls, drain in-flight within `grace`."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._stop(self.settings.grace_s if grace is None else grace)
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        log.info("shutting down: health NOT_SERVING, draining for up to %.1f s", grace)
        await self.health.enter_graceful_shutdown()
        if self.settings.drain_delay_s:
            await asyncio.sleep(self.settings.drain_delay_s)
        self.runtime.draining.set()  # watch streams end now (UNAVAILABLE: resume from the cursor)
        await self.server.stop(grace)
        if self.runtime.access_records is not None:
            await self.runtime.access_records.close()
        log.info("server stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_enabled:
        return None
    cert_file, key_file = settings.tls_cert_file, settings.tls_key_file
    if cert_file is None or key_file is None:  # tls_enabled guarantees both; this narrows the type
        return None
    key = key_file.read_bytes()
    cert = cert_file.read_bytes()
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(
    mounts: Sequence[Mount],
    settings: Settings,
    *,
    label: str = "",
    telemetry: Telemetry | None = None,
    authenticator: Authenticator | _FromSettings | None = FROM_SETTINGS,
    access_log: AccessLog | _FromSettings | None = FROM_SETTINGS,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    clock: Clock = SYSTEM_CLOCK,
) -> RunningServer:
    """Build, bind and start a server for `mounts`; returns at once with the bound port.

    By default callers are verified against the issuer the settings name and every call is recorded in
    the access log under the settings' folder; tests pass their own (or None to leave either out).
    Raises PolicyError (before binding) when any mounted RPC lacks a valid policy.
    """
    policies = service_policies(mount.descriptor for mount in mounts)
    label = label or (mounts[0].name if mounts else "cityos")
    if isinstance(authenticator, _FromSettings):
        authenticator = Authenticator.from_settings(settings)
    if isinstance(access_log, _FromSettings):
        access_log = AccessLog(settings.access_log_path(label))
    interceptor = RuntimeInterceptor(
        policies,
        settings,
        telemetry or configure_telemetry(label),
        label,
        authenticator=authenticator,
        access_records=access_log,
        clock=clock,
    )
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Two servers must never share a port silently, except the workers of one service.
        ("grpc.so_reuseport", 1 if settings.worker_index is not None else 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.aio.server(interceptors=[interceptor, *extra_interceptors], options=options)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [mount.name for mount in mounts]
    for mount in mounts:
        mount.add_to_server(mount.servicer, server)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)

    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    running = RunningServer(server, port, health, settings, names, interceptor)
    await running.set_serving("", True)
    for name in names:
        await running.set_serving(name, True)
    log.info(
        "serving %s on %s%s",
        ", ".join(names) or "(no services)",
        running.address,
        " (mutual TLS)" if settings.tls_client_ca_file else " (TLS)" if credentials else "",
        extra={"fields": {"port": port, "services": names}},
    )
    return running


async def serve_until_signalled(running: RunningServer) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    try:
        await signalled.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    await running.stop()
