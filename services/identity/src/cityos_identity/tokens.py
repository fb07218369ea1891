"""The tokens this service issues: for API keys (exchanged) and, in the embedded mode, for service
accounts (the client-credentials grant). Same shape as Keycloak's, signed with the configured key;
never valid past the end of the subject organization's concession."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cityos.identity.v1 import identity_pb2
from cityos_platform.clock import Clock
from cityos_platform.issuer import DevIssuer


class TokenMinter:
    def __init__(self, key_dir: Path, issuer_url: str, ttl_s: int, clock: Clock) -> None:
        self.issuer = DevIssuer(key_dir, issuer_url, clock=clock)
        self.ttl_s = ttl_s
        self.clock = clock

    def mint(
        self,
        subject: str,
        organization: str,
        *,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        kind: str,
        client: str,
        on_behalf_of: str = "",
        quota_per_minute: int = 0,
        not_after: datetime | None = None,
    ) -> identity_pb2.Token:
        now = self.clock.timestamp()
        ttl = self.ttl_s
        if not_after is not None:
            ttl = max(1, min(ttl, int(not_after.timestamp() - now)))
        scope_list = sorted(set(scopes))
        token = self.issuer.mint(
            subject,
            organization,
            roles,
            ttl_s=ttl,
            client=client,
            kind=kind,
            scopes=scope_list,
            on_behalf_of=on_behalf_of,
            extra_claims={"cityos_quota": quota_per_minute} if quota_per_minute else None,
        )
        return identity_pb2.Token(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=ttl,
            scope=" ".join(scope_list),
        )
