"""The parking service's tables (its own database; the platform's tables sit beside them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, FeedCursorMixin, LocatedMixin, OwnedMixin, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SiteRow(OwnedMixin, LocatedMixin, Base):
    __tablename__ = "sites"

    site_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[int] = mapped_column(Integer, index=True)
    detection_type: Mapped[int] = mapped_column(Integer)
    allowed_vehicle_types: Mapped[list[str]] = mapped_column(JSON)
    # The tariff in the proto's JSON form (validated by cityos_parking.tariffs on the way in).
    tariff: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A BALANCING site's spaces when they are not modelled one by one (0: count its spots).
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    # Vehicles inside a BALANCING site, from its gates' entries and exits (never below 0).
    gate_occupied: Mapped[int] = mapped_column(Integer, default=0)
    # The SiteStatus last announced (parking.site.full / parking.site.available fire on a change).
    announced_status: Mapped[int] = mapped_column(Integer, default=0)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class GroupRow(Base):
    __tablename__ = "groups"

    group_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    categories: Mapped[list[str]] = mapped_column(JSON)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class SpotRow(LocatedMixin, Base):
    __tablename__ = "spots"
    # The nearest-spot search scans a latitude band of its bounding box (migration 0003).
    __table_args__ = (Index("ix_spots_latitude_longitude", "latitude", "longitude"),)

    spot_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"), index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id"), nullable=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # The bound sensor's device id (without `devices/`), unique: one sensor watches one spot.
    sensor_id: Mapped[str | None] = mapped_column(String(63), nullable=True, unique=True)
    width_m: Mapped[float] = mapped_column(Float)
    length_m: Mapped[float] = mapped_column(Float)
    allowed_vehicle_types: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[int] = mapped_column(Integer, index=True)
    status_time: Mapped[datetime] = mapped_column(UtcDateTime())
    # Why an operator set the status (empty when a sensor did).
    status_reason: Mapped[str] = mapped_column(String(200))
    # What the bound sensor last said (a SpotStatus; 0 before its first reading), when it measured that
    # (a reading measured earlier never overrides it) and when the service last heard from it at all
    # (the heartbeat: silence longer than the timeout makes the spot UNKNOWN).
    sensor_status: Mapped[int] = mapped_column(Integer, default=0)
    sensor_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    sensor_heard_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    forbidden_parking: Mapped[bool] = mapped_column(Boolean, default=False)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class FeedCursorRow(FeedCursorMixin, Base):
    __tablename__ = "feed_cursors"


class ReservationRow(Base):
    __tablename__ = "reservations"

    reservation_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"), index=True)
    # None: a space anywhere at the site.
    spot_id: Mapped[str | None] = mapped_column(ForeignKey("spots.spot_id"), nullable=True, index=True)
    start_time: Mapped[datetime] = mapped_column(UtcDateTime())
    end_time: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[int] = mapped_column(Integer, index=True)
    hold_expire_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    # The plate in clear (personal data, erased after the retention: None then).
    plate: Mapped[str | None] = mapped_column(String(16), nullable=True)
    plate_pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    vehicle_type: Mapped[str] = mapped_column(String(32))
    permit: Mapped[str] = mapped_column(String(63))
    holder: Mapped[str] = mapped_column(String(200), index=True)
    holder_organization: Mapped[str] = mapped_column(String(63))
    session_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    reason: Mapped[str] = mapped_column(String(200))
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class SessionRow(Base):
    __tablename__ = "sessions"

    session_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"), index=True)
    spot_id: Mapped[str | None] = mapped_column(ForeignKey("spots.spot_id"), nullable=True, index=True)
    plate: Mapped[str | None] = mapped_column(String(16), nullable=True)
    plate_pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    vehicle_type: Mapped[str] = mapped_column(String(32))
    permit: Mapped[str] = mapped_column(String(63))
    source: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer, index=True)
    start_time: Mapped[datetime] = mapped_column(UtcDateTime())
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The priced Fee in the proto's JSON form, once stopped.
    fee: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reservation_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    overstay: Mapped[bool] = mapped_column(Boolean, default=False)
    holder: Mapped[str] = mapped_column(String(200), index=True)
    holder_organization: Mapped[str] = mapped_column(String(63))
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
