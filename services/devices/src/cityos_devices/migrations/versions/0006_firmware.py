"""devices: firmware images; jobs may update firmware

Revision ID: devices_0006
Revises: devices_0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "devices_0006"
down_revision: str | None = "devices_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_firmware_images",
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("package_uri", sa.String(2048), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["device_models.model_id"],
            name=op.f("fk_device_firmware_images_model_id_device_models"),
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_device_firmware_images")),
    )
    with op.batch_alter_table("device_jobs") as batch:
        batch.add_column(sa.Column("firmware_image", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("device_jobs") as batch:
        batch.drop_column("firmware_image")
    op.drop_table("device_firmware_images")
