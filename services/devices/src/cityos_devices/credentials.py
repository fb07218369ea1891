"""Device access tokens: `cdt_<credential id>_<secret>`, shown once, stored as the SHA-256 of the secret.

The secret is 32 random bytes, so a plain SHA-256 is the right hash (nothing to brute-force; a slow
password hash would only cost every uplink). A token authenticates exactly one device: the principal it
yields is that device (`devices/{id}`, role `device`), and the telemetry path refuses to write for
any other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from cityos.devices.v1 import devices_pb2
from cityos_devices.models import CredentialRow, DeviceRow
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Unauthenticated

TOKEN_PREFIX = "cdt_"  # noqa: S105 - a prefix, not a secret
CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class IssuedToken:
    credential_id: str
    token: str


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(device_id: str, tx: Tx) -> IssuedToken:
    """Add a credential for the device in this transaction; the token exists only in the return value."""
    credential_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    tx.session.add(
        CredentialRow(
            credential_id=credential_id,
            device_id=device_id,
            secret_sha256=sha256(secret),
            kind="token",
            create_time=tx.now,
        )
    )
    return IssuedToken(credential_id, f"{TOKEN_PREFIX}{credential_id}_{secret}")


async def revoke(tx: Tx, device_id: str, credential_id: str = "") -> int:
    statement = update(CredentialRow).where(
        CredentialRow.device_id == device_id, CredentialRow.revoke_time.is_(None)
    )
    if credential_id:
        statement = statement.where(CredentialRow.credential_id == credential_id)
    result = await tx.session.execute(statement.values(revoke_time=tx.now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class DeviceTokenVerifier:
    """Turns a device token into the device's principal; what the Authenticator calls for `cdt_`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[Principal, float]] = {}

    def forget(self, device_id: str) -> None:
        """Drop cached principals of a device (after a revoke or decommission in this process)."""
        subject = f"devices/{device_id}"
        for token, (principal, _) in list(self._cache.items()):
            if principal.subject == subject:
                del self._cache[token]

    async def __call__(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and time.monotonic() - cached[1] < CACHE_TTL_S:
            return cached[0]
        credential_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
        if not credential_id or not secret:
            raise Unauthenticated("not a device token", reason="DEVICE_TOKEN_MALFORMED")
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(CredentialRow, DeviceRow)
                    .join(DeviceRow, DeviceRow.device_id == CredentialRow.device_id)
                    .where(CredentialRow.credential_id == credential_id, CredentialRow.kind == "token")
                )
            ).first()
        if row is None or not hmac.compare_digest(row[0].secret_sha256, sha256(secret)):
            raise Unauthenticated("the device token is not valid", reason="DEVICE_TOKEN_INVALID")
        credential, device = row
        if credential.revoke_time is not None or device.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
            raise Unauthenticated("the device token was revoked", reason="DEVICE_TOKEN_REVOKED")
        principal = Principal(
            subject=f"devices/{device.device_id}",
            organization=device.owner_organization,
            roles=frozenset({"device"}),
            client=credential.credential_id,
            kind="device",
        )
        self._cache[token] = (principal, time.monotonic())
        return principal


def add_certificate(tx: Tx, device_id: str, certificate_fingerprint: str) -> str:
    """Record a signed certificate as a credential of the device; its id."""
    credential_id = secrets.token_hex(8)
    tx.session.add(
        CredentialRow(
            credential_id=credential_id,
            device_id=device_id,
            secret_sha256=certificate_fingerprint,
            kind="x509",
            create_time=tx.now,
        )
    )
    return credential_id


class DeviceCertificateVerifier:
    """The device a TLS client certificate (already verified against the device CA by TLS) belongs
    to, unless that certificate was revoked or the device decommissioned."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(self, pem: bytes) -> Principal:
        from cryptography import x509

        from cityos_devices.ca import fingerprint

        certificate = x509.load_pem_x509_certificate(pem)
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(CredentialRow, DeviceRow)
                    .join(DeviceRow, DeviceRow.device_id == CredentialRow.device_id)
                    .where(
                        CredentialRow.secret_sha256 == fingerprint(certificate), CredentialRow.kind == "x509"
                    )
                )
            ).first()
        if row is None:
            raise Unauthenticated(
                "the client certificate is not a device credential", reason="DEVICE_CERT_UNKNOWN"
            )
        credential, device = row
        if credential.revoke_time is not None or device.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
            raise Unauthenticated("the device certificate was revoked", reason="DEVICE_CERT_REVOKED")
        return Principal(
            subject=f"devices/{device.device_id}",
            organization=device.owner_organization,
            roles=frozenset({"device"}),
            client=credential.credential_id,
            kind="device",
        )
