"""The platform's own tables, present in every service's database (created by the platform migration
chain, version table `cityos_platform_version`), and the mixins services' models share."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit integer primary key that autoincrements on both backends (SQLite needs INTEGER for rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite stores text and would lose the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class PlatformBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Outbox(PlatformBase):
    """Events committed with the state they describe; `seq` is the stream position (commit order)."""

    __tablename__ = "cityos_outbox"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(128))
    schema_version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(512))
    owner_organization: Mapped[str] = mapped_column(String(64))
    area_cell: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    traceparent: Mapped[str] = mapped_column(String(64))
    payload_type: Mapped[str] = mapped_column(String(256))
    payload: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_cityos_outbox_owner_seq", "owner_organization", "seq"),)


class IdempotencyKey(PlatformBase):
    """The first result of each create, by (organization, subject, method, request_id)."""

    __tablename__ = "cityos_idempotency"

    organization: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class ConsumerCheckpoint(PlatformBase):
    """How far a consumer in this service has processed another service's event stream."""

    __tablename__ = "cityos_consumer_checkpoints"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(128))
    events_processed: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class OwnedMixin:
    """Owner, operator and maintainer organizations: the columns tenancy scoping reads."""

    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    operator_organization: Mapped[str] = mapped_column(String(64), default="", index=True)
    maintainer_organization: Mapped[str] = mapped_column(String(64), default="", index=True)


class FeedCursorMixin:
    """Where a service stands in a feed it follows (the devices telemetry feed,
    `cityos_platform.feeds`), committed in the same transaction as the state derived from the records
    before it. Each service declares its own `feed_cursors` table with it, in its own database."""

    feed: Mapped[str] = mapped_column(String(63), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(200))
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class LocatedMixin:
    """A point and its H3 cell (resolution 9), which area filters select on."""

    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    area_cell: Mapped[str] = mapped_column(String(16), index=True)
