"""Calling the city's services from a job: the client `cityos-analytics` and a channel per service.

A job that hands results to a service (the manhole risk job's SetRiskScores) calls it as the OAuth2
client `cityos-analytics`, the service account the manholes service lets write risk scores:

- production: a client-credentials token from Keycloak (`CITYOS_AUTH_CLIENT_SECRET`, the issuer's token
  endpoint; `cityos_platform.peers`) and the service's address from `CITYOS_ENDPOINTS`;
- embedded (`make run`): the development issuer's keys under `<var_dir>/issuer` sign the same
  service-account token the issuer's token endpoint would, and the addresses are the embedded city's
  (`CITYOS_ENDPOINTS`, else `<var_dir>/endpoints.json`, which `cityos dev` writes).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cityos_platform.config import Settings
from cityos_platform.peers import bearer_interceptors, client_credentials

CLIENT = "cityos-analytics"
ENDPOINTS_FILE = "endpoints.json"


class ServicesUnavailable(Exception):
    """No address or no credentials for a service a job calls."""


class _StaticToken:
    """A token source of one already-minted token (embedded mode), shaped like ClientCredentials."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),)

    def invalidate(self) -> None:
        """Nothing to refresh: the token lives longer than any run."""


class Services:
    """Channels to the city's services, every call carrying the analytics client's token."""

    def __init__(
        self, endpoints: dict[str, str], tokens: Any, *, max_message_bytes: int = 4 * 1024 * 1024
    ) -> None:
        self.endpoints = dict(endpoints)
        self.tokens = tokens
        self.max_message_bytes = max_message_bytes

    @classmethod
    def with_token(cls, endpoints: dict[str, str], token: str) -> Services:
        """Services reached with one bearer token (a test's, or one minted in embedded mode)."""
        return cls(endpoints, _StaticToken(token))

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        """The settings' services (see the module doc)."""
        endpoints = dict(settings.endpoints)
        recorded = settings.var_dir / ENDPOINTS_FILE
        if not endpoints and settings.mode == "embedded" and recorded.exists():
            endpoints = json.loads(recorded.read_text())
        tokens: Any = client_credentials(settings, "analytics")
        if tokens is None and settings.mode == "embedded":
            tokens = _StaticToken(_embedded_token(settings))
        if tokens is None:
            raise ServicesUnavailable(
                "calling the city's services needs the analytics client's secret "
                "(CITYOS_AUTH_CLIENT_SECRET of the Keycloak client cityos-analytics)"
            )
        return cls(endpoints, tokens, max_message_bytes=settings.max_message_bytes)

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to `service` (open it inside the event loop that uses it)."""
        address = self.endpoints.get(service)
        if not address:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise ServicesUnavailable(
                f"no address for the {service} service (CITYOS_ENDPOINTS names: {known})"
            )
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        return grpc.aio.insecure_channel(
            address, options=options, interceptors=bearer_interceptors(self.tokens)
        )

    async def call(self, service: str, use: Callable[[grpc.aio.Channel], Awaitable[Any]]) -> Any:
        """Open a channel to `service`, run `use(channel)`, close the channel."""
        channel = self.channel(service)
        try:
            return await use(channel)
        finally:
            await channel.close()


def _embedded_token(settings: Settings) -> str:
    """The analytics service account's token, signed with the development issuer's key."""
    from cityos_platform.issuer import SERVICE_ORGANIZATION, SERVICE_ROLE, DevIssuer

    key_dir = settings.var_dir / "issuer"
    recorded = key_dir / "issuer-url"
    url = recorded.read_text().strip() if recorded.exists() else settings.auth_issuer
    issuer = DevIssuer(key_dir, url)
    return issuer.mint(
        f"service-account-{CLIENT}",
        SERVICE_ORGANIZATION,
        [SERVICE_ROLE],
        client=CLIENT,
        kind="service",
        ttl_s=3600,
    )
