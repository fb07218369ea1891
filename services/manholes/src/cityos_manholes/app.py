"""The manholes service process: database and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.alarms import AlarmServicer
from cityos_manholes.covers import CoverServicer
from cityos_manholes.models import Base
from cityos_manholes.risk import HistoryScorer
from cityos_manholes.settings import ManholesSettings
from cityos_manholes.state import Heartbeat
from cityos_manholes.telemetry import telemetry_follower
from cityos_manholes.work_orders import WorkOrderServicer
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.feeds import TelemetryFollower
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount

NAME = "manholes"
CHAIN = service_chain("cityos_manholes", Base.metadata)


class ManholesApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        manholes_settings: ManholesSettings | None = None,
        run_tasks: bool = True,
    ) -> None:
        self.settings = settings
        self.manholes_settings = manholes_settings or ManholesSettings()
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.db: Database | None = None
        self.run_tasks = run_tasks  # tests drive the heartbeat sweep themselves
        self.follower: TelemetryFollower | None = None  # live state and alarms from the devices feed
        self.heartbeat: Heartbeat | None = None
        self.history_scorer: HistoryScorer | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        self.history_scorer = HistoryScorer(db, self.manholes_settings.history_interval_s)
        if self.settings.runs_singletons:  # once per replica (CITYOS_WORKERS)
            self.history_scorer.start()
        if self.settings.runs_singletons:  # the feed is followed once per replica
            self.follower = telemetry_follower(db, self.settings, self.manholes_settings, clock=self.clock)
        if self.follower is not None:
            self.follower.start()
            self.heartbeat = Heartbeat(db, self.manholes_settings.heartbeat_check_interval_s)
            if self.run_tasks:
                self.heartbeat.start()
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        return [
            Mount(
                descriptor=manholes_pb2.DESCRIPTOR.services_by_name["CoverService"],
                servicer=CoverServicer(
                    db, PageTokens(secret, clock=self.clock), AreaRegistry.default(), self.manholes_settings
                ),
                add_to_server=manholes_pb2_grpc.add_CoverServiceServicer_to_server,
            ),
            Mount(
                descriptor=manholes_pb2.DESCRIPTOR.services_by_name["AlarmService"],
                servicer=AlarmServicer(
                    db,
                    PageTokens(secret, clock=self.clock),
                    AreaRegistry.default(),
                    poll_interval_s=self.settings.events_poll_interval_s,
                ),
                add_to_server=manholes_pb2_grpc.add_AlarmServiceServicer_to_server,
            ),
            Mount(
                descriptor=manholes_pb2.DESCRIPTOR.services_by_name["WorkOrderService"],
                servicer=WorkOrderServicer(db, PageTokens(secret, clock=self.clock)),
                add_to_server=manholes_pb2_grpc.add_WorkOrderServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        for task in (self.follower, self.heartbeat):
            if task is not None:
                await task.stop()
        if self.history_scorer is not None:
            await self.history_scorer.stop()
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> ManholesApp:
    return ManholesApp(settings)
