"""The devices service's tables (its own database; the platform's tables sit beside them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, BigId, LocatedMixin, OwnedMixin, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DeviceModelRow(Base):
    __tablename__ = "device_models"

    model_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    type: Mapped[str] = mapped_column(String(63), index=True)
    vendor: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(200))
    supported_commands: Mapped[list[str]] = mapped_column(JSON)
    # [{"name", "unit", "min", "max"}]; min/max may be null.
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    reporting_interval_s: Mapped[float] = mapped_column(Float)
    owner_organization: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class DeviceRow(OwnedMixin, LocatedMixin, Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("device_models.model_id"), index=True)
    type: Mapped[str] = mapped_column(String(63), index=True)
    serial_number: Mapped[str] = mapped_column(String(128))
    firmware_version: Mapped[str] = mapped_column(String(64), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[int] = mapped_column(Integer, index=True)
    # The subscription, as the proto's JSON form; radio and slice are columns for queries.
    subscription: Mapped[dict[str, Any]] = mapped_column(JSON)
    radio_type: Mapped[int] = mapped_column(Integer, index=True)
    slice_sst: Mapped[int] = mapped_column(Integer)
    slice_sd: Mapped[str] = mapped_column(String(6))
    psm_periodic_update_s: Mapped[float] = mapped_column(Float)
    # The last radio report.
    last_radio: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_rsrp_dbm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Not indexed: it moves with every uplink, and unindexed it leaves those updates HOT (migration 0008).
    last_seen_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The latest reported value of each metric (the reported side of the twin).
    reported: Mapped[dict[str, Any]] = mapped_column(JSON)
    reported_version: Mapped[int] = mapped_column(BigInteger, default=0)
    # The desired side of the twin, its version, and the version last handed to the device.
    desired: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    desired_version: Mapped[int] = mapped_column(BigInteger, default=0)
    desired_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    delivered_desired_version: Mapped[int] = mapped_column(BigInteger, default=0)
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (Index("ix_devices_radio_slice", "radio_type", "slice_sst", "slice_sd"),)


class CredentialRow(Base):
    """A device credential: an access token (only the SHA-256 of its secret is kept) or an X.509
    certificate signed by the device CA (its fingerprint)."""

    __tablename__ = "device_credentials"

    credential_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    # A token's: SHA-256 of its secret. A certificate's: SHA-256 of its DER encoding.
    secret_sha256: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(8), default="token")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class TelemetryRow(Base):
    """The durable telemetry spool: accepted readings in the order they became durable (`seq`).

    Bounded: rows older than the retention window are pruned once the lake has them (see ADR-0004).
    """

    __tablename__ = "telemetry"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(63))
    sequence: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    values: Mapped[dict[str, float]] = mapped_column(JSON)
    type: Mapped[str] = mapped_column(String(63))
    owner_organization: Mapped[str] = mapped_column(String(64))
    area_cell: Mapped[str] = mapped_column(String(16))
    received_time: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (UniqueConstraint("device_id", "sequence", name="uq_telemetry_device_sequence"),)


class CommandRow(Base):
    """A command to a device, from queued to acked, failed or expired."""

    __tablename__ = "device_commands"

    command_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    command: Mapped[str] = mapped_column(String(63))
    parameters: Mapped[dict[str, str]] = mapped_column(JSON)
    status: Mapped[int] = mapped_column(Integer)
    owner_organization: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    send_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    ack_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    result: Mapped[str] = mapped_column(String(1024))
    job_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)

    __table_args__ = (Index("ix_device_commands_device_status", "device_id", "status", "create_time"),)


class JobRow(Base):
    """An operation over many devices, started at a rollout rate (see jobs.py)."""

    __tablename__ = "device_jobs"

    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    command: Mapped[str] = mapped_column(String(63))
    parameters: Mapped[dict[str, str]] = mapped_column(JSON)
    command_ttl_s: Mapped[float] = mapped_column(Float)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    rollout_per_minute: Mapped[int] = mapped_column(Integer)
    abort_failure_ratio: Mapped[float] = mapped_column(Float)
    abort_min_finished: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime())
    window_end: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    city_wide: Mapped[bool] = mapped_column(Boolean)
    requested_by: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    # `deviceModels/{m}/firmwareImages/{v}` for a firmware job; "" for a command job.
    firmware_image: Mapped[str] = mapped_column(String(200), default="")
    # The patch of a desired-state job; empty for the others.
    desired_patch: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class JobTargetRow(Base):
    """One device of a job: fixed when the job starts; `command_id` once it is started."""

    __tablename__ = "device_job_targets"

    job_id: Mapped[str] = mapped_column(ForeignKey("device_jobs.job_id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    command_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # For a desired-state job: the desired version the job's patch produced on this device.
    desired_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FirmwareImageRow(Base):
    """A firmware package of a device model."""

    __tablename__ = "device_firmware_images"

    model_id: Mapped[str] = mapped_column(ForeignKey("device_models.model_id"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_uri: Mapped[str] = mapped_column(String(2048))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    owner_organization: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
