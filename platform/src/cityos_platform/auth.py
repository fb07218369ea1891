"""Callers: principals and OIDC bearer-token verification.

One code path verifies Keycloak's tokens in production and the development issuer's in the embedded
mode and the tests: signing keys from the issuer's JWKS (cached; an unknown `kid` refreshes it at most
once per interval), a fixed list of asymmetric algorithms (so `none` and HS256 are refused, whatever the
header says), `iss`, `aud`, and `exp`/`nbf`/`iat` checked against an injectable clock with a small leeway.

Token shape (Keycloak with CityOS's protocol mappers): `iss`, `aud` (a string or a list), `sub`, `exp`,
`iat`, optional `nbf`, `azp` (the client), `jti`, `org` (the organization id), `roles` (or Keycloak's
`realm_access.roles`), `scope` (space-separated; API-key tokens carry permissions there), and `act.sub`
when a service acts for someone (RFC 8693). A `typ` claim, when present, must be Keycloak's `Bearer`
(so an ID token of a client that happens to share the audience is not taken as an access token).

Every failure is `Unauthenticated` with its own reason (`TOKEN_MALFORMED`, `TOKEN_ALGORITHM`,
`TOKEN_UNKNOWN_KEY`, `TOKEN_SIGNATURE`, `TOKEN_AUDIENCE`, `TOKEN_ISSUER`, `TOKEN_MISSING_CLAIM`,
`TOKEN_EXPIRED`, `TOKEN_NOT_YET_VALID`, `TOKEN_TYPE`); messages never repeat the token.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
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
ACCESS_TOKEN_TYPE = "Bearer"  # noqa: S105 - the token type Keycloak gives access tokens
VERIFIED_CACHE_TTL_S = 60.0
VERIFIED_CACHE_SIZE = 10_000
MAX_TOKEN_BYTES = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
JWKS_FETCH_TIMEOUT_S = 5.0
# The key type each algorithm family needs (the JWK `kty`).
_KEY_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9]{1,16}")

Kind = Literal["user", "service", "device", "api_key", "anonymous"]
_TOKEN_KINDS: tuple[Kind, ...] = ("user", "service", "device", "api_key")
SERVICE_ACCOUNT_PREFIX = "service-account-"


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
    # Calls per minute this caller may make (an API key's quota, the `cityos_quota` claim); 0: none.
    quota_per_minute: int = 0

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(subject="", organization="", kind="anonymous")

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"

    def has_role(self, *roles: str) -> bool:
        return any(role in self.roles for role in roles)


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="TOKEN_MALFORMED")


def _optional_str(claims: Mapping[str, Any], name: str) -> str:
    """A string claim that may be absent (or null, as some mappers emit): "" then."""
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"the token's {name!r} claim is not a string")
    return value


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _malformed(f"the token's {name} are not a list of names")
    return value


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The principal of an already verified token's claims (strict about their types)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("the token has no subject ('sub')", reason="TOKEN_MISSING_CLAIM")
    roles = claims.get("roles")
    if roles is None:
        realm_access = claims.get("realm_access")
        if realm_access is None:
            roles = []
        elif isinstance(realm_access, dict):
            roles = realm_access.get("roles") or []
        else:
            raise _malformed("the token's 'realm_access' claim is not an object")
    roles = _string_list(roles, "roles")
    scope = _optional_str(claims, "scope")
    actor = claims.get("act")
    on_behalf_of = ""
    if actor is not None:
        if not isinstance(actor, dict):
            raise _malformed("the token's 'act' claim is not an object")
        on_behalf_of = _optional_str(actor, "sub")
    explicit_kind = claims.get("cityos_kind")
    kind: Kind
    if explicit_kind is not None:
        if explicit_kind not in _TOKEN_KINDS:
            raise _malformed(f"the token's 'cityos_kind' must be one of {', '.join(_TOKEN_KINDS)}")
        kind = explicit_kind
    elif _optional_str(claims, "preferred_username").startswith(SERVICE_ACCOUNT_PREFIX):
        kind = "service"  # Keycloak's client-credentials tokens
    else:
        kind = "user"
    quota = claims.get("cityos_quota", 0)
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
        raise _malformed("the token's 'cityos_quota' claim is not a non-negative integer")
    return Principal(
        quota_per_minute=quota,
        subject=subject,
        organization=_optional_str(claims, "org"),
        roles=frozenset(roles),
        client=_optional_str(claims, "azp"),
        kind=kind,
        token_id=_optional_str(claims, "jti"),
        scopes=frozenset(scope.split()),
        on_behalf_of=on_behalf_of,
    )


JwksDocument = dict[str, Any]
# Where the JWKS comes from: a callable returning the document, or an awaitable of it.
JwksSource = Callable[[], JwksDocument | Awaitable[JwksDocument]]


def http_jwks(url: str, timeout_s: float = JWKS_FETCH_TIMEOUT_S) -> JwksSource:
    """Fetch a JWKS document over HTTP(S) (or from a file:// URL), off the event loop."""

    def fetch() -> JwksDocument:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
            body = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("the JWKS document is not a JSON object")
        return document

    async def load() -> JwksDocument:
        return await asyncio.to_thread(fetch)

    return load


@dataclass(frozen=True)
class SigningKey:
    """One of the issuer's published signing keys and the algorithms it may verify."""

    kid: str
    jwk: jwt.PyJWK
    algorithms: frozenset[str]


def _signing_key(kid: str, entry: Mapping[str, Any]) -> SigningKey:
    jwk = jwt.PyJWK(dict(entry))
    if "alg" in entry or jwk.key_type == "EC":
        # A declared `alg` binds the key to it; an EC key's curve fixes its algorithm (P-256: ES256).
        algorithms = frozenset({jwk.algorithm_name})
    else:
        family = [prefix for prefix, key_type in _KEY_FAMILY.items() if key_type == jwk.key_type]
        algorithms = frozenset(f"{prefix}{bits}" for prefix in family for bits in (256, 384, 512))
    return SigningKey(kid, jwk, algorithms)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document by `kid` (`use` absent or `sig`; unusable ones are
    skipped with a warning). Raises ValueError when the document is not a JWKS at all."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS document has no 'keys' list")
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = _signing_key(kid, entry)
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            log.warning("ignoring an unusable JWKS key %s: %s", kid, error)
    return keys


