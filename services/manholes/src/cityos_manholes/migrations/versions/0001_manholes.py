"""manholes: covers, alarms, work orders, feed cursors

Revision ID: manholes_0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "manholes_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_ALARM = sa.text("state <> 3")  # AlarmState.ALARM_STATE_RESOLVED


def upgrade() -> None:
    op.create_table(
        "covers",
        sa.Column("cover_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("road_class", sa.Integer(), nullable=False),
        sa.Column("material", sa.String(50), nullable=False),
        sa.Column("install_angle_deg", sa.Float(), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=True),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("tilt_deg", sa.Float(), nullable=False),
        sa.Column("displaced", sa.Boolean(), nullable=False),
        sa.Column("water_level_m", sa.Float(), nullable=True),
        sa.Column("gases", sa.JSON(), nullable=False),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("smoke", sa.Boolean(), nullable=False),
        sa.Column("battery_v", sa.Float(), nullable=True),
        sa.Column("rsrp_dbm", sa.Float(), nullable=True),
        sa.Column("reading_time", UtcDateTime(), nullable=True),
        sa.Column("heard_time", UtcDateTime(), nullable=True),
        sa.Column("heartbeat_missed", sa.Boolean(), nullable=False),
        sa.Column("risk_score", sa.Float(), nullable=True),
        sa.Column("risk_source", sa.Integer(), nullable=False),
        sa.Column("risk_model_version", sa.String(100), nullable=False),
        sa.Column("risk_time", UtcDateTime(), nullable=True),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("operator_organization", sa.String(64), nullable=False),
        sa.Column("maintainer_organization", sa.String(64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("cover_id", name=op.f("pk_covers")),
        sa.UniqueConstraint("device_id", name=op.f("uq_covers_device_id")),
    )
    for column in (
        "kind",
        "heard_time",
        "risk_score",
        "owner_organization",
        "operator_organization",
        "maintainer_organization",
        "area_cell",
    ):
        op.create_index(op.f(f"ix_covers_{column}"), "covers", [column])
    op.create_table(
        "alarms",
        sa.Column("alarm_id", sa.String(63), nullable=False),
        sa.Column("cover_id", sa.String(63), nullable=False),
        sa.Column("condition", sa.Integer(), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("raise_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("update_count", sa.Integer(), nullable=False),
        sa.Column("cleared", sa.Boolean(), nullable=False),
        sa.Column("clear_time", UtcDateTime(), nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=False),
        sa.Column("acknowledge_time", UtcDateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=False),
        sa.Column("resolve_time", UtcDateTime(), nullable=True),
        sa.Column("resolution", sa.String(500), nullable=False),
        sa.Column("work_order_id", sa.String(63), nullable=True),
        sa.Column("cover_kind", sa.Integer(), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["cover_id"], ["covers.cover_id"], name=op.f("fk_alarms_cover_id_covers")),
        sa.PrimaryKeyConstraint("alarm_id", name=op.f("pk_alarms")),
    )
    for column in ("cover_id", "state", "raise_time", "work_order_id", "area_cell", "owner_organization"):
        op.create_index(op.f(f"ix_alarms_{column}"), "alarms", [column])
    op.create_index(
        "uq_alarms_open_cover_condition",
        "alarms",
        ["cover_id", "condition"],
        unique=True,
        postgresql_where=OPEN_ALARM,
        sqlite_where=OPEN_ALARM,
    )
    op.create_table(
        "work_orders",
        sa.Column("work_order_id", sa.String(63), nullable=False),
        sa.Column("cover_id", sa.String(63), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("assignee_organization", sa.String(64), nullable=False),
        sa.Column("planned_start_time", UtcDateTime(), nullable=False),
        sa.Column("planned_end_time", UtcDateTime(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("alarm_ids", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cover_id"], ["covers.cover_id"], name=op.f("fk_work_orders_cover_id_covers")
        ),
        sa.PrimaryKeyConstraint("work_order_id", name=op.f("pk_work_orders")),
    )
    for column in ("cover_id", "assignee_organization", "status"):
        op.create_index(op.f(f"ix_work_orders_{column}"), "work_orders", [column])
    op.create_table(
        "feed_cursors",
        sa.Column("feed", sa.String(63), nullable=False),
        sa.Column("cursor", sa.String(200), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("feed", name=op.f("pk_feed_cursors")),
    )


def downgrade() -> None:
    op.drop_table("feed_cursors")
    op.drop_table("work_orders")
    op.drop_table("alarms")
    op.drop_table("covers")
