"""The streetlights service's tables (its own database; the platform's tables sit beside them).

The topology: a light hangs on a feeder (one circuit of a cabinet) and may belong to a group; a group
may name a schedule. The light keeps its cabinet too (copied from its feeder), so outages and energy
find a cabinet's lights without a join. Every table the service needs is here from the first migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, FeedCursorMixin, LocatedMixin, OwnedMixin, UtcDateTime

# FaultState.FAULT_STATE_CLEARED (the partial unique index names it as a literal).
FAULT_CLEARED = 3
OPEN_FAULT = text(f"state <> {FAULT_CLEARED}")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LightModelRow(OwnedMixin, Base):
    __tablename__ = "light_models"

    light_model_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    lamp_technology: Mapped[int] = mapped_column(Integer)
    rated_power_w: Mapped[float] = mapped_column(Float)
    standby_power_w: Mapped[float] = mapped_column(Float, default=0.0)
    luminous_flux_lm: Mapped[float] = mapped_column(Float, default=0.0)
    color_temperature_k: Mapped[int] = mapped_column(Integer, default=0)
    working_life_h: Mapped[int] = mapped_column(Integer, default=0)
    minimum_dim_level: Mapped[int] = mapped_column(Integer, default=0)
    manufacturer: Mapped[str] = mapped_column(String(100), default="")
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class CabinetRow(OwnedMixin, LocatedMixin, Base):
    __tablename__ = "cabinets"

    cabinet_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    working_mode: Mapped[int] = mapped_column(Integer)
    # The bound controller's device id (without `devices/`), unique: one controller per cabinet.
    device_id: Mapped[str | None] = mapped_column(String(63), nullable=True, unique=True)
    serial_number: Mapped[str] = mapped_column(String(100), default="")
    maximum_power_w: Mapped[float] = mapped_column(Float, default=0.0)
    # -- the live state, from the controller's readings ----------------------------------------------
    voltage_l1_v: Mapped[float | None] = mapped_column(Float, nullable=True)
    voltage_l2_v: Mapped[float | None] = mapped_column(Float, nullable=True)
    voltage_l3_v: Mapped[float | None] = mapped_column(Float, nullable=True)
    active_power_w: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_wh: Mapped[float | None] = mapped_column(Float, nullable=True)
    power_factor: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Breaker state by circuit number (as text keys, JSON objects have no integer keys): true closed.
    circuits: Mapped[dict[str, bool]] = mapped_column(JSON)
    door_open: Mapped[bool] = mapped_column(Boolean, default=False)
    outage: Mapped[bool] = mapped_column(Boolean, default=False)
    reading_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heard_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    heartbeat_missed: Mapped[bool] = mapped_column(Boolean, default=False)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class FeederRow(Base):
    __tablename__ = "feeders"
    __table_args__ = (UniqueConstraint("cabinet_id", "circuit", name="uq_feeders_cabinet_circuit"),)

    feeder_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    cabinet_id: Mapped[str] = mapped_column(ForeignKey("cabinets.cabinet_id"), index=True)
    circuit: Mapped[int] = mapped_column(Integer)
    phase: Mapped[int] = mapped_column(Integer)
    # From the cabinet's readings: its breaker closed and its phase(s) live (True until told otherwise).
    energized: Mapped[bool] = mapped_column(Boolean, default=True)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ScheduleRow(OwnedMixin, Base):
    __tablename__ = "schedules"

    schedule_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64))
    # The ScheduleStep messages in the proto's JSON form (validated on the way in).
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class GroupRow(OwnedMixin, Base):
    __tablename__ = "groups"

    group_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    cabinet_id: Mapped[str | None] = mapped_column(
        ForeignKey("cabinets.cabinet_id"), nullable=True, index=True
    )
    schedule_id: Mapped[str | None] = mapped_column(
        ForeignKey("schedules.schedule_id"), nullable=True, index=True
    )
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class LightRow(OwnedMixin, LocatedMixin, Base):
    __tablename__ = "lights"

    light_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    light_model_id: Mapped[str] = mapped_column(ForeignKey("light_models.light_model_id"), index=True)
    feeder_id: Mapped[str | None] = mapped_column(ForeignKey("feeders.feeder_id"), nullable=True, index=True)
    # The feeder's cabinet, copied (kept in step when the feeder moves).
    cabinet_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id"), nullable=True, index=True)
    # The bound controller's device id (without `devices/`), unique: one controller per light.
    device_id: Mapped[str | None] = mapped_column(String(63), nullable=True, unique=True)
    pole_number: Mapped[str] = mapped_column(String(50), default="")
    street: Mapped[str] = mapped_column(String(200), default="", index=True)
    location_category: Mapped[str] = mapped_column(String(32), default="")
    lantern_height_m: Mapped[float] = mapped_column(Float, default=0.0)
    last_lamp_change_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    reported_status: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_timeout_s: Mapped[int] = mapped_column(Integer, default=7200)
    # -- the live state, from the controller's readings ----------------------------------------------
    power_state: Mapped[int] = mapped_column(Integer, default=0)
    dim_level: Mapped[float | None] = mapped_column(Float, nullable=True)
    power_w: Mapped[float | None] = mapped_column(Float, nullable=True)
    voltage_v: Mapped[float | None] = mapped_column(Float, nullable=True)
    current_a: Mapped[float | None] = mapped_column(Float, nullable=True)
    power_factor: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_wh: Mapped[float | None] = mapped_column(Float, nullable=True)
    operating_hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    switch_count: Mapped[float | None] = mapped_column(Float, nullable=True)
    # ControllerFault values the controller reports now.
    controller_faults: Mapped[list[int]] = mapped_column(JSON)
    reading_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heard_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    heartbeat_missed: Mapped[bool] = mapped_column(Boolean, default=False)
    # -- what is in force: the desired state the service last set on the twin -------------------------
    desired_level: Mapped[int | None] = mapped_column(Integer, nullable=True)
    desired_source: Mapped[int] = mapped_column(Integer, default=0)
    desired_schedule_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    desired_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    desired_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    next_change_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # A manual override (ControlService): the control, and when it ends (None: it does not).
    override_control_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    override_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ControlRow(Base):
    __tablename__ = "controls"

    control_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    # The LightSelector in the proto's JSON form.
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    dim_level: Mapped[int] = mapped_column(Integer)
    override_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    rollout_per_minute: Mapped[int] = mapped_column(Integer, default=0)
    abort_failure_ratio: Mapped[float] = mapped_column(Float, default=0.0)
    abort_min_finished: Mapped[int] = mapped_column(Integer, default=0)
    command_ttl_s: Mapped[int] = mapped_column(Integer)
    # The devices job (without `jobs/`); None when no selected light had a controller.
    job_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    lights: Mapped[int] = mapped_column(Integer)
    without_device: Mapped[int] = mapped_column(Integer)
    # The job's latest counts as last read: total, started, succeeded, failed.
    progress: Mapped[dict[str, int]] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(200))
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class FaultRow(Base):
    __tablename__ = "faults"
    # One open fault per subject and kind: a reading updates it rather than raising a second one.
    __table_args__ = (
        Index(
            "uq_faults_open_subject_kind",
            "subject",
            "kind",
            unique=True,
            postgresql_where=OPEN_FAULT,
            sqlite_where=OPEN_FAULT,
        ),
    )

    fault_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[int] = mapped_column(Integer, index=True)
    # `lights/{id}`, `feeders/{id}` or `cabinets/{id}`.
    subject: Mapped[str] = mapped_column(String(80), index=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    # For outages: the light ids (without `lights/`) it darkens.
    affected_lights: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(String(500), default="")
    value: Mapped[float] = mapped_column(Float, default=0.0)
    expected: Mapped[float] = mapped_column(Float, default=0.0)
    raise_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
    clear_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    acknowledged_by: Mapped[str] = mapped_column(String(200), default="")
    acknowledge_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Copied from the subject so filters and tenancy need no join.
    area_cell: Mapped[str] = mapped_column(String(16), index=True)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    operator_organization: Mapped[str] = mapped_column(String(64), default="")
    maintainer_organization: Mapped[str] = mapped_column(String(64), default="")


class EnergyHourRow(Base):
    """A light's energy in one UTC hour, with the group and cabinet it belonged to then."""

    __tablename__ = "energy_hours"
    __table_args__ = (
        Index("ix_energy_hours_group_hour", "group_id", "hour"),
        Index("ix_energy_hours_cabinet_hour", "cabinet_id", "hour"),
    )

    light_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    group_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    cabinet_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    energy_wh: Mapped[float] = mapped_column(Float, default=0.0)
    # What the same burning time would have taken at the model's rated power.
    full_power_wh: Mapped[float] = mapped_column(Float, default=0.0)
    burning_s: Mapped[float] = mapped_column(Float, default=0.0)


class FeedCursorRow(FeedCursorMixin, Base):
    __tablename__ = "feed_cursors"