class JwksCache:
    """The issuer's signing keys by `kid`, refreshed on demand and at most once per interval.

    Give exactly one of `url` (fetched with urllib in a worker thread, 5 s timeout) or `source` (a
    callable returning the JWKS document, or an awaitable of it: tests and embedded use). A key id not
    known yet triggers a refresh unless one happened within `min_refresh_interval_s` (by the injected
    clock; failed attempts count too, so a down issuer is not hammered); a failed refresh keeps the keys
    already known. `fetches` counts refresh attempts.
    """

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
        self._source: JwksSource = source if source is not None else http_jwks(url or "")
        self.url = url or "<source>"
        self.min_refresh_interval_s = min_refresh_interval_s
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._last_refresh: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def kids(self) -> frozenset[str]:
        """The key ids known now."""
        return frozenset(self._keys)

    async def key(self, kid: str) -> SigningKey | None:
        """The key with this id, refreshing the JWKS first when it is unknown and the rate limit
        allows; None when it is still unknown."""
        known = self._keys.get(kid)
        if known is not None:
            return known
        async with self._lock:
            if kid not in self._keys and self._may_refresh():
                await self._refresh()
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Reload now (ignoring the rate limit); False when the fetch failed and the old keys stay."""
        async with self._lock:
            return await self._refresh()

    def _may_refresh(self) -> bool:
        now = self._clock.timestamp()
        return self._last_refresh is None or now - self._last_refresh >= self.min_refresh_interval_s

    async def _refresh(self) -> bool:
        self._last_refresh = self._clock.timestamp()
        self.fetches += 1
        try:
            document = self._source()
            if inspect.isawaitable(document):
                document = await document
            keys = parse_jwks(document)
        except Exception as error:
            log.warning(
                "JWKS refresh from %s failed (%s); keeping %d known key(s)", self.url, error, len(self._keys)
            )
            return False
        self._keys = keys
        return True


class TokenVerifier:
    """Verifies bearer tokens of one issuer for one audience into principals."""

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
        if not algorithms or any(alg[:2] not in _KEY_FAMILY for alg in algorithms):
            raise ValueError("only asymmetric algorithms (RS*, PS*, ES*) may verify CityOS tokens")
        if not issuer or not audience:
            raise ValueError("a token verifier needs the issuer and the audience it expects")
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.algorithms = tuple(algorithms)
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
            if 0 <= now - verified_at < VERIFIED_CACHE_TTL_S:
                if now > expires + self.leeway_s:
                    raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
                return principal
            del self._verified[token]
        principal, expires = await self._verify(token)
        self._verified[token] = (principal, expires, now)
        while len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise _malformed(f"the bearer token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # any parse failure of untrusted input (PyJWT, JSON, recursion) is malformed
            raise _malformed("the bearer token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            shown = (
                repr(algorithm) if isinstance(algorithm, str) and _PRINTABLE_ALG.fullmatch(algorithm) else ""
            )
            raise Unauthenticated(
                f"token algorithm {shown or '(unsupported value)'} is not accepted "
                f"(allowed: {', '.join(self.algorithms)})",
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
        if _KEY_FAMILY[algorithm[:2]] != key.jwk.key_type or algorithm not in key.algorithms:
            raise Unauthenticated("the token's algorithm does not match its key", reason="TOKEN_ALGORITHM")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "verify_signature": True,
                    "require": list(REQUIRED_CLAIMS),
                    # Times are checked below against the injected clock, not the system's.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify", reason="TOKEN_SIGNATURE") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(
                f"the token lacks the {error.claim!r} claim", reason="TOKEN_MISSING_CLAIM"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the token is not meant for this audience (expected {self.audience!r})",
                reason="TOKEN_AUDIENCE",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"the token comes from another issuer (expected {self.issuer})", reason="TOKEN_ISSUER"
            ) from None
        except Exception:  # any other PyJWT error, or anything raised while parsing untrusted input
            raise _malformed("the token's claims could not be read") from None
        expires = self._check_times(claims)
        token_type = claims.get("typ")
        if token_type is not None and token_type != ACCESS_TOKEN_TYPE:
            raise Unauthenticated(
                f"the token is not an access token (typ must be {ACCESS_TOKEN_TYPE!r})", reason="TOKEN_TYPE"
            )
        return principal_from_claims(claims), expires

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        """Raise unless exp/nbf/iat admit the token now (with the leeway); returns exp."""
        expires = _numeric_date(claims, "exp")
        issued = _numeric_date(claims, "iat")
        not_before = _numeric_date(claims, "nbf") if claims.get("nbf") is not None else None
        now = self.clock.timestamp()
        if now > expires + self.leeway_s:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        if not_before is not None and now + self.leeway_s < not_before:
            raise Unauthenticated("the token is not valid yet (nbf)", reason="TOKEN_NOT_YET_VALID")
        if now + self.leeway_s < issued:
            raise Unauthenticated("the token was issued in the future (iat)", reason="TOKEN_NOT_YET_VALID")
        return expires


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed(f"the token's {name!r} claim is not a NumericDate")
    return float(value)


def bearer_token(metadata: Mapping[str, str | bytes]) -> str | None:
    """The token of an `authorization: Bearer <token>` header (scheme case-insensitive), None when there
    is no such header; Unauthenticated (TOKEN_MALFORMED) when the header is not of that form."""
    value = metadata.get("authorization")
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(char.isspace() for char in token):
        raise _malformed("the authorization header must be 'Bearer <token>'")
    return token
