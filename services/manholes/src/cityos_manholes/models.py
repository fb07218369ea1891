"""The manholes service's tables (its own database; the platform's tables sit beside them).

Every table the service needs is here from the first migration: covers with their live state and risk,
alarms (one open alarm per cover and condition), work orders and the cursors of the feeds it follows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, FeedCursorMixin, LocatedMixin, OwnedMixin, UtcDateTime

# AlarmState.ALARM_STATE_RESOLVED (the partial unique index names it as a literal).
ALARM_RESOLVED = 3
OPEN_ALARM = text(f"state <> {ALARM_RESOLVED}")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CoverRow(OwnedMixin, LocatedMixin, Base):
    __tablename__ = "covers"

    cover_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[int] = mapped_column(Integer, index=True)
    road_class: Mapped[int] = mapped_column(Integer)
    material: Mapped[str] = mapped_column(String(50))
    install_angle_deg: Mapped[float] = mapped_column(Float)
    # The bound terminal's device id (without `devices/`), unique: one terminal watches one cover.
    device_id: Mapped[str | None] = mapped_column(String(63), nullable=True, unique=True)
    # The Thresholds in the proto's JSON form (validated on the way in; unset ones take the defaults).
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    # -- the live state, from the terminal's readings ---------------------------------------------------
    open: Mapped[bool] = mapped_column(Boolean, default=False)
    tilt_deg: Mapped[float] = mapped_column(Float, default=0.0)
    displaced: Mapped[bool] = mapped_column(Boolean, default=False)
    water_level_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Gas readings by name (`ch4_pct_lel`, `h2s_ppm`, `co_ppm`, `voc_ppm`).
    gases: Mapped[dict[str, float]] = mapped_column(JSON)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    smoke: Mapped[bool] = mapped_column(Boolean, default=False)
    battery_v: Mapped[float | None] = mapped_column(Float, nullable=True)
    rsrp_dbm: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the latest applied reading was measured (an earlier one never overrides it), and when the
    # terminal was last heard from at all (the heartbeat).
    reading_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heard_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    heartbeat_missed: Mapped[bool] = mapped_column(Boolean, default=False)
    # -- risk: the latest score the analytics job wrote (None: none yet) --------------------------------
    risk_score: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    risk_source: Mapped[int] = mapped_column(Integer, default=0)
    risk_model_version: Mapped[str] = mapped_column(String(100), default="")
    risk_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AlarmRow(Base):
    __tablename__ = "alarms"
    # One open alarm per cover and condition: a reading updates it rather than raising a second one.
    __table_args__ = (
        Index(
            "uq_alarms_open_cover_condition",
            "cover_id",
            "condition",
            unique=True,
            postgresql_where=OPEN_ALARM,
            sqlite_where=OPEN_ALARM,
        ),
    )

    alarm_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    cover_id: Mapped[str] = mapped_column(ForeignKey("covers.cover_id"), index=True)
    condition: Mapped[int] = mapped_column(Integer)
    severity: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer, index=True)
    # The worst value seen while it lasted, and the threshold it crossed.
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    raise_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_count: Mapped[int] = mapped_column(Integer, default=0)
    cleared: Mapped[bool] = mapped_column(Boolean, default=False)
    clear_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    acknowledged_by: Mapped[str] = mapped_column(String(200), default="")
    acknowledge_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(200), default="")
    resolve_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    resolution: Mapped[str] = mapped_column(String(500), default="")
    work_order_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    # Copied from the cover so filters and tenancy need no join (and survive the cover's edits).
    cover_kind: Mapped[int] = mapped_column(Integer)
    area_cell: Mapped[str] = mapped_column(String(16), index=True)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)


class WorkOrderRow(Base):
    __tablename__ = "work_orders"

    work_order_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    cover_id: Mapped[str] = mapped_column(ForeignKey("covers.cover_id"), index=True)
    kind: Mapped[int] = mapped_column(Integer)
    assignee_organization: Mapped[str] = mapped_column(String(64), index=True)
    planned_start_time: Mapped[datetime] = mapped_column(UtcDateTime())
    planned_end_time: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[int] = mapped_column(Integer, index=True)
    # The alarm ids it handles (without `alarms/`).
    alarm_ids: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(2000))
    # Every status change: [{"status", "actor", "time" (RFC 3339), "note"}].
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(200))
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class FeedCursorRow(FeedCursorMixin, Base):
    __tablename__ = "feed_cursors"
