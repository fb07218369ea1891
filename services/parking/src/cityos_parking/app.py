"""The parking service process: database and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cityos.parking.v1 import parking_pb2, parking_pb2_grpc
from cityos_parking.models import Base
from cityos_parking.registry import ParkingServicer
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
        self, settings: Settings, *, database_url: str | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.db: Database | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        return [
            Mount(
                descriptor=parking_pb2.DESCRIPTOR.services_by_name["ParkingService"],
                servicer=ParkingServicer(db, PageTokens(secret), AreaRegistry.default()),
                add_to_server=parking_pb2_grpc.add_ParkingServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> ParkingApp:
    return ParkingApp(settings)
