"""Settings of the identity service beyond the platform's (`CITYOS_IDENTITY_*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IdentitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_IDENTITY_", extra="ignore", frozen=True)

    # Where people and service accounts are mirrored for sign-in: `embedded` (nothing to mirror: the
    # built-in issuer signs from this service's records) or `keycloak` (CITYOS_KEYCLOAK_* settings).
    directory: Literal["embedded", "keycloak"] = "embedded"

    # The key that signs the tokens this service issues (API-key exchanges, the embedded
    # client-credentials grant): a folder holding `dev-issuer-key.pem`; empty: `<var>/issuer`, the
    # built-in issuer's own key, so that embedded services verify them with the JWKS they already trust.
    signing_key_dir: str = ""
    # The `iss` of those tokens; empty: CITYOS_AUTH_ISSUER.
    token_issuer: str = ""
    # Production: serve this service's JWKS (for the API-key tokens it signs) over HTTP on `jwks_port`,
    # at `<token_issuer path>/protocol/openid-connect/certs`, and have the services list `token_issuer`
    # in CITYOS_AUTH_EXTRA_ISSUERS. Off in embedded mode, which signs with the built-in issuer's key.
    serve_jwks: bool = False
    jwks_port: int = Field(default=8090, ge=0, le=65535)
    # Lifetime of an issued token: a revoked key's last token lives at most this long.
    token_ttl_s: int = Field(default=300, ge=30, le=3600)

    # How often the access logs under the platform's audit folder are imported into the audit trail,
    # and how often ended concessions are enforced.
    audit_import_interval_s: float = Field(default=5.0, gt=0)
    concession_check_interval_s: float = Field(default=30.0, gt=0)
