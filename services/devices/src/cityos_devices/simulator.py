"""The device simulator: a fleet of virtual devices that provisions itself and reports like real ones.

Domain services plug their device behaviours in (a `Behaviour`: the device model, how many devices and
where, and what one reading looks like given the device's state); the simulator supplies the rest —
provisioning (idempotent, so a second run finds the same fleet), one token per device kept under
`var/simulator/`, reporting at each model's interval with jitter, a battery that drains, radio quality
that wanders, PSM sleep between uplinks, and answers to the commands delivered with each uplink (and
to a changed desired state) — by default a plain success; a behaviour that acts on them (a lamp that
dims) says how with `on_command` and `on_desired`.

`cityos dev` runs it (`cityos simulate`) against the embedded city; tests run it for a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc

log = logging.getLogger(__name__)

# The demo district: a Xiong'an-like new town around 39.0 N, 115.95 E.
CENTER = (39.0, 115.95)


@dataclass
class DeviceState:
    """What a simulated device remembers between uplinks."""

    device_id: str
    latitude: float
    longitude: float
    sequence: int = 0
    battery_v: float = 3.6
    rsrp_dbm: float = -95.0
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Behaviour:
    """How one kind of device behaves; domain services define theirs."""

    model_id: str
    model: devices_pb2.DeviceModel
    prefix: str  # device ids are `<prefix>-<nnnn>`
    owner_organization: str
    count: int
    radio: int = devices_pb2.RADIO_TYPE_NB_IOT
    psm_periodic_update_s: int = 0
    tags: tuple[str, ...] = ()
    # Where device n stands.
    place: Callable[[int, random.Random], tuple[float, float]] = field(default=lambda n, rng: _scatter(rng))
    # The next reading's values, given the state (which it may update); None: the device stays silent
    # this time (no power, no coverage).
    sample: Callable[[DeviceState, random.Random], dict[str, float] | None] = field(default=lambda s, rng: {})
    # Carry out a delivered command: (command, parameters) -> (succeeded, result). None: succeed.
    on_command: Callable[[DeviceState, str, dict[str, str]], tuple[bool, str]] | None = None
    # Apply a changed desired state (the twin's `desired`, as a dict). None: ignore it.
    on_desired: Callable[[DeviceState, dict[str, Any]], None] | None = None


def _scatter(rng: random.Random, spread: float = 0.03) -> tuple[float, float]:
    return CENTER[0] + rng.uniform(-spread, spread), CENTER[1] + rng.uniform(-spread, spread)


def environment_sensors(count: int = 20) -> Behaviour:
    """Street-side environment sensors (temperature, humidity, PM2.5): the devices service's own demo."""

    def sample(state: DeviceState, rng: random.Random) -> dict[str, float]:
        hour = datetime.now(UTC).hour + 8  # local time in the demo district (UTC+8)
        temperature = 8 + 10 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 0.4)
        pm25 = max(1.0, state.values.get("pm25_ugm3", 35.0) + rng.gauss(0, 4))
        return {
            "temperature_c": round(temperature, 1),
            "humidity_pct": round(min(100, max(5, 45 + rng.gauss(0, 5))), 1),
            "pm25_ugm3": round(min(500, pm25), 1),
            "battery_v": round(state.battery_v, 3),
        }

    model = devices_pb2.DeviceModel(
        type="environment.sensor",
        vendor="CityOS Demo",
        display_name="Street environment sensor",
        supported_commands=["reboot", "set_interval"],
        metrics=[
            devices_pb2.MetricSpec(name="temperature_c", unit="Cel", min=-40, max=60),
            devices_pb2.MetricSpec(name="humidity_pct", unit="%", min=0, max=100),
            devices_pb2.MetricSpec(name="pm25_ugm3", unit="ug/m3", min=0, max=1000),
            devices_pb2.MetricSpec(name="battery_v", unit="V", min=0, max=4.2),
        ],
        reporting_interval=duration_pb2.Duration(seconds=300),
    )
    return Behaviour(
        model_id="demo-env-v1",
        model=model,
        prefix="env",
        owner_organization="ecology-bureau",
        count=count,
        psm_periodic_update_s=3600,
        tags=("demo",),
        sample=sample,
    )


