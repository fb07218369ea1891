"""The identity service process: database, directory, token minting, servicers and background tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity.apikeys import ApiKeyServicer
from cityos_identity.audit import AccessLogImporter, AuditServicer
from cityos_identity.authorization import AuthorizationServicer
from cityos_identity.directory import Directory, EmbeddedDirectory
from cityos_identity.models import Base
from cityos_identity.organizations import ConcessionEnforcer, OrganizationServicer
from cityos_identity.people import ServiceAccountServicer, UserServicer
from cityos_identity.settings import IdentitySettings
from cityos_identity.tokens import TokenMinter
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database
from cityos_platform.events import event_stream_mount
from cityos_platform.issuer import DevIssuerServer
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens, load_or_create_secret
from cityos_platform.server import Mount

NAME = "identity"
CHAIN = service_chain("cityos_identity", Base.metadata)


def _directory(identity: IdentitySettings) -> Directory:
    if identity.directory == "keycloak":
        from cityos_identity.keycloak import KeycloakDirectory, KeycloakSettings

        return KeycloakDirectory.from_settings(KeycloakSettings())
    return EmbeddedDirectory()


class IdentityApp:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        identity_settings: IdentitySettings | None = None,
        directory: Directory | None = None,
        run_tasks: bool = True,
    ) -> None:
        self.settings = settings
        self.identity = identity_settings or IdentitySettings()
        self.database_url = database_url or settings.database_url_for(NAME)
        self.clock = clock
        self.directory = directory or _directory(self.identity)
        self.run_tasks = run_tasks  # tests drive the importer and the enforcer themselves
        self.db: Database | None = None
        self.importer: AccessLogImporter | None = None
        self.enforcer: ConcessionEnforcer | None = None
        self.minter: TokenMinter | None = None
        self.jwks_server: DevIssuerServer | None = None

    async def start(self) -> Sequence[Mount]:
        await upgrade(self.database_url, [PLATFORM_CHAIN, CHAIN])
        db = self.db = Database(self.database_url, source=NAME, clock=self.clock)
        var = Path(self.settings.var_dir)
        secret = self.settings.page_token_secret.get_secret_value().encode() or load_or_create_secret(
            var / "secrets" / "page-token.key"
        )
        pages = PageTokens(secret)
        self.minter = TokenMinter(
            Path(self.identity.signing_key_dir or var / "issuer"),
            self.identity.token_issuer or self.settings.auth_issuer,
            self.identity.token_ttl_s,
            self.clock,
        )
        if self.identity.serve_jwks and self.settings.runs_singletons:  # one JWKS port per replica
            self.jwks_server = DevIssuerServer(
                self.minter.issuer,
                host=self.settings.host,
                port=self.identity.jwks_port,
                public_url=self.identity.token_issuer,
            )
            self.jwks_server.start()
        audit_folder = self.settings.access_log_path(NAME).parent
        self.importer = AccessLogImporter(db, audit_folder, self.identity.audit_import_interval_s)
        self.enforcer = ConcessionEnforcer(db, self.directory, self.identity.concession_check_interval_s)
        if self.run_tasks and self.settings.runs_singletons:  # once per replica (CITYOS_WORKERS)
            self.importer.start()
            self.enforcer.start()
        service_tokens = None if self.identity.directory == "keycloak" else self.minter
        poll = self.settings.events_poll_interval_s

        def mount(service: str, servicer: object, add: object) -> Mount:
            return Mount(
                descriptor=identity_pb2.DESCRIPTOR.services_by_name[service],
                servicer=servicer,
                add_to_server=add,  # type: ignore[arg-type]
            )

        return [
            mount(
                "OrganizationService",
                OrganizationServicer(db, pages, AreaRegistry.default(), self.directory),
                identity_pb2_grpc.add_OrganizationServiceServicer_to_server,
            ),
            mount(
                "UserService",
                UserServicer(db, pages, self.directory),
                identity_pb2_grpc.add_UserServiceServicer_to_server,
            ),
            mount(
                "ServiceAccountService",
                ServiceAccountServicer(db, pages, self.directory, service_tokens),
                identity_pb2_grpc.add_ServiceAccountServiceServicer_to_server,
            ),
            mount(
                "ApiKeyService",
                ApiKeyServicer(db, pages, self.minter),
                identity_pb2_grpc.add_ApiKeyServiceServicer_to_server,
            ),
            mount(
                "AuthorizationService",
                AuthorizationServicer(db),
                identity_pb2_grpc.add_AuthorizationServiceServicer_to_server,
            ),
            mount(
                "AuditService", AuditServicer(db, pages), identity_pb2_grpc.add_AuditServiceServicer_to_server
            ),
            event_stream_mount(db, poll_interval_s=poll),
        ]

    async def stop(self) -> None:
        if self.jwks_server is not None:
            self.jwks_server.stop()
        if self.importer is not None:
            await self.importer.stop()
        if self.enforcer is not None:
            await self.enforcer.stop()
        if self.db is not None:
            await self.db.close()


def create(settings: Settings) -> IdentityApp:
    return IdentityApp(settings)
