"""platform tables: outbox, idempotency keys, consumer checkpoints

Revision ID: platform_0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import BigId, UtcDateTime

revision: str = "platform_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cityos_outbox",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("owner_organization", sa.String(64), nullable=False),
        sa.Column("area_cell", sa.String(16), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("traceparent", sa.String(64), nullable=False),
        sa.Column("payload_type", sa.String(256), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_cityos_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_cityos_outbox_event_id")),
    )
    op.create_index("ix_cityos_outbox_owner_seq", "cityos_outbox", ["owner_organization", "seq"])
    op.create_table(
        "cityos_idempotency",
        sa.Column("organization", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("method", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "organization", "subject", "method", "request_id", name=op.f("pk_cityos_idempotency")
        ),
    )
    op.create_index(op.f("ix_cityos_idempotency_created_at"), "cityos_idempotency", ["created_at"])
    op.create_table(
        "cityos_consumer_checkpoints",
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("cursor", sa.String(128), nullable=False),
        sa.Column("events_processed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_cityos_consumer_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("cityos_consumer_checkpoints")
    op.drop_index(op.f("ix_cityos_idempotency_created_at"), table_name="cityos_idempotency")
    op.drop_table("cityos_idempotency")
    op.drop_index("ix_cityos_outbox_owner_seq", table_name="cityos_outbox")
    op.drop_table("cityos_outbox")
