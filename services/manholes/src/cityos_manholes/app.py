"""The manholes service process: database and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.covers import CoverServicer
from cityos_manholes.models import Base
from cityos_manholes.settings import ManholesSettings
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
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
    ) -> None:
        self.settings = settings
        self.manholes_settings = manholes_settings or ManholesSettings()
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.db: Database | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        # AlarmService and WorkOrderService are mounted once they are written.
        return [
            Mount(
                descriptor=manholes_pb2.DESCRIPTOR.services_by_name["CoverService"],
                servicer=CoverServicer(
                    db, PageTokens(secret, clock=self.clock), AreaRegistry.default(), self.manholes_settings
                ),
                add_to_server=manholes_pb2_grpc.add_CoverServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> ManholesApp:
    return ManholesApp(settings)
