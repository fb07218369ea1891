"""MAN-2 and MAN-3: covers' live state and alarms from their terminals' readings, through the service.

A real devices service (on SQLite) and a real manholes service (on SQLite and on PostgreSQL) run
in-process. Terminals report as themselves with their device tokens; the manholes service follows the
devices feed as its own client `cityos-manholes`. Both share one ManualClock, so a missed heartbeat is a
clock move. The pure rules (every threshold, the hysteresis, severities) are test_rules.py's; here each
kind of rule is proven once end to end: stored alarms, their events and the rule events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy import select

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_devices.testing import Fleet, running_fleet
from cityos_manholes.app import ManholesApp
from cityos_manholes.models import AlarmRow, WorkOrderRow
from cityos_manholes.settings import ManholesSettings
from cityos_manholes.telemetry import METRICS
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.waiting import eventually

CLIENT_SECRET = "manholes-client-secret-for-tests-0123456789"
CENTER = (39.05, 115.95)
pb = manholes_pb2
UNITS = {"tilt_deg": ("deg", 0, 180), "rsrp_dbm": ("dBm", -150, 0), "temperature_c": ("Cel", -40, 85)}


def _at(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


class Well:
    """A manholes service following the feed, with cover xa-0001 bound to terminal mt-1."""

    def __init__(self, app, channel, mint, terminals: Fleet):
        self.app, self.channel, self.terminals = app, channel, terminals
        self.covers = manholes_pb2_grpc.CoverServiceStub(channel)
        self.events_stub = events_pb2_grpc.EventServiceStub(channel)
        self.operator = bearer(mint("users/wei", "drainage", ["operator"]))

    async def cover(self, cover_id="xa-0001", device="mt-1", **fields) -> pb.Cover:
        cover = pb.Cover(
            display_name=cover_id.upper(),
            kind=pb.COVER_KIND_SEWER,
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            road_class=fields.pop("road_class", pb.ROAD_CLASS_LOCAL),
            device=f"devices/{device}",
            **fields,
        )
        return await self.covers.CreateCover(
            pb.CreateCoverRequest(cover=cover, cover_id=cover_id), metadata=self.operator, timeout=10
        )

    async def get(self, cover_id="xa-0001") -> pb.Cover:
        return await self.covers.GetCover(
            pb.GetCoverRequest(name=f"covers/{cover_id}"), metadata=self.operator, timeout=10
        )

    async def report(self, device="mt-1", cover_id="xa-0001", *, at: datetime | None = None, **values):
        """Report as the terminal and wait until the cover has heard it."""
        await self.terminals.report(device, at=at, **values)
        heard = self.terminals.clock.now()
        return await eventually(
            lambda: self.get(cover_id),
            lambda cover: cover.state.HasField("heard_time") and _at(cover.state.heard_time) == heard,
        )

    async def alarms(self, cover_id="xa-0001") -> list[AlarmRow]:
        async with self.app.db.read() as session:
            return list(
                await session.scalars(
                    select(AlarmRow).where(AlarmRow.cover_id == cover_id).order_by(AlarmRow.raise_time)
                )
            )

    async def events(self, prefix="manholes.") -> list[tuple[str, Any]]:
        """(type, payload) of the events, CRUD of covers left out."""
        found = []
        async for batch in self.events_stub.StreamEvents(
            events_pb2.StreamEventsRequest(type_prefixes=[prefix]), metadata=self.operator, timeout=10
        ):
            for event in batch.events:
                if event.type.startswith("manholes.alarm."):
                    payload: Any = pb.AlarmChanged()
                elif event.type.startswith("manholes.cover.") and event.type.split(".")[-1] in (
                    "created",
                    "updated",
                    "deleted",
                ):
                    continue
                else:
                    payload = pb.CoverEvent()
                assert event.payload.Unpack(payload)
                found.append((event.type, payload))
        return found

    async def event_types(self) -> list[str]:
        return [kind for kind, _ in await self.events()]


@pytest.fixture
def clock():
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def terminals(start_server, dev_issuer, mint, tmp_path, clock):
    async with running_fleet(
        start_server, dev_issuer, mint, tmp_path / "devices", clock, organization="drainage"
    ) as fleet:
        await fleet.model(
            "mt", "manhole.terminal", {name: UNITS.get(name, ("1", 0, 1000)) for name in METRICS}
        )
        for device_id in ("mt-1", "mt-2"):
            await fleet.device(device_id, "mt", CENTER)
        yield fleet


@pytest.fixture
async def well(start_server, dev_issuer, mint, tmp_path, clock, database_url, terminals):
    dev_issuer.issuer.register_client("cityos-manholes", CLIENT_SECRET)
    settings = load_settings(
        var_dir=tmp_path / "manholes",
        events_poll_interval_s=0.05,
        endpoints={"devices": terminals.server.address},
        auth_issuer=dev_issuer.issuer_url,
        auth_client_secret=CLIENT_SECRET,
    )
    app = ManholesApp(
        settings,
        database_url=database_url,
        clock=clock,
        manholes_settings=ManholesSettings(feed_retry_s=0.05),
        run_tasks=False,
    )
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    yield Well(app, channel, mint, terminals)
    await channel.close()
    await server.stop(grace=0)  # no handler is left running on a closed database
    await app.stop()


def _open(alarms: list[AlarmRow], condition: int) -> list[AlarmRow]:
    return [alarm for alarm in alarms if alarm.condition == condition]


@pytest.mark.req("MAN-2")
async def test_a_tilt_crossing_raises_once_hovering_does_not_flap_worse_updates_and_recovery_clears(
    well, clock
):
    await well.cover(install_angle_deg=2.0)  # tilt threshold 10° relative, hysteresis 0.1
    await well.report(tilt_deg=2.0)
    assert await well.alarms() == []
    clock.advance(60)
    cover = await well.report(tilt_deg=14.0)  # 12° relative: over the line
    assert cover.state.tilt_deg == 14.0
    (alarm,) = await well.alarms()
    assert (alarm.condition, alarm.value, alarm.threshold) == (pb.ALARM_CONDITION_TILT, 12.0, 10.0)
    assert (alarm.state, alarm.severity, alarm.cleared) == (pb.ALARM_STATE_RAISED, pb.SEVERITY_WARNING, False)
    for tilt in (12.0, 11.5, 12.5, 13.0):  # hovering at the line and in the hold band: nothing
        clock.advance(60)
        await well.report(tilt_deg=tilt)
    assert await well.event_types() == ["manholes.alarm.raised", "manholes.cover.tilt_exceeded"]
    clock.advance(60)
    await well.report(tilt_deg=22.0)  # worse: the same alarm's worst value
    (alarm,) = await well.alarms()
    assert (alarm.value, alarm.update_count, alarm.cleared) == (20.0, 1, False)
    clock.advance(60)
    await well.report(tilt_deg=10.5)  # 8.5° relative: back past the margin (9°)
    (alarm,) = await well.alarms()
    assert alarm.cleared
    assert alarm.clear_time == clock.now()
    assert alarm.state == pb.ALARM_STATE_RAISED  # cleared, not resolved: it stays until someone does
    events = await well.events()
    assert [kind for kind, _ in events] == [
        "manholes.alarm.raised",
        "manholes.cover.tilt_exceeded",
        "manholes.alarm.updated",
        "manholes.alarm.cleared",
    ]
    tilt = events[1][1]
    assert (tilt.cover.name, tilt.condition, tilt.value) == ("covers/xa-0001", pb.ALARM_CONDITION_TILT, 12.0)


@pytest.mark.req("MAN-2")
async def test_a_gas_and_the_water_level_raise_update_and_clear_their_own_alarms(well, clock):
    await well.cover(thresholds=pb.Thresholds(water_level_m=1.5))
    await well.report(h2s_ppm=12.0, water_level_m=2.0, co_ppm=3.0)
    alarms = await well.alarms()
    (gas,) = _open(alarms, pb.ALARM_CONDITION_GAS_H2S)
    (water,) = _open(alarms, pb.ALARM_CONDITION_WATER_LEVEL)
    assert len(alarms) == 2  # CO under its line
    assert (gas.value, gas.severity) == (12.0, pb.SEVERITY_MAJOR)
    assert (water.value, water.threshold) == (2.0, 1.5)
    clock.advance(60)
    cover = await well.report(h2s_ppm=25.0)  # twice the threshold: CRITICAL
    assert dict(cover.state.gases) == {"h2s_ppm": 25.0, "co_ppm": 3.0}
    assert cover.state.water_level_m == 2.0  # not reported: kept
    (gas,) = _open(await well.alarms(), pb.ALARM_CONDITION_GAS_H2S)
    assert (gas.value, gas.severity, gas.update_count) == (25.0, pb.SEVERITY_CRITICAL, 1)
    clock.advance(60)
    await well.report(h2s_ppm=9.5, water_level_m=1.4)  # in the hold bands: nothing
    assert not any(alarm.cleared for alarm in await well.alarms())
    clock.advance(60)
    await well.report(h2s_ppm=2.0, water_level_m=0.5)
    assert all(alarm.cleared for alarm in await well.alarms())
    events = await well.events()
    assert [kind for kind, _ in events] == [
        "manholes.alarm.raised",  # water (rule order: water before gases)
        "manholes.alarm.raised",
        "manholes.water.level_exceeded",
        "manholes.gas.exceeded",
        "manholes.alarm.updated",
        "manholes.alarm.cleared",
        "manholes.alarm.cleared",
    ]
    assert events[3][1].condition == pb.ALARM_CONDITION_GAS_H2S


@pytest.mark.req("MAN-2")
async def test_a_low_battery_raises_once_and_clears_when_charged(well, clock):
    await well.cover()
    cover = await well.report(battery_v=3.1, rsrp_dbm=-95.0, temperature_c=14.5)
    assert (cover.state.battery_v, cover.state.rsrp_dbm, cover.state.temperature_c) == (3.1, -95.0, 14.5)
    clock.advance(60)
    await well.report(battery_v=3.2)  # lower is worse for a battery: updated
    clock.advance(60)
    await well.report(battery_v=3.5)  # above the line, inside the margin (3.63): still open
    (alarm,) = await well.alarms()
    assert (alarm.condition, alarm.value, alarm.cleared) == (pb.ALARM_CONDITION_BATTERY_LOW, 3.1, False)
    clock.advance(60)
    await well.report(battery_v=3.7)
    assert (await well.alarms())[0].cleared
    assert await well.event_types() == [
        "manholes.alarm.raised",
        "manholes.battery.low",
        "manholes.alarm.cleared",
    ]


@pytest.mark.req("MAN-2")
async def test_a_silent_terminal_misses_its_heartbeat_and_is_cleared_when_heard_again(well, clock):
    timeout = duration_pb2.Duration(seconds=600)
    await well.cover(thresholds=pb.Thresholds(heartbeat_timeout=timeout))
    await well.cover("xa-0002", device="mt-2")  # never heard: decides nothing
    await well.report(battery_v=3.6)
    clock.advance(600)
    assert await well.app.heartbeat.step() == 0  # exactly at the timeout: not yet
    clock.advance(1)
    assert await well.app.heartbeat.step() == 1
    assert await well.app.heartbeat.step() == 0  # once
    cover = await well.get()
    assert cover.state.heartbeat_missed
    (alarm,) = await well.alarms()
    assert (alarm.condition, alarm.value, alarm.threshold) == (pb.ALARM_CONDITION_HEARTBEAT_MISSED, 601, 600)
    assert await well.alarms("xa-0002") == []
    cover = await well.report(battery_v=3.6)  # heard again
    assert not cover.state.heartbeat_missed
    (alarm,) = await well.alarms()
    assert alarm.cleared
    assert await well.event_types() == [
        "manholes.alarm.raised",
        "manholes.heartbeat.missed",
        "manholes.alarm.cleared",
    ]
    # Silent again, and only heard by the sweep: a late reading is a sign of life too.
    clock.advance(601)
    assert await well.app.heartbeat.step() == 1  # reopened
    assert (await well.get()).state.heartbeat_missed
    await well.report(at=clock.now() - timedelta(hours=1), battery_v=3.6)
    assert await well.app.heartbeat.step() == 1  # cleared by the sweep
    assert not (await well.get()).state.heartbeat_missed
    assert (await well.event_types())[3:] == [
        "manholes.alarm.reopened",
        "manholes.heartbeat.missed",
        "manholes.alarm.cleared",
    ]


@pytest.mark.req("MAN-2")
async def test_a_late_reading_changes_nothing_but_the_heard_time(well, clock):
    await well.cover()
    start = clock.now()
    await well.report(tilt_deg=0.0, open=0.0)
    clock.advance(60)
    await well.report(at=start + timedelta(seconds=60), tilt_deg=1.0, open=0.0)
    clock.advance(60)
    # A gateway flushes its buffer: a tilted, open lid measured at +30 s arrives last.
    cover = await well.report(at=start + timedelta(seconds=30), tilt_deg=50.0, open=1.0, h2s_ppm=90.0)
    assert _at(cover.state.heard_time) == clock.now()
    assert _at(cover.state.reading_time) == start + timedelta(seconds=60)
    assert (cover.state.tilt_deg, cover.state.open, dict(cover.state.gases)) == (1.0, False, {})
    # The same measured time again is not newer either.
    clock.advance(5)
    await well.report(at=start + timedelta(seconds=60), tilt_deg=50.0)
    assert (await well.get()).state.tilt_deg == 1.0
    assert await well.alarms() == []
    assert await well.event_types() == []


async def _work_order(well, start: datetime, end: datetime) -> None:
    async with well.app.db.transaction() as tx:
        tx.session.add(
            WorkOrderRow(
                work_order_id="wo-1",
                cover_id="xa-0001",
                kind=pb.WORK_ORDER_KIND_INSPECTION,
                assignee_organization="drainage",
                planned_start_time=start,
                planned_end_time=end,
                status=pb.WORK_ORDER_STATUS_PLANNED,
                alarm_ids=[],
                description="yearly inspection",
                history=[],
                created_by="users/wei",
                etag="e1",
                create_time=tx.now,
                update_time=tx.now,
            )
        )


@pytest.mark.req("MAN-3")
async def test_an_opening_inside_a_work_orders_window_is_maintenance_and_outside_it_an_alarm(well, clock):
    await well.cover()
    now = clock.now()
    await _work_order(well, now - timedelta(minutes=10), now + timedelta(hours=1))
    await well.report(open=0.0)
    clock.advance(60)
    cover = await well.report(open=1.0)
    assert cover.state.open
    assert await well.alarms() == []
    clock.advance(60)
    await well.report(open=1.0)  # still open during the works: recorded once
    (event,) = await well.events()
    assert event[0] == "manholes.maintenance.authorized_open"
    assert (event[1].work_order, event[1].condition) == ("workOrders/wo-1", pb.ALARM_CONDITION_OPEN)
    assert event[1].cover.state.open
    clock.advance(60)
    await well.report(open=0.0)
    # The same opening after the window: suspected theft.
    clock.advance(hours=2)
    await well.report(open=1.0)
    (alarm,) = await well.alarms()
    assert (alarm.condition, alarm.severity) == (pb.ALARM_CONDITION_OPEN, pb.SEVERITY_CRITICAL)
    assert (await well.event_types())[1:] == ["manholes.alarm.raised", "manholes.cover.opened"]


async def test_without_a_devices_endpoint_or_a_secret_the_service_does_not_follow(
    database_url, tmp_path, caplog
):
    app = ManholesApp(load_settings(var_dir=tmp_path), database_url=database_url, run_tasks=False)
    await app.start()
    try:
        assert app.follower is None
        assert app.heartbeat is None
        assert "CITYOS_ENDPOINTS with 'devices' and CITYOS_AUTH_CLIENT_SECRET not set" in caplog.text
    finally:
        await app.stop()
