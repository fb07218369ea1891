"""Calls from one service to another: a client-credentials token and a channel to a named peer.

A service calls another as its own OAuth2 client (`cityos-<service>`, a confidential client with a
service account in the realm): it asks the issuer's token endpoint for a token with the
client-credentials grant (RFC 6749 §4.4) and sends it as `authorization: Bearer …` on every call, which
the peer verifies like any other caller's (a `service` principal, city-wide). The same code path serves
production, where the issuer is Keycloak, and embedded mode, where it is the development issuer
(`cityos dev` registers every service's client with it and hands each its secret).

    tokens = client_credentials(settings, "parking")          # None without CITYOS_AUTH_CLIENT_SECRET
    channel = peer_channel(settings, "devices", tokens)       # CITYOS_ENDPOINTS["devices"]
    stub = devices_pb2_grpc.TelemetryServiceStub(channel)     # every call carries the token

The token is cached and fetched again shortly before it expires (at most a minute before, at most a
quarter of its lifetime before), once for all concurrent callers. A refusal by the issuer (a wrong
secret, an unknown client) is `TokenRefused`, naming the token URL, the client and the issuer's OAuth2
error, never the secret; an issuer that cannot be reached or answers nonsense is `TokenUnavailable`.
Both are `TokenError`s and surface from the gRPC call that needed the token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from pydantic import SecretStr

from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings

log = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
# Refresh this long before expiry at most (a quarter of the lifetime for short-lived tokens).
REFRESH_MARGIN_S = 60.0
TOKEN_TIMEOUT_S = 10.0


class PeerError(Exception):
    """A call to another service cannot be made."""


class PeerNotConfigured(PeerError):
    """CITYOS_ENDPOINTS names no address for the peer."""


class TokenError(PeerError):
    """This service has no token for its call."""


class TokenUnavailable(TokenError):
    """The issuer could not be reached, or its answer was not a token (try again later)."""


class TokenRefused(TokenError):
    """The issuer refused this client (unknown client, wrong secret, grant not allowed): a
    configuration problem, not a passing one."""

    def __init__(self, message: str, *, status: int, error: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float
    refresh_at: float


class ClientCredentials:
    """An OAuth2 client-credentials token source: `await token()` gives a valid access token, fetched
    from `token_url` (form-encoded `grant_type=client_credentials`, `client_id`, `client_secret`) when
    none is cached or the cached one is about to expire. `fetches` counts the requests to the issuer."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr | str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = TOKEN_TIMEOUT_S,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not token_url or not client_id:
            raise ValueError("client credentials need a token URL and a client id")
        secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        if not secret.get_secret_value():
            raise ValueError(f"client {client_id!r} has no secret")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = secret
        self.clock = clock
        self.timeout_s = timeout_s
        self.refresh_margin_s = refresh_margin_s
        self._transport = transport
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:  # never the secret
        return f"ClientCredentials({self.token_url!r}, {self.client_id!r})"

    async def token(self) -> str:
        """A token valid for at least the refresh margin (or a quarter of its lifetime)."""
        cached = self._token
        if cached is not None and self.clock.timestamp() < cached.refresh_at:
            return cached.value
        async with self._lock:  # one fetch for all the callers that found it stale
            cached = self._token
            if cached is None or self.clock.timestamp() >= cached.refresh_at:
                cached = self._token = await self._fetch()
            return cached.value

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token (a `MetadataProvider` for `events.EventConsumer`)."""
        return (("authorization", f"Bearer {await self.token()}"),)

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after a peer refused it); the next call fetches a new one."""
        self._token = None

    async def _fetch(self) -> _Token:
        form = {
            "grant_type": GRANT_TYPE,
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
        }
        who = f"client {self.client_id!r} at {self.token_url}"
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport) as http:
                response = await http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as error:
            raise TokenUnavailable(f"no token for {who}: {type(error).__name__}: {error}") from None
        body = _json(response)
        if response.status_code in (400, 401, 403):
            code = str(body.get("error") or f"HTTP {response.status_code}")
            description = str(body.get("error_description") or "")
            raise TokenRefused(
                f"the issuer refused {who}: {code}" + (f" ({description})" if description else ""),
                status=response.status_code,
                error=code,
            )
        if response.status_code != 200:
            raise TokenUnavailable(f"no token for {who}: HTTP {response.status_code}")
        value, lifetime = body.get("access_token"), body.get("expires_in")
        token_type = str(body.get("token_type", "Bearer"))
        if (
            not isinstance(value, str)
            or not value
            or not isinstance(lifetime, int | float)
            or lifetime <= 0
            or token_type.lower() != "bearer"
        ):
            raise TokenUnavailable(f"no token for {who}: the answer is not a bearer token with expires_in")
        now = self.clock.timestamp()
        margin = min(self.refresh_margin_s, lifetime / 4)
        log.debug("token for %s obtained, valid for %.0f s", self.client_id, lifetime)
        return _Token(value, now + lifetime, now + lifetime - margin)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def client_credentials(
    settings: Settings, service: str, *, clock: Clock = SYSTEM_CLOCK
) -> ClientCredentials | None:
    """This service's token source from the settings (`CITYOS_AUTH_CLIENT_ID`, `_CLIENT_SECRET`,
    `_TOKEN_URL`), or None when it has no client secret (it then makes no calls to other services)."""
    if not settings.auth_client_secret.get_secret_value():
        return None
    return ClientCredentials(
        settings.token_url, settings.client_id_for(service), settings.auth_client_secret, clock=clock
    )


def peer_address(settings: Settings, peer: str) -> str:
    """Where `peer` answers gRPC (`CITYOS_ENDPOINTS`), or PeerNotConfigured."""
    address = settings.endpoints.get(peer)
    if not address:
        known = ", ".join(sorted(settings.endpoints)) or "none"
        raise PeerNotConfigured(f"CITYOS_ENDPOINTS has no address for {peer!r} (it names: {known})")
    return address


class _Bearer:
    """Adds `authorization: Bearer <token>` to every call that does not carry its own."""

    def __init__(self, tokens: ClientCredentials) -> None:
        self.tokens = tokens

    async def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        if "authorization" not in metadata:
            metadata.add("authorization", f"Bearer {await self.tokens.token()}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one kind of call only (the first base class it matches), so
# there is one per kind.
class _UnaryUnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._with_token(client_call_details), request)


class _UnaryStreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._with_token(client_call_details), request)


class _StreamUnaryBearer(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._with_token(client_call_details), request_iterator)


class _StreamStreamBearer(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._with_token(client_call_details), request_iterator)


def bearer_interceptors(tokens: ClientCredentials) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that put the token on every kind of call."""
    kinds = (_UnaryUnaryBearer, _UnaryStreamBearer, _StreamUnaryBearer, _StreamStreamBearer)
    return [kind(tokens) for kind in kinds]


def peer_channel(
    settings: Settings,
    peer: str,
    tokens: ClientCredentials | None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `peer` (its address from `CITYOS_ENDPOINTS`) whose calls carry this
    service's token. Plain text unless `credentials` are given (TLS between services is not wired yet).
    Call it inside the event loop that will use the channel; close it with `await channel.close()`."""
    address = peer_address(settings, peer)
    interceptors = bearer_interceptors(tokens) if tokens is not None else []
    merged = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        *options,
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=merged, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=merged, interceptors=interceptors)
