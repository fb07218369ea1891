"""devices: models, devices, credentials, telemetry spool

Revision ID: devices_0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import BigId, UtcDateTime

revision: str = "devices_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_models",
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("vendor", sa.String(200), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("supported_commands", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("reporting_interval_s", sa.Float(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_device_models")),
    )
    op.create_index(op.f("ix_device_models_type"), "device_models", ["type"])
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("serial_number", sa.String(128), nullable=False),
        sa.Column("firmware_version", sa.String(64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("subscription", sa.JSON(), nullable=False),
        sa.Column("radio_type", sa.Integer(), nullable=False),
        sa.Column("slice_sst", sa.Integer(), nullable=False),
        sa.Column("slice_sd", sa.String(6), nullable=False),
        sa.Column("psm_periodic_update_s", sa.Float(), nullable=False),
        sa.Column("last_radio", sa.JSON(), nullable=False),
        sa.Column("last_rsrp_dbm", sa.Integer(), nullable=True),
        sa.Column("last_seen_time", UtcDateTime(), nullable=True),
        sa.Column("reported", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("operator_organization", sa.String(64), nullable=False),
        sa.Column("maintainer_organization", sa.String(64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["device_models.model_id"], name=op.f("fk_devices_model_id_device_models")
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    for column in (
        "model_id",
        "type",
        "firmware_version",
        "status",
        "radio_type",
        "last_seen_time",
        "owner_organization",
        "operator_organization",
        "maintainer_organization",
        "area_cell",
    ):
        op.create_index(op.f(f"ix_devices_{column}"), "devices", [column])
    op.create_index("ix_devices_radio_slice", "devices", ["radio_type", "slice_sst", "slice_sd"])
    op.create_table(
        "device_credentials",
        sa.Column("credential_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("revoke_time", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_device_credentials_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("credential_id", name=op.f("pk_device_credentials")),
    )
    op.create_index(op.f("ix_device_credentials_device_id"), "device_credentials", ["device_id"])
    op.create_table(
        "telemetry",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.Column("received_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_telemetry")),
        sa.UniqueConstraint("device_id", "sequence", name="uq_telemetry_device_sequence"),
    )
    op.create_index(op.f("ix_telemetry_received_time"), "telemetry", ["received_time"])


def downgrade() -> None:
    op.drop_table("telemetry")
    op.drop_table("device_credentials")
    op.drop_table("devices")
    op.drop_table("device_models")
