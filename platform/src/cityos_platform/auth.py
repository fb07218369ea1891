"""Callers: principals and OIDC bearer-token verification.

One code path verifies Keycloak's tokens in production and the development issuer's in the embedded
mode and the tests: signing keys from the issuer's JWKS (cached; an unknown `kid` refreshes it at most
once per interval), a fixed list of asymmetric algorithms (so `none` and HS256 are refused, whatever the
header says), `iss`, `aud`, and `exp`/`nbf`/`iat` checked against an injectable clock with a small leeway.

Token shape (Keycloak with CityOS's protocol mappers): `iss`, `aud`, `sub`, `exp`, `iat`, optional
`nbf`, `azp` (the client), `jti`, `org` (the organization id), `roles` (or Keycloak's
`realm_access.roles`), `scope` (space-separated; API-key tokens carry permissions there), and `act.sub`
when a service acts for someone (RFC 8693).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt

from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.errors import Unauthenticated

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "ES256", "PS256")
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat")
VERIFIED_CACHE_TTL_S = 60.0
VERIFIED_CACHE_SIZE = 10_000
_KEY_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC"}

Kind = Literal["user", "service", "device", "anonymous"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: available to handlers as `current_call().principal`."""

    subject: str
    organization: str
    roles: frozenset[str] = field(default_factory=frozenset)
    client: str = ""
    kind: Kind = "user"
    token_id: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    on_behalf_of: str = ""

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(subject="", organization="", kind="anonymous")

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"

    def has_role(self, *roles: str) -> bool:
        return any(role in self.roles for role in roles)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    roles = claims.get("roles")
    if roles is None:
        roles = (claims.get("realm_access") or {}).get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("the token's roles are not a list of names", reason="TOKEN_MALFORMED")
    explicit_kind = claims.get("cityos_kind")
    kind: Kind
    if explicit_kind in ("user", "service", "device"):
        kind = explicit_kind
    elif str(claims.get("preferred_username", "")).startswith("service-account-"):
        kind = "service"
    else:
        kind = "user"
    actor = claims.get("act")
    return Principal(
        subject=str(claims["sub"]),
        organization=str(claims.get("org", "")),
        roles=frozenset(roles),
        client=str(claims.get("azp", "")),
        kind=kind,
        token_id=str(claims.get("jti", "")),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        on_behalf_of=str(actor.get("sub", "")) if isinstance(actor, dict) else "",
    )


JwksSource = Callable[[], Awaitable[dict[str, Any]]]


def http_jwks(url: str, timeout_s: float = 5.0) -> JwksSource:
    """Fetch a JWKS document over HTTP(S) (or from a file:// URL), off the event loop."""

    def fetch() -> dict[str, Any]:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
            document: dict[str, Any] = json.loads(response.read())
        return document

    async def load() -> dict[str, Any]:
        return await asyncio.to_thread(fetch)

    return load


class JwksCache:
    """The issuer's signing keys by `kid`, refreshed on demand and at most once per interval."""

    def __init__(
        self,
        *,
        url: str | None = None,
        source: JwksSource | None = None,
        min_refresh_interval_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (url is None) == (source is None):
            raise ValueError("give the JWKS as exactly one of url= or source=")
        self._source: JwksSource = source or http_jwks(url or "")
        self.url = url or ""
        self.min_refresh_interval_s = min_refresh_interval_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_refresh: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> jwt.PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and self._may_refresh():
                await self._refresh()
        return self._keys.get(kid)

    def _may_refresh(self) -> bool:
        now = self._clock.timestamp()
        return self._last_refresh is None or now - self._last_refresh >= self.min_refresh_interval_s

    async def _refresh(self) -> None:
        self._last_refresh = self._clock.timestamp()
        self.fetches += 1
        try:
            document = await self._source()
            keys = {}
            for entry in document.get("keys", []):
                if entry.get("use", "sig") != "sig" or "kid" not in entry:
                    continue
                try:
                    keys[entry["kid"]] = jwt.PyJWK(entry)
                except jwt.PyJWKError as error:
                    log.warning("ignoring an unusable JWKS key %s: %s", entry.get("kid"), error)
        except Exception as error:
            log.warning(
                "JWKS refresh from %s failed (%s); keeping %d known keys", self.url, error, len(self._keys)
            )
            return
        self._keys = keys


class TokenVerifier:
    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        *,
        algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS,
        leeway_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if any(not alg.startswith(tuple(_KEY_FAMILY)) for alg in algorithms):
            raise ValueError("only asymmetric algorithms (RS*, PS*, ES*) may verify CityOS tokens")
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        self.clock = clock
        # Verified tokens, so a client reusing its token costs one signature check a minute, not one a
        # call. Expiry is still checked on every use; only successes are kept.
        self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; Unauthenticated (with a reason) for any other."""
        now = self.clock.timestamp()
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires, verified_at = cached
            if now - verified_at < VERIFIED_CACHE_TTL_S:
                if now > expires + self.leeway_s:
                    raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
                return principal
            del self._verified[token]
        principal, expires = await self._verify(token)
        self._verified[token] = (principal, expires, now)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("the bearer token is not a JWT", reason="TOKEN_MALFORMED") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise Unauthenticated(
                f"token algorithm {algorithm!r} is not accepted (allowed: {', '.join(self.algorithms)})",
                reason="TOKEN_ALGORITHM",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no signing key (kid)", reason="TOKEN_UNKNOWN_KEY")
        key = await self.jwks.key(kid)
        if key is None:
            raise Unauthenticated(
                "the token was signed by a key the issuer does not publish", reason="TOKEN_UNKNOWN_KEY"
            )
        if _KEY_FAMILY[algorithm[:2]] != key.key_type:
            raise Unauthenticated("the token's algorithm does not match its key", reason="TOKEN_ALGORITHM")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "the token is not meant for CityOS (audience)", reason="TOKEN_AUDIENCE"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token comes from another issuer", reason="TOKEN_ISSUER") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify", reason="TOKEN_SIGNATURE") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(
                f"the token lacks the {error.claim!r} claim", reason="TOKEN_MISSING_CLAIM"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token could not be verified", reason="TOKEN_MALFORMED") from None
        self._check_times(claims)
        return principal_from_claims(claims), float(claims["exp"])

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock.timestamp()
        try:
            expires, issued = float(claims["exp"]), float(claims["iat"])
            not_before = float(claims["nbf"]) if "nbf" in claims else None
        except (TypeError, ValueError):
            raise Unauthenticated("the token's times are not numbers", reason="TOKEN_MALFORMED") from None
        if now > expires + self.leeway_s:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        if not_before is not None and now + self.leeway_s < not_before:
            raise Unauthenticated("the token is not valid yet", reason="TOKEN_NOT_YET_VALID")
        if now + self.leeway_s < issued:
            raise Unauthenticated("the token was issued in the future", reason="TOKEN_NOT_YET_VALID")


def bearer_token(metadata: Mapping[str, str | bytes]) -> str | None:
    """The token of an `authorization: Bearer <token>` header, None when there is no header."""
    value = metadata.get("authorization")
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated("the authorization header must be 'Bearer <token>'", reason="TOKEN_MALFORMED")
    return token
