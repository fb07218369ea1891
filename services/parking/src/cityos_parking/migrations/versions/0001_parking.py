"""parking: sites, groups, spots

Revision ID: parking_0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "parking_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("site_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("detection_type", sa.Integer(), nullable=False),
        sa.Column("allowed_vehicle_types", sa.JSON(), nullable=False),
        sa.Column("tariff", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("operator_organization", sa.String(64), nullable=False),
        sa.Column("maintainer_organization", sa.String(64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_sites")),
    )
    for column in (
        "kind",
        "owner_organization",
        "operator_organization",
        "maintainer_organization",
        "area_cell",
    ):
        op.create_index(op.f(f"ix_sites_{column}"), "sites", [column])
    op.create_table(
        "groups",
        sa.Column("group_id", sa.String(63), nullable=False),
        sa.Column("site_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], name=op.f("fk_groups_site_id_sites")),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_groups")),
    )
    op.create_index(op.f("ix_groups_site_id"), "groups", ["site_id"])
    op.create_table(
        "spots",
        sa.Column("spot_id", sa.String(63), nullable=False),
        sa.Column("site_id", sa.String(63), nullable=False),
        sa.Column("group_id", sa.String(63), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("sensor_id", sa.String(63), nullable=True),
        sa.Column("width_m", sa.Float(), nullable=False),
        sa.Column("length_m", sa.Float(), nullable=False),
        sa.Column("allowed_vehicle_types", sa.JSON(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("status_time", UtcDateTime(), nullable=False),
        sa.Column("status_reason", sa.String(200), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], name=op.f("fk_spots_site_id_sites")),
        sa.ForeignKeyConstraint(["group_id"], ["groups.group_id"], name=op.f("fk_spots_group_id_groups")),
        sa.PrimaryKeyConstraint("spot_id", name=op.f("pk_spots")),
        sa.UniqueConstraint("sensor_id", name=op.f("uq_spots_sensor_id")),
    )
    for column in ("site_id", "group_id", "status", "area_cell"):
        op.create_index(op.f(f"ix_spots_{column}"), "spots", [column])


def downgrade() -> None:
    op.drop_table("spots")
    op.drop_table("groups")
    op.drop_table("sites")
