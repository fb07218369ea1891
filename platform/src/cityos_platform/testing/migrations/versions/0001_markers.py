"""markers

Revision ID: markers_0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "markers_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "markers",
        sa.Column("marker_id", sa.String(63), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("operator_organization", sa.String(64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("marker_id", name=op.f("pk_markers")),
    )
    op.create_index(op.f("ix_markers_owner_organization"), "markers", ["owner_organization"])
    op.create_index(op.f("ix_markers_operator_organization"), "markers", ["operator_organization"])
    op.create_index(op.f("ix_markers_area_cell"), "markers", ["area_cell"])


def downgrade() -> None:
    op.drop_table("markers")
