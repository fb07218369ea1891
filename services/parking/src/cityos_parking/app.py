"""The parking service process: database and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from cityos.parking.v1 import (
    ngsild_pb2,
    ngsild_pb2_grpc,
    parking_pb2,
    parking_pb2_grpc,
    reservations_pb2,
    reservations_pb2_grpc,
)
from cityos_parking.availability import availability_mount
from cityos_parking.models import Base
from cityos_parking.ngsild_service import NgsiLdServicer
from cityos_parking.occupancy import SensorHeartbeat, TelemetryFollower, telemetry_follower
from cityos_parking.plates import PlatePseudonyms, PlateRetention
from cityos_parking.registry import ParkingServicer
from cityos_parking.reservations import ReservationServicer, Sweeper
from cityos_parking.sessions import SessionServicer
from cityos_parking.settings import ParkingSettings
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount

NAME = "parking"
CHAIN = service_chain("cityos_parking", Base.metadata)


class ParkingApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        parking_settings: ParkingSettings | None = None,
        run_tasks: bool = True,
    ) -> None:
        self.settings = settings
        self.parking_settings = parking_settings or ParkingSettings()
        self.run_tasks = run_tasks  # tests drive the sweep and the plate retention themselves
        self.sweeper: Sweeper | None = None
        self.plate_retention: PlateRetention | None = None
        self.follower: TelemetryFollower | None = None  # occupancy from the devices telemetry feed
        self.heartbeat: SensorHeartbeat | None = None
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.db: Database | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        pseudonyms = PlatePseudonyms.from_settings(self.parking_settings, Path(self.settings.var_dir))
        self.sweeper = Sweeper(db, self.parking_settings.sweep_interval_s)
        self.plate_retention = PlateRetention(db, timedelta(days=self.parking_settings.plate_retention_days))
        # Background work runs once per replica (in its first worker when it serves several).
        singletons = self.run_tasks and self.settings.runs_singletons
        if singletons:
            self.sweeper.start()
            self.plate_retention.start()
        hold_grace = timedelta(seconds=self.parking_settings.hold_grace_s)
        heartbeat_timeout = timedelta(seconds=self.parking_settings.sensor_heartbeat_timeout_s)
        self.follower = (
            telemetry_follower(db, self.settings, self.parking_settings, clock=self.clock)
            if self.settings.runs_singletons
            else None
        )
        if self.follower is not None:
            self.follower.start()
            self.heartbeat = SensorHeartbeat(
                db, heartbeat_timeout, self.parking_settings.heartbeat_check_interval_s
            )
            if singletons:
                self.heartbeat.start()
        return [
            Mount(
                descriptor=reservations_pb2.DESCRIPTOR.services_by_name["ReservationService"],
                servicer=ReservationServicer(db, PageTokens(secret), pseudonyms, hold_grace),
                add_to_server=reservations_pb2_grpc.add_ReservationServiceServicer_to_server,
            ),
            Mount(
                descriptor=reservations_pb2.DESCRIPTOR.services_by_name["SessionService"],
                servicer=SessionServicer(db, PageTokens(secret), pseudonyms),
                add_to_server=reservations_pb2_grpc.add_SessionServiceServicer_to_server,
            ),
            Mount(
                descriptor=parking_pb2.DESCRIPTOR.services_by_name["ParkingService"],
                servicer=ParkingServicer(
                    db, PageTokens(secret), AreaRegistry.default(), sensor_heartbeat_timeout=heartbeat_timeout
                ),
                add_to_server=parking_pb2_grpc.add_ParkingServiceServicer_to_server,
            ),
            availability_mount(
                db, AreaRegistry.default(), poll_interval_s=self.settings.events_poll_interval_s
            ),
            Mount(
                descriptor=ngsild_pb2.DESCRIPTOR.services_by_name["NgsiLdService"],
                servicer=NgsiLdServicer(db, PageTokens(secret), AreaRegistry.default()),
                add_to_server=ngsild_pb2_grpc.add_NgsiLdServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        for task in (self.follower, self.heartbeat, self.sweeper, self.plate_retention):
            if task is not None:
                await task.stop()
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> ParkingApp:
    return ParkingApp(settings)
