"""The parking service's tables (its own database; the platform's tables sit beside them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, LocatedMixin, OwnedMixin, UtcDateTime


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
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
