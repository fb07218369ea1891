"""The datashare service process: database, catalog sync, receipts, the lake, the HTTP listener (NGSI-LD
API and embedded extract downloads) and the expiry sweep."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.access import AccessServicer, Exports
from cityos_datashare.agreements import AgreementServicer, expiry_sweep
from cityos_datashare.catalog import CatalogServicer, sync_registry
from cityos_datashare.http import HttpServer, NgsiLdGateway
from cityos_datashare.live import LIVE_VIEWS
from cityos_datashare.models import Base
from cityos_datashare.opendata import OpenDataServicer
from cityos_datashare.receipts import ReceiptLog, ReceiptServicer, ReceiptSigner
from cityos_datashare.settings import DatashareSettings
from cityos_platform import peers
from cityos_platform.areas import AreaRegistry
from cityos_platform.authz import Authenticator
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.lake import Lake, LakeSettings
from cityos_platform.lake.tables import all_tables
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount
from cityos_platform.tasks import PeriodicTask

NAME = "datashare"
CHAIN = service_chain("cityos_datashare", Base.metadata)
log = logging.getLogger(__name__)


class DatashareApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        datashare_settings: DatashareSettings | None = None,
        lake: Lake | None = None,
        authenticator: Authenticator | None = None,
        live_channels: Mapping[str, grpc.aio.Channel] | None = None,
        run_tasks: bool = True,
    ) -> None:
        self.settings = settings
        self.datashare_settings = datashare_settings or DatashareSettings()
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.lake = lake or Lake.from_settings(LakeSettings(), settings.var_dir)
        self._authenticator = authenticator
        # Channels to the services whose NGSI-LD views are served, carrying this service's token (tests
        # hand them in); by default made from CITYOS_ENDPOINTS and the client secret.
        self._live_channels = dict(live_channels) if live_channels is not None else None
        self._owned_channels: list[grpc.aio.Channel] = []
        self.run_tasks = run_tasks
        self.db: Database | None = None
        self.receipts: ReceiptLog | None = None
        self.exports: Exports | None = None
        self.http: HttpServer | None = None
        self.http_url = ""
        self.sweep: PeriodicTask | None = None
        self.open_data: OpenDataServicer | None = None

    def _channels(self) -> dict[str, grpc.aio.Channel]:
        if self._live_channels is not None:
            return self._live_channels
        tokens = peers.client_credentials(self.settings, NAME, clock=self.clock)
        wanted = self.datashare_settings.live_view_services
        missing = [name for name in wanted if name not in self.settings.endpoints]
        if tokens is None or missing:
            log.warning(
                "NGSI-LD live views of %s are not served: %s",
                ", ".join(wanted),
                "no client secret (CITYOS_AUTH_CLIENT_SECRET)"
                if tokens is None
                else f"no endpoint for {missing}",
            )
            return {}
        channels = {name: peers.peer_channel(self.settings, name, tokens) for name in wanted}
        self._owned_channels = list(channels.values())
        return channels

    def _secret(self, purpose: bytes) -> bytes:
        base = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        return hmac.new(base, purpose, hashlib.sha256).digest()

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        ds = self.datashare_settings
        added, updated = await sync_registry(db, all_tables().values(), LIVE_VIEWS)
        log.info("catalog: %d dataset(s) registered, %d updated from the installed registry", added, updated)
        signer = ReceiptSigner.from_settings(
            ds, Path(self.settings.var_dir), self.settings.mode == "production"
        )
        receipts = self.receipts = ReceiptLog(db, signer)
        exports = self.exports = Exports(db, self.lake, self._secret(b"datashare-exports"))
        areas = AreaRegistry.default()
        page_secret = self._secret(b"datashare-page-tokens")

        def tokens() -> PageTokens:
            return PageTokens(page_secret, clock=self.clock)

        authenticator = self._authenticator or Authenticator.from_settings(self.settings, clock=self.clock)
        gateway = NgsiLdGateway(db, areas, authenticator, self._channels(), receipts.append, clock=self.clock)
        self.http = HttpServer(ds.http_host, ds.http_port)
        self.http.app.add_routes(gateway.routes())
        self.http.app.add_routes(exports.routes())
        self.http_url = await self.http.start(fallback_to_free_port=self.settings.mode == "embedded")
        exports.base_url = ds.public_url.rstrip("/") or self.http_url
        _write_url(Path(self.settings.var_dir) / "datashare-http-url", exports.base_url)
        log.info("datashare HTTP (NGSI-LD, extract downloads) at %s", exports.base_url)
        self.open_data = OpenDataServicer(db, self.lake, receipts, tokens(), ds)
        if self.settings.runs_singletons:
            self.sweep = expiry_sweep(db, ds.expiry_sweep_s, exports.delete_for)
            if self.run_tasks:
                self.sweep.start()
        return [
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["CatalogService"],
                servicer=CatalogServicer(db, tokens()),
                add_to_server=datashare_pb2_grpc.add_CatalogServiceServicer_to_server,
            ),
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["AgreementService"],
                servicer=AgreementServicer(db, tokens(), areas, exports.delete_for),
                add_to_server=datashare_pb2_grpc.add_AgreementServiceServicer_to_server,
            ),
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["AccessService"],
                servicer=AccessServicer(db, self.lake, areas, receipts, exports, ds),
                add_to_server=datashare_pb2_grpc.add_AccessServiceServicer_to_server,
            ),
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["ReceiptService"],
                servicer=ReceiptServicer(receipts, tokens()),
                add_to_server=datashare_pb2_grpc.add_ReceiptServiceServicer_to_server,
            ),
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["OpenDataService"],
                servicer=self.open_data,
                add_to_server=datashare_pb2_grpc.add_OpenDataServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=self.settings.events_poll_interval_s),
        ]

    async def stop(self) -> None:
        if self.sweep is not None:
            await self.sweep.stop()
        if self.http is not None:
            await self.http.stop()
        for channel in self._owned_channels:
            await channel.close()
        if self.db is not None:
            await self.db.close()


def _write_url(path: Path, url: str) -> None:
    """Where the HTTP listener answers, for tools run beside the embedded city (a few bytes, at start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url)


def create(settings: Settings) -> DatashareApp:
    return DatashareApp(settings)
