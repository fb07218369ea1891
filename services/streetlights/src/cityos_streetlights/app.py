"""The streetlights service process: database, servicers, and the loops that run once per replica (the
feed follower, the heartbeat sweep, the schedule applier)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from cityos.streetlights.v1 import (
    control_pb2,
    control_pb2_grpc,
    energy_pb2,
    energy_pb2_grpc,
    faults_pb2,
    faults_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    ngsild_pb2,
    ngsild_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
)
from cityos_platform import feeds
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount
from cityos_streetlights.applier import ScheduleApplier
from cityos_streetlights.control import ControlServicer
from cityos_streetlights.devices import DeviceJobs
from cityos_streetlights.energy import EnergyServicer
from cityos_streetlights.faults import FaultServicer
from cityos_streetlights.inventory import InventoryServicer
from cityos_streetlights.models import Base
from cityos_streetlights.ngsild_service import NgsiLdServicer
from cityos_streetlights.schedules import ScheduleServicer
from cityos_streetlights.settings import StreetlightsSettings
from cityos_streetlights.state import Heartbeat
from cityos_streetlights.telemetry import telemetry_follower

NAME = "streetlights"
CHAIN = service_chain("cityos_streetlights", Base.metadata)


class StreetlightsApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        streetlights_settings: StreetlightsSettings | None = None,
        run_tasks: bool = True,
        jobs_channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.settings = settings
        self.streetlights_settings = streetlights_settings or StreetlightsSettings()
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.db: Database | None = None
        # Tests drive the heartbeat sweep and the schedule applier themselves (`tick()`).
        self.run_tasks = run_tasks
        # A channel to the devices service carrying this service's token (tests hand one in); by
        # default made from CITYOS_ENDPOINTS and the client secret, when both are set.
        self._jobs_channel = jobs_channel
        self.jobs: DeviceJobs | None = None
        self.follower: feeds.TelemetryFollower | None = None
        self.heartbeat: Heartbeat | None = None
        self.applier: ScheduleApplier | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        sl = self.streetlights_settings
        channel = self._jobs_channel or feeds.feed_channel(
            self.settings,
            NAME,
            [sl.controller_type, sl.cabinet_type],
            without="lights cannot be switched, dimmed or scheduled (no devices jobs)",
            clock=self.clock,
        )
        if channel is not None:
            self.jobs = DeviceJobs(channel, owned=self._jobs_channel is None)
        if self.settings.runs_singletons:  # once per replica (CITYOS_WORKERS)
            self.follower = telemetry_follower(db, self.settings, sl, clock=self.clock)
            if self.follower is not None:
                self.follower.start()
                self.heartbeat = Heartbeat(db, sl)
                if self.run_tasks:
                    self.heartbeat.start()
            if sl.apply_schedules:
                self.applier = ScheduleApplier(db, self.jobs, sl)
                if self.run_tasks:
                    self.applier.start()
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        areas = AreaRegistry.default()

        def tokens() -> PageTokens:
            return PageTokens(secret, clock=self.clock)

        return [
            Mount(
                descriptor=inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
                servicer=InventoryServicer(db, tokens(), areas, sl),
                add_to_server=inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
            ),
            Mount(
                descriptor=schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
                servicer=ScheduleServicer(db, tokens()),
                add_to_server=schedules_pb2_grpc.add_ScheduleServiceServicer_to_server,
            ),
            Mount(
                descriptor=control_pb2.DESCRIPTOR.services_by_name["ControlService"],
                servicer=ControlServicer(db, tokens(), areas, self.jobs, sl),
                add_to_server=control_pb2_grpc.add_ControlServiceServicer_to_server,
            ),
            Mount(
                descriptor=faults_pb2.DESCRIPTOR.services_by_name["FaultService"],
                servicer=FaultServicer(
                    db, tokens(), areas, poll_interval_s=self.settings.events_poll_interval_s
                ),
                add_to_server=faults_pb2_grpc.add_FaultServiceServicer_to_server,
            ),
            Mount(
                descriptor=energy_pb2.DESCRIPTOR.services_by_name["EnergyService"],
                servicer=EnergyServicer(db),
                add_to_server=energy_pb2_grpc.add_EnergyServiceServicer_to_server,
            ),
            Mount(
                descriptor=ngsild_pb2.DESCRIPTOR.services_by_name["NgsiLdService"],
                servicer=NgsiLdServicer(db, tokens(), areas),
                add_to_server=ngsild_pb2_grpc.add_NgsiLdServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        for task in (self.follower, self.heartbeat, self.applier):
            if task is not None:
                await task.stop()
        if self.jobs is not None:
            await self.jobs.close()
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> StreetlightsApp:
    return StreetlightsApp(settings)
