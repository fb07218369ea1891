"""devices: commands

Revision ID: devices_0002
Revises: devices_0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "devices_0002"
down_revision: str | None = "devices_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_commands",
        sa.Column("command_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("command", sa.String(63), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.Column("send_time", UtcDateTime(), nullable=True),
        sa.Column("ack_time", UtcDateTime(), nullable=True),
        sa.Column("result", sa.String(1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_device_commands_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_device_commands")),
    )
    op.create_index(
        "ix_device_commands_device_status", "device_commands", ["device_id", "status", "create_time"]
    )


def downgrade() -> None:
    op.drop_table("device_commands")
