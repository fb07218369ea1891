"""The devices service process: database, servicers, and the device-token verifier."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.ca import DeviceCA
from cityos_devices.commands import CommandServicer
from cityos_devices.credentials import TOKEN_PREFIX, DeviceCertificateVerifier, DeviceTokenVerifier
from cityos_devices.hub import ConnectionHub
from cityos_devices.jobs import JobRunner, JobServicer
from cityos_devices.models import Base
from cityos_devices.mqtt import BrokerAdmin, MqttAdapter
from cityos_devices.registry import DeviceServicer
from cityos_devices.settings import DevicesSettings
from cityos_devices.telemetry import Ingestor, SpoolPruner, TelemetryServicer
from cityos_platform.areas import AreaRegistry
from cityos_platform.authz import PrefixVerifier
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount

NAME = "devices"
CHAIN = service_chain("cityos_devices", Base.metadata)


class DevicesApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        run_jobs: bool = True,
        devices_settings: DevicesSettings | None = None,
    ) -> None:
        self.devices_settings = devices_settings or DevicesSettings()
        self.adapter: MqttAdapter | None = None
        self.pruner: SpoolPruner | None = None
        self.certificate_verifier: DeviceCertificateVerifier | None = None
        self.settings = settings
        self.run_jobs = run_jobs  # tests drive the job runner and the spool pruner themselves
        self.clock = clock
        self.database_url = database_url or settings.database_url_for(NAME)
        self.db: Database | None = None
        self.jobs: JobRunner | None = None
        self.token_verifiers: dict[str, PrefixVerifier] = {}

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            Path(self.settings.var_dir) / "secrets" / "page-token.key"
        )
        tokens = DeviceTokenVerifier(db)
        self.token_verifiers = {TOKEN_PREFIX: tokens}
        ingestor = Ingestor(db)
        self.pruner = SpoolPruner(db, timedelta(hours=self.devices_settings.spool_retention_h))
        # Once-per-replica work runs in the first worker only (CITYOS_WORKERS).
        singletons = self.run_jobs and self.settings.runs_singletons
        if singletons:
            self.pruner.start()
        areas = AreaRegistry.default()
        broker = BrokerAdmin(self.devices_settings.mqtt_url) if self.devices_settings.mqtt_url else None
        var = Path(self.settings.var_dir)
        ca = DeviceCA.load_or_create(
            Path(self.devices_settings.ca_cert_file or var / "devices-ca" / "ca.pem"),
            Path(self.devices_settings.ca_key_file or var / "devices-ca" / "ca-key.pem"),
        )
        self.certificate_verifier = DeviceCertificateVerifier(db)
        hub = ConnectionHub()
        registry = DeviceServicer(db, PageTokens(secret), areas, tokens, ingestor, broker, ca, hub)
        if broker is not None and self.settings.runs_singletons:
            self.adapter = MqttAdapter(self.devices_settings.mqtt_url, broker, ingestor)
            self.adapter.start()
        self.jobs = JobRunner(db, areas)
        if singletons:
            self.jobs.start()
        poll = self.settings.events_poll_interval_s
        return [
            Mount(
                descriptor=devices_pb2.DESCRIPTOR.services_by_name["DeviceService"],
                servicer=registry,
                add_to_server=devices_pb2_grpc.add_DeviceServiceServicer_to_server,
            ),
            Mount(
                descriptor=devices_pb2.DESCRIPTOR.services_by_name["TelemetryService"],
                servicer=TelemetryServicer(db, ingestor, hub, poll_interval_s=poll),
                add_to_server=devices_pb2_grpc.add_TelemetryServiceServicer_to_server,
            ),
            Mount(
                descriptor=devices_pb2.DESCRIPTOR.services_by_name["CommandService"],
                servicer=CommandServicer(db, PageTokens(secret), hub),
                add_to_server=devices_pb2_grpc.add_CommandServiceServicer_to_server,
            ),
            Mount(
                descriptor=devices_pb2.DESCRIPTOR.services_by_name["JobService"],
                servicer=JobServicer(db, areas, self.jobs),
                add_to_server=devices_pb2_grpc.add_JobServiceServicer_to_server,
            ),
            event_stream_mount(db, poll_interval_s=poll),
        ]

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
        if self.jobs is not None:
            await self.jobs.stop()
        if self.pruner is not None:
            await self.pruner.stop()
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> DevicesApp:
    return DevicesApp(settings)
