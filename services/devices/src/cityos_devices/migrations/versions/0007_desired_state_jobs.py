"""devices: desired-state jobs

Revision ID: devices_0007
Revises: devices_0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "devices_0007"
down_revision: str | None = "devices_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_jobs") as batch:
        batch.add_column(sa.Column("desired_patch", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("device_job_targets") as batch:
        batch.add_column(sa.Column("desired_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device_job_targets") as batch:
        batch.drop_column("desired_version")
    with op.batch_alter_table("device_jobs") as batch:
        batch.drop_column("desired_patch")