class Simulator:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        admin_metadata: Sequence[tuple[str, str]],
        behaviours: Iterable[Behaviour],
        *,
        state_dir: Path,
        speedup: float = 1.0,
        seed: int = 7,
    ) -> None:
        self.registry = devices_pb2_grpc.DeviceServiceStub(channel)
        self.telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
        self.commands = devices_pb2_grpc.CommandServiceStub(channel)
        self.admin = tuple(admin_metadata)
        self.behaviours = list(behaviours)
        self.state_dir = state_dir
        self.speedup = speedup
        self.rng = random.Random(seed)
        self.readings_sent = 0
        self.commands_answered = 0

    # -- provisioning ----------------------------------------------------------------------------

    async def provision(self) -> dict[str, tuple[Behaviour, DeviceState, str]]:
        """Create the models, devices and tokens that do not exist yet; return every device's state."""
        tokens_file = self.state_dir / "tokens.json"
        tokens: dict[str, str] = json.loads(tokens_file.read_text()) if tokens_file.exists() else {}
        fleet: dict[str, tuple[Behaviour, DeviceState, str]] = {}
        for behaviour in self.behaviours:
            await self._ensure(
                self.registry.CreateDeviceModel(
                    devices_pb2.CreateDeviceModelRequest(
                        device_model=behaviour.model, device_model_id=behaviour.model_id
                    ),
                    metadata=self.admin,
                )
            )
            places = random.Random(behaviour.model_id)
            for n in range(behaviour.count):
                device_id = f"{behaviour.prefix}-{n:04d}"
                lat, lng = behaviour.place(n, places)
                subscription = devices_pb2.Subscription(
                    iccid=f"898600{n:013d}",
                    plmn="46000",
                    radio_type=behaviour.radio,  # type: ignore[arg-type]
                    slice=devices_pb2.Snssai(sst=1, sd="000001"),
                    dnn="iot.cityos",
                )
                if behaviour.psm_periodic_update_s:
                    subscription.psm_periodic_update.FromSeconds(behaviour.psm_periodic_update_s)
                await self._ensure(
                    self.registry.CreateDevice(
                        devices_pb2.CreateDeviceRequest(
                            device=devices_pb2.Device(
                                model=f"deviceModels/{behaviour.model_id}",
                                serial_number=f"SIM-{device_id.upper()}",
                                firmware_version="1.0.0",
                                tags=list(behaviour.tags),
                                ownership=resources_pb2.Ownership(
                                    owner_organization=behaviour.owner_organization
                                ),
                                location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
                                subscription=subscription,
                            ),
                            device_id=device_id,
                        ),
                        metadata=self.admin,
                    )
                )
                if device_id not in tokens:
                    issued = await self.registry.IssueDeviceToken(
                        devices_pb2.IssueDeviceTokenRequest(device=f"devices/{device_id}"),
                        metadata=self.admin,
                    )
                    tokens[device_id] = issued.token
                # Real devices keep their counter across reboots; a clock-based start does the same here.
                state = DeviceState(
                    device_id,
                    lat,
                    lng,
                    sequence=int(datetime.now(UTC).timestamp() * 1000),
                    battery_v=3.6 - self.rng.uniform(0, 0.3),
                )
                fleet[device_id] = (behaviour, state, tokens[device_id])
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tokens_file.touch(mode=0o600)
        tokens_file.write_text(json.dumps(tokens))
        return fleet

    async def _ensure(self, call: Any) -> None:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    # -- running -----------------------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> None:
        """Provision, then let every device report on its own schedule (until cancelled or `duration_s`)."""
        fleet = await self.provision()
        tasks = [asyncio.create_task(self._device(*entry)) for entry in fleet.values()]
        try:
            if duration_s is None:
                await asyncio.gather(*tasks)
            else:
                await asyncio.sleep(duration_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _device(self, behaviour: Behaviour, state: DeviceState, token: str) -> None:
        metadata = (("authorization", f"Bearer {token}"),)
        interval = behaviour.model.reporting_interval.seconds / self.speedup
        await asyncio.sleep(self.rng.uniform(0, interval))  # devices do not all wake at once
        while True:
            await self.uplink(behaviour, state, metadata)
            await asyncio.sleep(interval * self.rng.uniform(0.9, 1.1))

    async def uplink(
        self, behaviour: Behaviour, state: DeviceState, metadata: Sequence[tuple[str, str]]
    ) -> None:
        state.sequence += 1
        state.battery_v = max(2.9, state.battery_v - 0.0004)
        state.rsrp_dbm = min(-70.0, max(-130.0, state.rsrp_dbm + self.rng.gauss(0, 2)))
        values = behaviour.sample(state, self.rng)
        if values is None:  # silent this time
            state.sequence -= 1
            return
        state.values.update(values)
        when = timestamp_pb2.Timestamp()
        when.GetCurrentTime()
        try:
            reply = await self.telemetry.Report(
                devices_pb2.ReportRequest(
                    device=f"devices/{state.device_id}",
                    readings=[devices_pb2.Reading(sequence=state.sequence, time=when, values=values)],
                    radio=devices_pb2.RadioReport(
                        rsrp_dbm=round(state.rsrp_dbm),
                        sinr_db=round(self.rng.uniform(-3, 15), 1),
                        cell_id="46000-7781",
                    ),
                ),
                metadata=metadata,
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("simulated %s could not report: %s", state.device_id, error.details())
            state.sequence -= 1  # not stored: the same sequence goes again next time
            return
        self.readings_sent += reply.accepted
        if reply.HasField("twin") and behaviour.on_desired is not None:
            behaviour.on_desired(state, json_format.MessageToDict(reply.twin.desired))
        for command in reply.commands:  # awake right now: carry them out and answer
            succeeded, result = True, "done (simulated)"
            if behaviour.on_command is not None:
                succeeded, result = behaviour.on_command(state, command.command, dict(command.parameters))
            await self.commands.AckCommand(
                devices_pb2.AckCommandRequest(name=command.name, succeeded=succeeded, result=result),
                metadata=metadata,
                timeout=10,
            )
            self.commands_answered += 1


def behaviours() -> list[Behaviour]:
    """The devices service's own demo fleet; other services add theirs via `cityos.simulators`."""
    return [environment_sensors()]


BEHAVIOUR_GROUP = "cityos.device_behaviours"


def installed_behaviours() -> list[Behaviour]:
    """The devices service's own demo fleet plus every behaviour other services register under the
    `cityos.device_behaviours` entry point (a callable returning a list of `Behaviour`)."""
    from importlib.metadata import entry_points

    found = behaviours()
    for entry in sorted(entry_points(group=BEHAVIOUR_GROUP), key=lambda e: e.name):
        found.extend(entry.load()())
    return found


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: simulate the installed fleet against the embedded city."""
    async with grpc.aio.insecure_channel(endpoints["devices"]) as channel:
        simulator = Simulator(
            channel,
            (("authorization", f"Bearer {token}"),),
            installed_behaviours(),
            state_dir=var_dir / "simulator",
            speedup=speedup,
        )
        await simulator.run()
