"""devices: the desired side of the twin and versions

Revision ID: devices_0004
Revises: devices_0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "devices_0004"
down_revision: str | None = "devices_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("reported_version", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("desired", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("desired_version", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("desired_time", UtcDateTime(), nullable=True))
        batch.add_column(
            sa.Column("delivered_desired_version", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        for column in (
            "delivered_desired_version",
            "desired_time",
            "desired_version",
            "desired",
            "reported_version",
        ):
            batch.drop_column(column)
