"""devices: jobs and their targets; commands remember their job

Revision ID: devices_0003
Revises: devices_0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "devices_0003"
down_revision: str | None = "devices_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_commands") as batch:
        batch.add_column(sa.Column("job_id", sa.String(63), nullable=True))
        batch.create_index(batch.f("ix_device_commands_job_id"), ["job_id"])
    op.create_table(
        "device_jobs",
        sa.Column("job_id", sa.String(63), nullable=False),
        sa.Column("command", sa.String(63), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("command_ttl_s", sa.Float(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("rollout_per_minute", sa.Integer(), nullable=False),
        sa.Column("abort_failure_ratio", sa.Float(), nullable=False),
        sa.Column("abort_min_finished", sa.Integer(), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("city_wide", sa.Boolean(), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_device_jobs")),
    )
    op.create_index(op.f("ix_device_jobs_state"), "device_jobs", ["state"])
    op.create_index(op.f("ix_device_jobs_owner_organization"), "device_jobs", ["owner_organization"])
    op.create_table(
        "device_job_targets",
        sa.Column("job_id", sa.String(63), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("command_id", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["device_jobs.job_id"], name=op.f("fk_device_job_targets_job_id_device_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", "device_id", name=op.f("pk_device_job_targets")),
    )


def downgrade() -> None:
    op.drop_table("device_job_targets")
    op.drop_table("device_jobs")
    with op.batch_alter_table("device_commands") as batch:
        batch.drop_index(batch.f("ix_device_commands_job_id"))
        batch.drop_column("job_id")
