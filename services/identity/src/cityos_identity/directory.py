"""Where people, organizations and service accounts live for sign-in: the identity provider.

The identity service keeps its own records (organizations, users, roles, service accounts, API keys)
in its database and mirrors what sign-in needs into the directory: in production Keycloak (realm
`cityos`, provisioned through python-keycloak's admin API — `cityos_identity.keycloak`), in the
embedded default nothing (the built-in issuer mints tokens from the identity service's own records).

Token shape (both): `sub`, `org` (the organization id), `roles` (realm roles), `azp` (the client);
Keycloak puts `org` and `roles` there with the protocol mappers the realm export declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class DirectoryUser:
    """A person as the directory holds them. `user_id` is the CityOS id (`users/{user_id}`); the
    directory's own id for them is its business (Keycloak: a UUID, found by username)."""

    user_id: str
    username: str
    email: str
    display_name: str
    organization: str  # the organization id, carried in the token's `org` claim
    roles: frozenset[str] = field(default_factory=frozenset)
    enabled: bool = True


@dataclass(frozen=True)
class DirectoryServiceAccount:
    """A client-credentials client for a service or a job, acting for its organization."""

    client_id: str
    organization: str
    roles: frozenset[str] = field(default_factory=frozenset)
    enabled: bool = True


class Directory(Protocol):
    """What the identity service needs from the identity provider. Every method is idempotent:
    calling it again with the same arguments changes nothing and does not fail."""

    async def ensure_organization(self, organization_id: str, display_name: str) -> None:
        """The organization exists (Keycloak: a group `org-<id>` with attribute `org` = id)."""

    async def ensure_user(self, user: DirectoryUser) -> None:
        """The user exists with exactly these attributes, organization, roles and enabled state."""

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        """Enable or disable a user (a disabled user cannot sign in; Keycloak also ends sessions)."""

    async def ensure_service_account(self, account: DirectoryServiceAccount, secret: str) -> None:
        """The confidential client exists with the service-account flow on, this secret, organization
        and realm roles, enabled or not."""

    async def set_service_account_enabled(self, client_id: str, enabled: bool) -> None:
        """Enable or disable a service account's client."""


class EmbeddedDirectory:
    """The embedded default: the built-in issuer signs tokens from the identity service's own records,
    so there is nothing to mirror."""

    async def ensure_organization(self, organization_id: str, display_name: str) -> None:
        return None

    async def ensure_user(self, user: DirectoryUser) -> None:
        return None

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        return None

    async def ensure_service_account(self, account: DirectoryServiceAccount, secret: str) -> None:
        return None

    async def set_service_account_enabled(self, client_id: str, enabled: bool) -> None:
        return None
