"""markers: a maintainer organization, empty for existing rows

Revision ID: markers_0002
Revises: markers_0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "markers_0002"
down_revision: str | None = "markers_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("markers") as batch:
        batch.add_column(
            sa.Column("maintainer_organization", sa.String(64), nullable=False, server_default="")
        )
        batch.create_index(batch.f("ix_markers_maintainer_organization"), ["maintainer_organization"])


def downgrade() -> None:
    with op.batch_alter_table("markers") as batch:
        batch.drop_index(batch.f("ix_markers_maintainer_organization"))
        batch.drop_column("maintainer_organization")
