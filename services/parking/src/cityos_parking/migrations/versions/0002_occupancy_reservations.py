"""parking: live occupancy (sensor state, heartbeat, gate counts, feed cursor), reservations, sessions

Revision ID: parking_0002
Revises: parking_0001
Create Date: 2026-11-29

On PostgreSQL an exclusion constraint (btree_gist) makes two live holds of one spot with overlapping
windows impossible, whatever the concurrency; SQLite serialises writers, and the service checks first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "parking_0002"
down_revision: str | None = "parking_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# ReservationState HELD and CHECKED_IN: the states that hold a spot.
LIVE_STATES = "(1, 2)"


def upgrade() -> None:
    for column in ("capacity", "gate_occupied", "announced_status"):
        op.add_column("sites", sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("spots", sa.Column("sensor_status", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("spots", sa.Column("sensor_time", UtcDateTime(), nullable=True))
    op.add_column("spots", sa.Column("sensor_heard_time", UtcDateTime(), nullable=True))
    op.add_column(
        "spots", sa.Column("forbidden_parking", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(op.f("ix_spots_sensor_heard_time"), "spots", ["sensor_heard_time"])
    op.create_table(
        "feed_cursors",
        sa.Column("feed", sa.String(63), nullable=False),
        sa.Column("cursor", sa.String(200), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("feed", name=op.f("pk_feed_cursors")),
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(63), nullable=False),
        sa.Column("site_id", sa.String(63), nullable=False),
        sa.Column("spot_id", sa.String(63), nullable=True),
        sa.Column("start_time", UtcDateTime(), nullable=False),
        sa.Column("end_time", UtcDateTime(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("hold_expire_time", UtcDateTime(), nullable=False),
        sa.Column("plate", sa.String(16), nullable=True),
        sa.Column("plate_pseudonym", sa.String(64), nullable=False),
        sa.Column("vehicle_type", sa.String(32), nullable=False),
        sa.Column("permit", sa.String(63), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("holder_organization", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], name=op.f("fk_reservations_site_id_sites")),
        sa.ForeignKeyConstraint(["spot_id"], ["spots.spot_id"], name=op.f("fk_reservations_spot_id_spots")),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_reservations")),
    )
    for column in (
        "site_id",
        "spot_id",
        "state",
        "hold_expire_time",
        "plate_pseudonym",
        "holder",
        "update_time",
    ):
        op.create_index(op.f(f"ix_reservations_{column}"), "reservations", [column])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE reservations ADD CONSTRAINT ex_reservations_spot_window EXCLUDE USING gist "
            "(spot_id WITH =, tstzrange(start_time, end_time, '[)') WITH &&) "
            f"WHERE (spot_id IS NOT NULL AND state IN {LIVE_STATES})"
        )
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("site_id", sa.String(63), nullable=False),
        sa.Column("spot_id", sa.String(63), nullable=True),
        sa.Column("plate", sa.String(16), nullable=True),
        sa.Column("plate_pseudonym", sa.String(64), nullable=False),
        sa.Column("vehicle_type", sa.String(32), nullable=False),
        sa.Column("permit", sa.String(63), nullable=False),
        sa.Column("source", sa.Integer(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=False),
        sa.Column("end_time", UtcDateTime(), nullable=True),
        sa.Column("fee", sa.JSON(), nullable=True),
        sa.Column("reservation_id", sa.String(63), nullable=True),
        sa.Column("overstay", sa.Boolean(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("holder_organization", sa.String(63), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], name=op.f("fk_sessions_site_id_sites")),
        sa.ForeignKeyConstraint(["spot_id"], ["spots.spot_id"], name=op.f("fk_sessions_spot_id_spots")),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    for column in ("site_id", "spot_id", "state", "plate_pseudonym", "holder", "update_time"):
        op.create_index(op.f(f"ix_sessions_{column}"), "sessions", [column])


def downgrade() -> None:
    op.drop_table("sessions")
    op.drop_table("reservations")
    op.drop_table("feed_cursors")
    op.drop_index(op.f("ix_spots_sensor_heard_time"), "spots")
    with op.batch_alter_table("spots") as batch:
        for column in ("forbidden_parking", "sensor_heard_time", "sensor_time", "sensor_status"):
            batch.drop_column(column)
    with op.batch_alter_table("sites") as batch:
        for column in ("announced_status", "gate_occupied", "capacity"):
            batch.drop_column(column)
