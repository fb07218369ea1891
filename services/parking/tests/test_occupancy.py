"""PRK-2: spot occupancy derived live from the devices telemetry feed.

A real devices service (on SQLite) and a real parking service (on SQLite and on PostgreSQL) run
in-process on ephemeral ports. Sensors report as themselves with their device tokens; the parking
service follows the feed as its own client `cityos-parking`, with a token from the development issuer's
client-credentials endpoint. Both services share one ManualClock, so a missed heartbeat is a clock
move, not a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cityos.common.v1 import events_pb2, events_pb2_grpc, resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc
from cityos_devices.testing import running_fleet
from cityos_parking.app import ParkingApp
from cityos_parking.models import FeedCursorRow
from cityos_parking.occupancy import FEED
from cityos_parking.settings import ParkingSettings
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.waiting import eventually

CLIENT_SECRET = "parking-client-secret-for-tests-0123456789"
CENTER = (39.05, 115.95)
SENSOR_METRICS = {"occupied": ("1", 0, 1), "forbidden_parking": ("1", 0, 1), "battery_v": ("V", 0, 4.2)}
TIMEOUT_S = 600  # the sensors' heartbeat timeout in these tests
CRUD_EVENTS = ("parking.spot.created", "parking.spot.updated")
FREE, OCCUPIED = parking_pb2.SPOT_STATUS_FREE, parking_pb2.SPOT_STATUS_OCCUPIED
CLOSED, UNKNOWN = parking_pb2.SPOT_STATUS_CLOSED, parking_pb2.SPOT_STATUS_UNKNOWN


class Parking:
    """One parking service process (app, server, callers)."""

    def __init__(self, server, app, channel, mint):
        self.server, self.app, self.channel = server, app, channel
        self.parking = parking_pb2_grpc.ParkingServiceStub(channel)
        self.events_stub = events_pb2_grpc.EventServiceStub(channel)
        self.operator = bearer(mint("users/olga", "transport", ["operator"]))

    async def site(self, site_id="rongdong-a"):
        site = parking_pb2.Site(
            display_name="Rongdong Avenue A",
            kind=parking_pb2.SITE_KIND_ON_STREET,
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
            allowed_vehicle_types=["car"],
            tariff=parking_pb2.Tariff(price_per_minute="0.05", currency="CNY", time_zone="Asia/Shanghai"),
        )
        await self.parking.CreateSite(
            parking_pb2.CreateSiteRequest(site=site, site_id=site_id), metadata=self.operator, timeout=10
        )

    async def spot(self, spot_id: str, sensor: str = "", site="sites/rongdong-a") -> parking_pb2.Spot:
        spot = parking_pb2.Spot(
            display_name=spot_id.upper(),
            site=site,
            sensor=f"devices/{sensor}" if sensor else "",
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1] + 0.0001),
        )
        return await self.parking.CreateSpot(
            parking_pb2.CreateSpotRequest(spot=spot, spot_id=spot_id), metadata=self.operator, timeout=10
        )

    async def get(self, spot_id: str) -> parking_pb2.Spot:
        return await self.parking.GetSpot(
            parking_pb2.GetSpotRequest(name=f"spots/{spot_id}"), metadata=self.operator, timeout=10
        )

    async def until(self, spot_id: str, ready: Callable[[parking_pb2.Spot], bool]) -> parking_pb2.Spot:
        return await eventually(lambda: self.get(spot_id), ready)

    async def set_status(self, spot_id: str, status: int, reason: str = "") -> parking_pb2.Spot:
        return await self.parking.SetSpotStatus(
            parking_pb2.SetSpotStatusRequest(name=f"spots/{spot_id}", status=status, reason=reason),
            metadata=self.operator,
            timeout=10,
        )

    async def events(self, prefix: str = "parking.spot.") -> list[events_pb2.Event]:
        found = []
        async for batch in self.events_stub.StreamEvents(
            events_pb2.StreamEventsRequest(type_prefixes=[prefix]), metadata=self.operator, timeout=10
        ):
            found.extend(batch.events)
        return found

    async def status_events(self, spot_id: str) -> list[tuple[str, int, str, timedelta]]:
        """(type, previous status, source, previous duration) of each status change of the spot."""
        changes = []
        for event in await self.events():
            if event.subject != f"spots/{spot_id}" or event.type in CRUD_EVENTS:
                continue
            changed = parking_pb2.SpotStatusChanged()
            assert event.payload.Unpack(changed)
            changes.append(
                (event.type, changed.previous_status, changed.source, changed.previous_duration.ToTimedelta())
            )
        return changes


@pytest.fixture
def clock():
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def devices(start_server, dev_issuer, mint, tmp_path, clock):
    async with running_fleet(start_server, dev_issuer, mint, tmp_path / "devices", clock) as fleet:
        await fleet.model("geomag", "parking.sensor", SENSOR_METRICS)
        for sensor in ("pk-1", "pk-2", "pk-9"):
            await fleet.device(sensor, "geomag", CENTER)
        yield fleet


@pytest.fixture
async def start_parking(start_server, dev_issuer, mint, tmp_path, clock, database_url, devices):
    """`await start_parking(run_tasks=False, **parking_settings)`: a parking service following the
    devices feed (a second call is a restart on the same database)."""
    dev_issuer.issuer.register_client("cityos-parking", CLIENT_SECRET)
    started: list[Parking] = []

    async def start(run_tasks: bool = False, **overrides: Any) -> Parking:
        settings = load_settings(
            var_dir=tmp_path / "parking",
            events_poll_interval_s=0.05,
            endpoints={"devices": devices.server.address},
            auth_issuer=dev_issuer.issuer_url,
            auth_client_secret=CLIENT_SECRET,
        )
        parking_settings = ParkingSettings(
            **{"sensor_heartbeat_timeout_s": TIMEOUT_S, "feed_retry_s": 0.05, **overrides}
        )
        app = ParkingApp(
            settings,
            database_url=database_url,
            clock=clock,
            parking_settings=parking_settings,
            run_tasks=run_tasks,
        )
        mounts = await app.start()
        server = await start_server(mounts)
        parking = Parking(server, app, grpc.aio.insecure_channel(server.address), mint)
        started.append(parking)
        return parking

    yield start
    for parking in started:
        await parking.channel.close()
        await parking.server.stop(grace=0)  # no handler is left running on a closed database
        await parking.app.stop()


@pytest.fixture
async def lot(start_parking):
    """A parking service following the feed, with a site and spots a-1 (watched by pk-1) and a-2 (pk-2)."""
    parking = await start_parking()
    await parking.site()
    await parking.spot("a-1", sensor="pk-1")
    await parking.spot("a-2", sensor="pk-2")
    return parking


@pytest.mark.req("PRK-2")
async def test_a_sensor_reading_occupies_and_vacates_its_spot_with_events_and_the_stay(lot, devices, clock):
    assert (await lot.get("a-1")).status == UNKNOWN  # no reading yet
    await devices.report("pk-1", occupied=1.0, battery_v=3.6)
    occupied = await lot.until("a-1", lambda spot: spot.status == OCCUPIED)
    assert occupied.sensor_heard_time.ToDatetime(tzinfo=UTC) == clock.now()
    assert lot.app.follower is not None
    clock.advance(minutes=47)
    await devices.report("pk-1", occupied=0.0)
    vacated = await lot.until("a-1", lambda spot: spot.status == FREE)
    assert vacated.status_time.ToDatetime(tzinfo=UTC) == clock.now()
    assert await lot.status_events("a-1") == [
        ("parking.spot.occupied", UNKNOWN, "sensor", timedelta(0)),
        ("parking.spot.vacated", OCCUPIED, "sensor", timedelta(minutes=47)),  # the stay
    ]
    assert (await lot.get("a-2")).status == UNKNOWN  # the other spot's sensor said nothing


@pytest.mark.req("PRK-2")
async def test_a_late_out_of_order_reading_never_flips_a_spot_back(lot, devices, clock):
    start = clock.now()
    await devices.report("pk-1", at=start, occupied=1.0)
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)
    clock.advance(60)
    await devices.report("pk-1", at=start + timedelta(seconds=60), occupied=0.0)
    await lot.until("a-1", lambda spot: spot.status == FREE)
    # A gateway flushes its buffer: "occupied", measured at +30 s, arrives later with a newer sequence.
    clock.advance(60)
    await devices.report("pk-1", at=start + timedelta(seconds=30), occupied=1.0)
    heard = clock.now()
    spot = await lot.until("a-1", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == heard)
    assert spot.status == FREE  # heard (a sign of life), but not believed
    # The same measured time again is not newer either.
    clock.advance(5)
    await devices.report("pk-1", at=start + timedelta(seconds=60), occupied=1.0)
    heard = clock.now()
    spot = await lot.until("a-1", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == heard)
    assert spot.status == FREE
    assert [change[0] for change in await lot.status_events("a-1")] == [
        "parking.spot.occupied",
        "parking.spot.vacated",
    ]


@pytest.mark.req("PRK-2")
async def test_a_missed_heartbeat_makes_a_spot_unknown_and_a_fresh_reading_brings_it_back(
    start_parking, devices, clock
):
    # The periodic check runs for real (every 50 ms); only the clock is moved.
    lot = await start_parking(run_tasks=True, heartbeat_check_interval_s=0.05)
    await lot.site()
    await lot.spot("a-1", sensor="pk-1")
    await lot.spot("a-2", sensor="pk-2")
    await devices.report("pk-1", occupied=1.0)
    await devices.report("pk-2", occupied=0.0)
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)
    await lot.until("a-2", lambda spot: spot.status == FREE)
    clock.advance(TIMEOUT_S - 100)
    await devices.report("pk-2", battery_v=3.5)  # a heartbeat without news keeps a-2 alive
    await lot.until("a-2", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == clock.now())
    clock.advance(101)  # pk-1 silent for TIMEOUT_S + 1 s; pk-2 for 101 s
    await lot.until("a-1", lambda spot: spot.status == UNKNOWN)
    assert (await lot.get("a-2")).status == FREE
    assert (await lot.status_events("a-1"))[-1][:3] == ("parking.spot.unknown", OCCUPIED, "heartbeat")
    # The sensor speaks again: the spot follows it.
    await devices.report("pk-1", occupied=0.0)
    await lot.until("a-1", lambda spot: spot.status == FREE)
    assert (await lot.status_events("a-1"))[-1][:3] == ("parking.spot.vacated", UNKNOWN, "sensor")


@pytest.mark.req("PRK-2")
async def test_a_silent_sensor_heard_again_without_news_restores_its_last_state(lot, devices, clock):
    await devices.report("pk-1", occupied=1.0)
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)
    await lot.set_status("a-2", FREE, "checked on site")  # pk-2 never reported at all
    clock.advance(TIMEOUT_S + 1)
    assert await lot.app.heartbeat.step() == 2
    assert (await lot.get("a-2")).status == UNKNOWN
    assert (await lot.get("a-1")).status == UNKNOWN
    assert await lot.app.heartbeat.step() == 0  # already unknown: no second event
    await devices.report("pk-1", battery_v=3.4)  # alive, and still sensing the car it sensed
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)


@pytest.mark.req("PRK-2")
async def test_a_restart_resumes_from_the_checkpoint_without_reapplying(start_parking, devices, clock):
    first = await start_parking()
    await first.site()
    await first.spot("a-1", sensor="pk-1")
    await devices.report("pk-1", occupied=1.0)
    await first.until("a-1", lambda spot: spot.status == OCCUPIED)
    assert first.app.follower.records == 1
    await first.app.stop()  # the process goes away; the devices service keeps accepting readings
    clock.advance(600)
    await devices.report("pk-1", occupied=0.0)
    await devices.report("pk-1", occupied=1.0, at=clock.now() - timedelta(seconds=300))  # late
    second = await start_parking()
    await second.until("a-1", lambda spot: spot.status == FREE)
    await eventually(lambda: asyncio.sleep(0, second.app.follower.records), lambda count: count == 2)
    assert [change[0] for change in await second.status_events("a-1")] == [
        "parking.spot.occupied",
        "parking.spot.vacated",
    ]
    async with second.app.db.read() as session:
        cursor = await session.get(FeedCursorRow, FEED)
    assert cursor is not None
    assert cursor.cursor


@pytest.mark.req("PRK-2")
async def test_a_closed_spot_stays_closed_and_is_handed_back_to_its_live_sensor(lot, devices, clock):
    closed = await lot.set_status("a-1", CLOSED, "road works")
    assert closed.status == CLOSED
    await devices.report("pk-1", occupied=1.0)
    heard = clock.now()
    spot = await lot.until("a-1", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == heard)
    assert spot.status == CLOSED  # remembered, not applied
    clock.advance(TIMEOUT_S + 1)
    assert await lot.app.heartbeat.step() == 0  # the heartbeat leaves a closed spot alone
    # Reopened after the sensor went silent: unknown. Heard again: what it senses.
    assert (await lot.set_status("a-1", UNKNOWN)).status == UNKNOWN
    await devices.report("pk-1", occupied=1.0)
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)
    # Closed again and handed back while the sensor is alive: its state at once.
    await lot.set_status("a-1", CLOSED, "market day")
    clock.advance(60)
    await devices.report("pk-1", occupied=0.0)
    heard = clock.now()
    await lot.until("a-1", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == heard)
    assert (await lot.get("a-1")).status == CLOSED
    handed_back = await lot.set_status("a-1", UNKNOWN)
    assert handed_back.status == FREE
    assert [change[:3] for change in await lot.status_events("a-1")][-2:] == [
        ("parking.spot.closed", OCCUPIED, "operator"),
        ("parking.spot.vacated", CLOSED, "operator"),
    ]


@pytest.mark.req("PRK-2")
async def test_a_reading_of_a_sensor_no_spot_watches_is_ignored(lot, devices, clock):
    await devices.report("pk-9", occupied=1.0)  # pk-9 watches nothing
    await devices.report("pk-1", occupied=1.0)
    await lot.until("a-1", lambda spot: spot.status == OCCUPIED)  # pk-9's reading came first on the feed
    assert lot.app.follower.records == 1
    assert (await lot.get("a-2")).status == UNKNOWN
    assert [event.subject for event in await lot.events("parking.spot.occupied")] == ["spots/a-1"]
    # Bound later, pk-9's old reading is not replayed: the spot waits for its next one.
    spot = await lot.spot("a-9")
    await lot.parking.UpdateSpot(
        parking_pb2.UpdateSpotRequest(
            spot=parking_pb2.Spot(name=spot.name, sensor="devices/pk-9"),
            update_mask=field_mask_pb2.FieldMask(paths=["sensor"]),
        ),
        metadata=lot.operator,
        timeout=10,
    )
    clock.advance(1)
    await devices.report("pk-9", occupied=0.0)
    await lot.until("a-9", lambda spot: spot.status == FREE)
    assert (await lot.status_events("a-9")) == [
        ("parking.spot.vacated", UNKNOWN, "sensor", timedelta(seconds=1))
    ]


@pytest.mark.req("PRK-2")
async def test_forbidden_parking_is_flagged_once_when_it_begins(lot, devices, clock):
    await devices.report("pk-1", occupied=1.0, forbidden_parking=1.0)
    spot = await lot.until("a-1", lambda spot: spot.forbidden_parking)
    assert spot.status == OCCUPIED
    clock.advance(30)
    await devices.report("pk-1", occupied=1.0, forbidden_parking=1.0)  # still: no second event
    clock.advance(30)
    await devices.report("pk-1", occupied=0.0, forbidden_parking=0.0)
    await lot.until("a-1", lambda spot: not spot.forbidden_parking and spot.status == FREE)
    (event,) = await lot.events("parking.forbidden_parking")
    detected = parking_pb2.ForbiddenParkingDetected()
    assert event.payload.Unpack(detected)
    assert (detected.spot.name, detected.sensor) == ("spots/a-1", "devices/pk-1")
    assert detected.time.ToDatetime(tzinfo=UTC) == clock.now() - timedelta(seconds=60)
    assert event.owner_organization == "transport"


async def test_without_a_devices_endpoint_or_a_secret_the_service_does_not_follow(
    start_server, database_url, tmp_path, caplog
):
    app = ParkingApp(load_settings(var_dir=tmp_path), database_url=database_url, run_tasks=False)
    await app.start()
    try:
        assert app.follower is None
        assert app.heartbeat is None
        assert "CITYOS_ENDPOINTS with 'devices' and CITYOS_AUTH_CLIENT_SECRET not set" in caplog.text
    finally:
        await app.stop()


@pytest.mark.req("PRK-2")
async def test_two_replicas_following_the_feed_apply_each_reading_once(start_parking, devices, clock):
    first = await start_parking()
    second = await start_parking()  # the same database: a second replica
    await first.site()
    await first.spot("a-1", sensor="pk-1")
    await first.spot("a-2", sensor="pk-2")
    for step in range(12):
        clock.advance(10)
        await devices.report("pk-1", occupied=float(step % 2 == 0))
        await devices.report("pk-2", occupied=float(step % 3 == 0))
    await first.until("a-1", lambda spot: spot.status == FREE)  # step 11: odd
    await first.until("a-2", lambda spot: spot.sensor_heard_time.ToDatetime(tzinfo=UTC) == clock.now())
    await eventually(
        lambda: asyncio.sleep(0, first.app.follower.records + second.app.follower.records),
        lambda count: count >= 24,
    )
    assert first.app.follower.records + second.app.follower.records == 24  # each reading once
    assert len(await first.status_events("a-1")) == 12  # every reading a change
    assert len(await first.status_events("a-2")) == 8  # occupied on steps 0, 3, 6, 9; free after each
