"""devices: X.509 credentials beside tokens

Revision ID: devices_0005
Revises: devices_0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "devices_0005"
down_revision: str | None = "devices_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_credentials") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="token"))
        batch.create_index(batch.f("ix_device_credentials_secret_sha256"), ["secret_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("device_credentials") as batch:
        batch.drop_index(batch.f("ix_device_credentials_secret_sha256"))
        batch.drop_column("kind")
