"""Fixtures for the streetlights service: a running service (SQLite and PostgreSQL), and a running service
that follows a real devices service (its feed, its jobs), both on one ManualClock.

`street`: the service alone (inventory, schedules, NGSI-LD, energy queries, faults queries).
`grid`:   the service with a devices fleet (`grid.fleet`, cityos_devices.testing.Fleet) holding the
          light-controller model `ctl` (type `streetlight.controller`, command `set_light`) and the
          cabinet-controller model `cab` (type `streetlight.cabinet`); the service follows the feed and
          creates devices jobs as its own client `cityos-streetlights`. Its loops do not run by themselves:
          tests call `grid.app.heartbeat.tick()`, `grid.app.applier.tick()`, `grid.fleet.app.jobs.tick()`,
          and `grid.catch_up()` to apply what is on the feed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.streetlights.v1 import (
    control_pb2_grpc,
    energy_pb2_grpc,
    faults_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    ngsild_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
)
from cityos_devices.testing import Fleet, running_fleet
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer
from cityos_streetlights.app import StreetlightsApp
from cityos_streetlights.metrics import CABINET_METRICS, CONTROLLER_METRICS, SET_LIGHT
from cityos_streetlights.settings import StreetlightsSettings

CENTER = (39.05, 115.95)
OWNER = "public-works"
CLIENT_SECRET = "streetlights-client-secret-for-tests-0123456789"
inv = inventory_pb2


class Street:
    """A running streetlights service, its stubs and ready-made callers (owner organization
    `public-works`)."""

    def __init__(self, app: StreetlightsApp, channel: grpc.aio.Channel, mint: Any, clock: Any = None):
        self.app, self.channel, self._mint, self.clock = app, channel, mint, clock
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(channel)
        self.control = control_pb2_grpc.ControlServiceStub(channel)
        self.faults = faults_pb2_grpc.FaultServiceStub(channel)
        self.energy = energy_pb2_grpc.EnergyServiceStub(channel)
        self.ngsild = ngsild_pb2_grpc.NgsiLdServiceStub(channel)
        self.events_stub = events_pb2_grpc.EventServiceStub(channel)
        self.operator = self.token("users/li", OWNER, "operator")
        self.analyst = self.token("users/an", OWNER, "analyst")
        self.other_org = self.token("users/uma", "utilities", "operator")

    def token(self, subject: str, organization: str, *roles: str) -> tuple[tuple[str, str], ...]:
        return bearer(self._mint(subject, organization, list(roles)))

    # -- ready-made inventory (every call as the operator unless `metadata`) -------------------------

    async def model(
        self, model_id: str = "led-60", rated_power_w: float = 60.0, **fields: Any
    ) -> inv.LightModel:
        model = inv.LightModel(
            display_name=fields.pop("display_name", f"LED {rated_power_w:g} W"),
            lamp_technology=fields.pop("lamp_technology", inv.LAMP_TECHNOLOGY_LED),
            rated_power_w=rated_power_w,
            **fields,
        )
        return await self.inventory.CreateLightModel(
            inv.CreateLightModelRequest(light_model=model, light_model_id=model_id),
            metadata=self.operator,
            timeout=10,
        )

    async def cabinet(self, cabinet_id: str = "cab-1", device: str = "", **fields: Any) -> inv.Cabinet:
        cabinet = inv.Cabinet(
            display_name=fields.pop("display_name", cabinet_id.upper()),
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            working_mode=fields.pop("working_mode", inv.WORKING_MODE_AUTOMATIC),
            device=device,
            **fields,
        )
        return await self.inventory.CreateCabinet(
            inv.CreateCabinetRequest(cabinet=cabinet, cabinet_id=cabinet_id),
            metadata=self.operator,
            timeout=10,
        )

    async def feeder(
        self, feeder_id: str = "f-1", cabinet: str = "cabinets/cab-1", circuit: int = 1, **fields: Any
    ) -> inv.Feeder:
        feeder = inv.Feeder(
            display_name=fields.pop("display_name", feeder_id.upper()),
            cabinet=cabinet,
            circuit=circuit,
            phase=fields.pop("phase", inv.PHASE_L1),
            **fields,
        )
        return await self.inventory.CreateFeeder(
            inv.CreateFeederRequest(feeder=feeder, feeder_id=feeder_id), metadata=self.operator, timeout=10
        )

    async def group(self, group_id: str = "g-1", **fields: Any) -> inv.Group:
        group = inv.Group(display_name=fields.pop("display_name", group_id.upper()), **fields)
        return await self.inventory.CreateGroup(
            inv.CreateGroupRequest(group=group, group_id=group_id), metadata=self.operator, timeout=10
        )

    async def light(
        self,
        light_id: str = "sl-1",
        *,
        offset: float = 0.0,
        model: str = "lightModels/led-60",
        metadata: Any = None,
        **fields: Any,
    ) -> inv.Light:
        light = inv.Light(
            display_name=fields.pop("display_name", light_id.upper()),
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1] + offset),
            model=model,
            **fields,
        )
        return await self.inventory.CreateLight(
            inv.CreateLightRequest(light=light, light_id=light_id),
            metadata=metadata or self.operator,
            timeout=10,
        )

    async def get_light(self, light_id: str = "sl-1") -> inv.Light:
        return await self.inventory.GetLight(
            inv.GetLightRequest(name=f"lights/{light_id}"), metadata=self.operator, timeout=10
        )

    async def schedule(
        self, schedule_id: str, steps: list[schedules_pb2.ScheduleStep], **fields: Any
    ) -> schedules_pb2.Schedule:
        schedule = schedules_pb2.Schedule(
            display_name=fields.pop("display_name", schedule_id), steps=steps, **fields
        )
        return await self.schedules.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(schedule=schedule, schedule_id=schedule_id),
            metadata=self.operator,
            timeout=10,
        )

    async def events(self, prefix: str = "streetlights.") -> list[events_pb2.Event]:
        """Every event committed so far whose type starts with `prefix`."""
        found: list[events_pb2.Event] = []
        async for batch in self.events_stub.StreamEvents(
            events_pb2.StreamEventsRequest(type_prefixes=[prefix]), metadata=self.operator, timeout=10
        ):
            found.extend(batch.events)
        return found


def sun_step(anchor: int, dim_level: int, offset_s: int = 0) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=anchor,  # type: ignore[arg-type]
        offset=duration_pb2.Duration(seconds=offset_s),
        dim_level=dim_level,
    )


def fixed_step(local_time: str, dim_level: int) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=schedules_pb2.STEP_ANCHOR_FIXED_TIME, local_time=local_time, dim_level=dim_level
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def street(start_server, database_url, mint, tmp_path, clock):  # type: ignore[no-untyped-def]
    app = StreetlightsApp(
        load_settings(var_dir=tmp_path, events_poll_interval_s=0.05),
        database_url=database_url,
        clock=clock,
        run_tasks=False,
    )
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    yield Street(app, channel, mint, clock)
    await channel.close()
    await server.stop(grace=0)  # no handler is left running on a closed database
    await app.stop()


class Grid(Street):
    """A streetlights service following a devices fleet (`fleet`) and creating jobs on it."""

    fleet: Fleet

    async def catch_up(self) -> int:
        """Apply everything on the telemetry feed so far."""
        assert self.app.follower is not None
        return await self.app.follower.catch_up()


@pytest.fixture
async def fleet(start_server, dev_issuer, mint, tmp_path, clock):  # type: ignore[no-untyped-def]
    async with running_fleet(
        start_server, dev_issuer, mint, tmp_path / "devices", clock, organization=OWNER
    ) as fleet:
        await fleet.model("ctl", "streetlight.controller", CONTROLLER_METRICS, commands=(SET_LIGHT,))
        await fleet.model("cab", "streetlight.cabinet", CABINET_METRICS)
        yield fleet


@pytest.fixture
async def grid(start_server, dev_issuer, mint, tmp_path, clock, database_url, fleet):  # type: ignore[no-untyped-def]
    dev_issuer.issuer.register_client("cityos-streetlights", CLIENT_SECRET)
    settings = load_settings(
        var_dir=tmp_path / "streetlights",
        events_poll_interval_s=0.05,
        endpoints={"devices": fleet.server.address},
        auth_issuer=dev_issuer.issuer_url,
        auth_client_secret=CLIENT_SECRET,
    )
    app = StreetlightsApp(
        settings,
        database_url=database_url,
        clock=clock,
        streetlights_settings=StreetlightsSettings(feed_retry_s=0.05),
        run_tasks=False,
    )
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    grid = Grid(app, channel, mint, clock)
    grid.fleet = fleet
    yield grid
    await channel.close()
    await server.stop(grace=0)  # no handler is left running on a closed database
    await app.stop()
