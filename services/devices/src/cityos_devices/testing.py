"""A real devices service for other services' tests: the domain services that follow the telemetry feed
(parking's spot sensors, manholes' cover terminals, …) start it in-process, register their device model
and devices, and report readings as those devices with their own tokens.

    async with running_fleet(start_server, dev_issuer, mint, tmp_path / "devices", clock) as fleet:
        await fleet.model("geomag", "parking.sensor", {"occupied": ("1", 0, 1)})
        await fleet.device("pk-1", "geomag")
        await fleet.report("pk-1", occupied=1.0)

`start_server`, `dev_issuer` and `mint` are the platform's test fixtures (cityos_platform.testing).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.app import DevicesApp
from cityos_platform.clock import Clock
from cityos_platform.testing.fixtures import authenticator_for, bearer

# metric name -> (unit, min, max)
Metrics = Mapping[str, tuple[str, float, float]]
DEFAULT_POINT = (39.05, 115.95)


class Fleet:
    """The devices service: models, devices and their tokens, and Report as a device."""

    def __init__(self, server: Any, app: DevicesApp, channel: grpc.aio.Channel, operator: Any, clock: Clock):
        self.server, self.app, self.channel, self.clock = server, app, channel, clock
        self.registry = devices_pb2_grpc.DeviceServiceStub(channel)
        self.telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
        self.commands = devices_pb2_grpc.CommandServiceStub(channel)
        self.jobs = devices_pb2_grpc.JobServiceStub(channel)
        self.operator = operator
        self.tokens: dict[str, Any] = {}
        self.sequences: dict[str, int] = {}

    async def model(
        self,
        model_id: str,
        device_type: str,
        metrics: Metrics,
        *,
        reporting_interval_s: int = 300,
        commands: tuple[str, ...] = (),
    ) -> None:
        model = devices_pb2.DeviceModel(
            type=device_type,
            vendor="Acme Devices",
            display_name=f"{device_type} (test)",
            metrics=[
                devices_pb2.MetricSpec(name=name, unit=unit, min=low, max=high)
                for name, (unit, low, high) in metrics.items()
            ],
            reporting_interval=duration_pb2.Duration(seconds=reporting_interval_s),
            supported_commands=list(commands),
        )
        await self.registry.CreateDeviceModel(
            devices_pb2.CreateDeviceModelRequest(device_model=model, device_model_id=model_id),
            metadata=self.operator,
            timeout=10,
        )

    async def device(self, device_id: str, model_id: str, point: tuple[float, float] = DEFAULT_POINT) -> None:
        """Create a device of the model and keep a token it reports with."""
        device = devices_pb2.Device(
            model=f"deviceModels/{model_id}",
            serial_number=f"SN-{device_id}",
            location=resources_pb2.GeoPoint(latitude=point[0], longitude=point[1]),
        )
        await self.registry.CreateDevice(
            devices_pb2.CreateDeviceRequest(device=device, device_id=device_id),
            metadata=self.operator,
            timeout=10,
        )
        issued = await self.registry.IssueDeviceToken(
            devices_pb2.IssueDeviceTokenRequest(device=f"devices/{device_id}"),
            metadata=self.operator,
            timeout=10,
        )
        self.tokens[device_id] = bearer(issued.token)

    async def report(
        self, device_id: str, *, at: datetime | None = None, sequence: int = 0, **values: float
    ) -> datetime:
        """One reading of `device_id`, measured `at` (default: the clock's now), with the next sequence
        number (or `sequence`); returns its measured time. Asserts the service accepted it."""
        measured = at or self.clock.now()
        await self.uplink(device_id, at=measured, sequence=sequence, **values)
        return measured

    async def uplink(
        self, device_id: str, *, at: datetime | None = None, sequence: int = 0, **values: float
    ) -> devices_pb2.ReportResponse:
        """As `report`, returning the service's answer: the commands delivered with it (now SENT) and the
        desired state when it changed."""
        self.sequences[device_id] = sequence or self.sequences.get(device_id, 0) + 1
        measured = at or self.clock.now()
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(measured)
        reading = devices_pb2.Reading(sequence=self.sequences[device_id], time=when, values=values)
        reply: devices_pb2.ReportResponse = await self.telemetry.Report(
            devices_pb2.ReportRequest(device=f"devices/{device_id}", readings=[reading]),
            metadata=self.tokens[device_id],
            timeout=10,
        )
        assert reply.accepted == 1, reply
        return reply

    async def ack(self, device_id: str, command: str, *, succeeded: bool = True, result: str = "") -> None:
        """Answer a delivered command (`devices/{device}/commands/{id}`) as its device."""
        await self.commands.AckCommand(
            devices_pb2.AckCommandRequest(name=command, succeeded=succeeded, result=result),
            metadata=self.tokens[device_id],
            timeout=10,
        )


@contextlib.asynccontextmanager
async def running_fleet(
    start_server: Callable[..., Any],
    dev_issuer: Any,
    mint: Callable[..., str],
    var_dir: Path,
    clock: Clock,
    *,
    organization: str = "transport",
) -> AsyncIterator[Fleet]:
    """The devices service on SQLite under `var_dir`, on `clock`, verifying device tokens; its operator
    belongs to `organization` (the owner of the devices it creates)."""
    from cityos_platform.config import load_settings

    var_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the service starts
    app = DevicesApp(
        load_settings(var_dir=var_dir, events_poll_interval_s=0.05),
        database_url=f"sqlite+aiosqlite:///{var_dir / 'devices.sqlite'}",
        clock=clock,
        run_jobs=False,
    )
    mounts = await app.start()
    authenticator = authenticator_for(dev_issuer)
    authenticator.prefixed = app.token_verifiers  # device tokens
    server = await start_server(mounts, authenticator=authenticator)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Fleet(server, app, channel, bearer(mint("users/olga", organization, ["operator"])), clock)
    finally:
        await channel.close()
        # The server first: a feed subscriber's handler must not poll a database already closed.
        await server.stop(grace=0)
        await app.stop()
