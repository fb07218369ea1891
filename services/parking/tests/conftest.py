"""Fixtures for the parking service: a running service on SQLite and on PostgreSQL, and callers."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import grpc
import pytest

from cityos.common.v1 import resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc
from cityos_parking.app import ParkingApp
from cityos_parking.settings import ParkingSettings
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer

CENTER = (39.05, 115.95)


class Lot:
    """A running parking service and ready-made callers."""

    def __init__(self, server, app, channel, mint):
        self.server, self.app, self.channel, self._mint = server, app, channel, mint
        self.parking = parking_pb2_grpc.ParkingServiceStub(channel)
        self.operator = self.token("users/olga", "transport", "operator")
        self.other_org = self.token("users/uma", "utilities", "operator")
        self.citizen = self.token("users/cai", "public", "citizen")

    def token(self, subject, organization, *roles):
        return bearer(self._mint(subject, organization, list(roles)))

    @staticmethod
    def tariff(**fields) -> parking_pb2.Tariff:
        base = {
            "price_per_minute": "0.05",
            "currency": "CNY",
            "time_zone": "Asia/Shanghai",
            "free_minutes": 15,
        }
        return parking_pb2.Tariff(**{**base, **fields})

    async def site(self, site_id="rongdong-a", **fields):
        site = parking_pb2.Site(
            display_name=fields.pop("display_name", "Rongdong Avenue A"),
            kind=fields.pop("kind", parking_pb2.SITE_KIND_ON_STREET),
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1]),
            detection_type=fields.pop("detection_type", parking_pb2.DETECTION_TYPE_SINGLE_SPACE),
            allowed_vehicle_types=["car"],
            tariff=fields.pop("tariff", self.tariff()),
            **fields,
        )
        return await self.parking.CreateSite(
            parking_pb2.CreateSiteRequest(site=site, site_id=site_id), metadata=self.operator, timeout=10
        )

    async def spot(self, spot_id, site="sites/rongdong-a", **fields):
        spot = parking_pb2.Spot(
            display_name=fields.pop("display_name", spot_id.upper()),
            site=site,
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1] + 0.0001),
            **fields,
        )
        return await self.parking.CreateSpot(
            parking_pb2.CreateSpotRequest(spot=spot, spot_id=spot_id), metadata=self.operator, timeout=10
        )


@pytest.fixture
async def lot(start_server, database_url, mint, tmp_path):
    app = ParkingApp(load_settings(var_dir=tmp_path, events_poll_interval_s=0.1), database_url=database_url)
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    yield Lot(server, app, channel, mint)
    await channel.close()
    await server.stop(grace=0)  # no handler is left running on a closed database
    await app.stop()


# -- a service on a manual clock (reservations, sessions, plates) ---------------------------------------

MONDAY_0900_SHANGHAI = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
def clocked_service(start_server, database_url, tmp_path):
    """`async with clocked_service(**parking_settings) as (app, channel, clock)`: the service on a
    ManualClock at Monday 09:00 in Asia/Shanghai, its background tasks left to the test."""

    @contextlib.asynccontextmanager
    async def running(**parking_settings):
        clock = ManualClock(MONDAY_0900_SHANGHAI)
        app = ParkingApp(
            load_settings(var_dir=tmp_path, events_poll_interval_s=0.1),
            database_url=database_url,
            clock=clock,
            parking_settings=ParkingSettings(**parking_settings),
            run_tasks=False,
        )
        server = await start_server(await app.start())
        channel = grpc.aio.insecure_channel(server.address)
        try:
            yield app, channel, clock
        finally:
            await channel.close()
            await server.stop(grace=0)  # no handler is left running on a closed database
            await app.stop()

    return running
