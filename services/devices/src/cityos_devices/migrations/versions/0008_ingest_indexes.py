"""devices: indexes that every ingested batch paid for and nothing needed

- `ix_devices_last_seen_time`: every batch moves its devices' last-seen time, and with that column
  indexed no update of a device row could be a HOT update (each wrote a new entry into all twelve
  indexes of `devices`). Without it, and with free space kept in each page (fillfactor 70 on
  PostgreSQL), the last-seen update rewrites the row in place. The "last seen before/after" filters
  of ListDevices become a filter on the rows the other conditions select.
- `ix_telemetry_received_time`: the spool pruner finds the end of the retention window by walking
  the spool in `seq` order (its primary key) instead.

Revision ID: devices_0008
Revises: devices_0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "devices_0008"
down_revision: str | None = "devices_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_devices_last_seen_time", table_name="devices")
    op.drop_index("ix_telemetry_received_time", table_name="telemetry")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices RESET (fillfactor)")
    op.create_index("ix_telemetry_received_time", "telemetry", ["received_time"])
    op.create_index("ix_devices_last_seen_time", "devices", ["last_seen_time"])
