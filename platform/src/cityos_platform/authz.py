"""Who is calling and whether the RPC's declared policy lets them.

`Authenticator` turns the call's metadata into a `Principal`: a verified bearer token, or the anonymous
principal when there is none (which only public methods accept). `authorize()` applies the method's
policy: public methods admit anyone; others need one of the declared roles (`city-admin` holds every
permission except those only a separated role holds: the audit trail is the auditors' alone), or the
permission itself among the token's scopes (API-key tokens carry scopes and no roles).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import jwt

from cityos_platform.auth import MAX_TOKEN_BYTES, JwksCache, Principal, TokenVerifier, bearer_token
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.errors import PermissionDenied, Unauthenticated
from cityos_platform.policy import Policy

SUPERUSER_ROLE = "city-admin"
# The principal kinds an extra issuer (the identity service) may vouch for.
EXTRA_ISSUER_KINDS = frozenset({"api_key", "service"})
# Separation of duties: roles the superuser does not hold implicitly. A method whose roles are all
# separated (the audit trail's reads, for `auditor`) is closed to city-admin too.
SEPARATED_ROLES = frozenset({"auditor"})


# Verifies a service-specific opaque token (e.g. a device's access token) into a principal.
PrefixVerifier = Callable[[str], Awaitable[Principal]]
# Maps a verified TLS client certificate (PEM) to a principal (e.g. a device's certificate).
CertificateVerifier = Callable[[bytes], Awaitable[Principal]]


class Authenticator:
    """JWTs from the issuer, and opaque tokens some services issue themselves (device tokens), told
    apart by their prefix (`prefixed`, e.g. {"cdt_": the devices service's verifier})."""

    def __init__(
        self,
        verifier: TokenVerifier,
        prefixed: Mapping[str, PrefixVerifier] | None = None,
        certificate_verifier: CertificateVerifier | None = None,
        extra: Sequence[TokenVerifier] = (),
    ) -> None:
        self.verifier = verifier
        self.prefixed = dict(prefixed or {})
        self.certificate_verifier = certificate_verifier
        # Further issuers (the identity service's API-key tokens), by `iss`; they vouch only for the
        # principal kinds in EXTRA_ISSUER_KINDS.
        self.extra = {extra_verifier.issuer: extra_verifier for extra_verifier in extra}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Clock = SYSTEM_CLOCK,
        prefixed: Mapping[str, PrefixVerifier] | None = None,
        certificate_verifier: CertificateVerifier | None = None,
    ) -> Authenticator:
        jwks = JwksCache(
            url=settings.jwks_url, min_refresh_interval_s=settings.auth_jwks_refresh_s, clock=clock
        )
        verifier = TokenVerifier(
            settings.auth_issuer, settings.auth_audience, jwks, leeway_s=settings.auth_leeway_s, clock=clock
        )
        extra = [
            TokenVerifier(
                issuer,
                settings.auth_audience,
                JwksCache(
                    url=issuer.rstrip("/") + "/protocol/openid-connect/certs",
                    min_refresh_interval_s=settings.auth_jwks_refresh_s,
                    clock=clock,
                ),
                leeway_s=settings.auth_leeway_s,
                clock=clock,
            )
            for issuer in settings.auth_extra_issuers
        ]
        return cls(verifier, prefixed, certificate_verifier, extra)

    async def principal(
        self, metadata: Mapping[str, str | bytes], peer_certificate: bytes | None = None
    ) -> Principal:
        """The caller: its bearer token; else its TLS client certificate (mutual TLS, already verified
        against the server's client CA) when a service maps certificates to principals; else anonymous."""
        token = bearer_token(metadata)
        if token is None:
            if peer_certificate is not None and self.certificate_verifier is not None:
                return await self.certificate_verifier(peer_certificate)
            return Principal.anonymous()
        for prefix, verify in self.prefixed.items():
            if token.startswith(prefix):
                return await verify(token)
        extra = self.extra.get(_unverified_issuer(token)) if self.extra else None
        if extra is None:
            return await self.verifier.verify(token)
        principal = await extra.verify(token)  # the signature, `iss`, `aud` and times, as for any token
        if principal.kind not in EXTRA_ISSUER_KINDS:
            raise Unauthenticated(
                f"{extra.issuer} issues tokens for services and API keys only, not for people",
                reason="TOKEN_ISSUER",
            )
        return principal


def _unverified_issuer(token: str) -> str:
    """The `iss` a token claims, to pick the verifier that then checks it; "" when unreadable."""
    if len(token) > MAX_TOKEN_BYTES:
        return ""  # the primary verifier refuses it with its reason
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError):
        return ""
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else ""


def authorize(policy: Policy, principal: Principal) -> None:
    """Raise unless the principal may call the method."""
    if policy.public:
        return
    if principal.is_anonymous:
        raise Unauthenticated(
            "this method needs a bearer token (authorization: Bearer <token>)", reason="TOKEN_REQUIRED"
        )
    if principal.has_role(*policy.roles) or policy.permission in principal.scopes:
        return
    if principal.has_role(SUPERUSER_ROLE) and not set(policy.roles) <= SEPARATED_ROLES:
        return
    raise PermissionDenied(
        f"{policy.method} needs permission {policy.permission!r}"
        + (f" (held by roles: {', '.join(policy.roles)})" if policy.roles else ""),
        reason="MISSING_PERMISSION",
        metadata={"permission": policy.permission, "method": policy.full_method},
    )
