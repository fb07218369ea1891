"""Fixtures for the identity service: a running service on SQLite and on PostgreSQL, callers, and a
directory that remembers what was mirrored into it (Keycloak does not run here; its provisioning code
is tested against a stand-in in test_keycloak.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from cityos.common.v1 import resources_pb2
from cityos.identity.v1 import identity_pb2, identity_pb2_grpc
from cityos_identity.app import IdentityApp
from cityos_identity.directory import DirectoryServiceAccount, DirectoryUser
from cityos_identity.settings import IdentitySettings
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer


class MemoryDirectory:
    """The Directory protocol over dictionaries: what the identity service mirrored, to assert on."""

    def __init__(self) -> None:
        self.organizations: dict[str, str] = {}
        self.users: dict[str, DirectoryUser] = {}
        self.accounts: dict[str, DirectoryServiceAccount] = {}

    async def ensure_organization(self, organization_id: str, display_name: str) -> None:
        self.organizations[organization_id] = display_name

    async def ensure_user(self, user: DirectoryUser) -> None:
        self.users[user.user_id] = user

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        user = self.users[user_id]
        self.users[user_id] = DirectoryUser(
            user.user_id, user.username, user.email, user.display_name, user.organization, user.roles, enabled
        )

    async def ensure_service_account(self, account: DirectoryServiceAccount, secret: str) -> None:
        self.accounts[account.client_id] = account

    async def set_service_account_enabled(self, client_id: str, enabled: bool) -> None:
        account = self.accounts[client_id]
        self.accounts[client_id] = DirectoryServiceAccount(
            account.client_id, account.organization, account.roles, enabled
        )


class City:
    """A running identity service and ready-made callers."""

    def __init__(self, server, app, channel, mint, clock, directory):
        self.server, self.app, self.channel, self.clock, self.directory = (
            server,
            app,
            channel,
            clock,
            directory,
        )
        self._mint = mint
        self.organizations = identity_pb2_grpc.OrganizationServiceStub(channel)
        self.users = identity_pb2_grpc.UserServiceStub(channel)
        self.accounts = identity_pb2_grpc.ServiceAccountServiceStub(channel)
        self.keys = identity_pb2_grpc.ApiKeyServiceStub(channel)
        self.authz = identity_pb2_grpc.AuthorizationServiceStub(channel)
        self.audit = identity_pb2_grpc.AuditServiceStub(channel)
        self.admin = self.token("root", "city-office", "city-admin")
        self.auditor = self.token("ada", "city-office", "auditor")

    def token(self, subject, organization, *roles, **claims):
        return bearer(self._mint(subject, organization, list(roles), **claims))

    async def organization(self, organization_id, kind=resources_pb2.ORGANIZATION_KIND_DEPARTMENT, **fields):
        return await self.organizations.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(
                organization=identity_pb2.Organization(
                    display_name=fields.pop("display_name", organization_id.title()), kind=kind, **fields
                ),
                organization_id=organization_id,
            ),
            metadata=self.admin,
            timeout=10,
        )

    async def operator(self, organization_id, start: datetime, end: datetime):
        concession = identity_pb2.Concession(
            reference="PPP-2026-017", services=["parking"], areas=["rongdong"]
        )
        concession.start_time.FromDatetime(start)
        concession.end_time.FromDatetime(end)
        return await self.organization(
            organization_id, kind=resources_pb2.ORGANIZATION_KIND_OPERATOR, concession=concession
        )

    async def user(self, user_id, organization, *roles, who=None):
        return await self.users.CreateUser(
            identity_pb2.CreateUserRequest(
                user=identity_pb2.User(
                    username=user_id,
                    email=f"{user_id}@example.org",
                    display_name=user_id.title(),
                    organization=f"organizations/{organization}",
                    roles=list(roles),
                ),
                user_id=user_id,
            ),
            metadata=who or self.admin,
            timeout=10,
        )


@pytest.fixture
def clock():
    """The identity service's clock: starts at the real time and moves only when a test moves it."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def city(start_server, database_url, dev_issuer, mint, tmp_path, clock):
    directory = MemoryDirectory()
    app = IdentityApp(
        load_settings(var_dir=tmp_path, events_poll_interval_s=0.1),
        database_url=database_url,
        clock=clock,
        identity_settings=IdentitySettings(
            signing_key_dir=str(dev_issuer.issuer.key_dir), token_issuer=dev_issuer.issuer.issuer_url
        ),
        directory=directory,
        run_tasks=False,
    )
    mounts = await app.start()
    server = await start_server(mounts, clock=clock)
    channel = grpc.aio.insecure_channel(server.address)
    yield City(server, app, channel, mint, clock, directory)
    await channel.close()
    await app.stop()


@pytest.fixture
def soon(clock):
    """A concession window that has started and ends in an hour (by the service's clock)."""
    return clock.now() - timedelta(days=30), clock.now() + timedelta(hours=1)
