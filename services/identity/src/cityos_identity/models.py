"""The identity service's tables (its own database; the platform's tables sit beside them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, BigId, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OrganizationRow(Base):
    __tablename__ = "organizations"

    organization_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[int] = mapped_column(Integer, index=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.organization_id"), nullable=True)
    # The concession as {"reference", "services", "areas"}; its window in the two columns below.
    concession: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    concession_start: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    concession_end: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    # Set once the end of the concession has been enforced (members disabled in the directory).
    access_ended_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class UserRow(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(200))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.organization_id"), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ServiceAccountRow(Base):
    __tablename__ = "service_accounts"

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(70), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.organization_id"), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    # SHA-256 of the client secret; the secret itself is shown once and never stored.
    secret_sha256: Mapped[str] = mapped_column(String(64))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.organization_id"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    quota_per_minute: Mapped[int] = mapped_column(Integer)
    # SHA-256 of the key's secret part; the key is shown once and never stored.
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    creator: Mapped[str] = mapped_column(String(100))
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    exchange_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_used_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditRow(Base):
    """The audit trail: append-only (no code path updates or deletes a row)."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    kind: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    on_behalf_of: Mapped[str] = mapped_column(String(200))
    organization: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(200))
    resource: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, str]] = mapped_column(JSON)


class AccessLogOffset(Base):
    """How far the audit importer has read each service's access log (bytes, and the chain's hash)."""

    __tablename__ = "access_log_offsets"

    file_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
