"""datashare: datasets, agreements and their transitions, receipts, exports

Revision ID: datashare_0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "datashare_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "agreement_transitions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("agreement_id", sa.String(length=36), nullable=False),
        sa.Column("from_state", sa.Integer(), nullable=False),
        sa.Column("to_state", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("actor_organization", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreement_transitions")),
    )
    with op.batch_alter_table("agreement_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agreement_transitions_agreement_id"), ["agreement_id"], unique=False
        )

    op.create_table(
        "agreements",
        sa.Column("agreement_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("consumer_organization", sa.String(length=64), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("requested_terms", sa.JSON(), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", name=op.f("pk_agreements")),
    )
    with op.batch_alter_table("agreements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agreements_consumer_organization"), ["consumer_organization"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_agreements_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_agreements_expire_time"), ["expire_time"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_agreements_owner_organization"), ["owner_organization"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_agreements_state"), ["state"], unique=False)

    op.create_table(
        "datasets",
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("data_model", sa.String(length=100), nullable=False),
        sa.Column("update_frequency", sa.String(length=50), nullable=False),
        sa.Column("licence", sa.String(length=50), nullable=False),
        sa.Column("time_column", sa.String(length=63), nullable=False),
        sa.Column("area_column", sa.String(length=63), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("open_data", sa.JSON(), nullable=True),
        sa.Column("registered_by", sa.String(length=255), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("data_update_time", UtcDateTime(), nullable=True),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_datasets_owner_organization"), ["owner_organization"], unique=False
        )

    op.create_table(
        "exports",
        sa.Column("export_id", sa.String(length=36), nullable=False),
        sa.Column("agreement_id", sa.String(length=36), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("url_expire_time", UtcDateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("export_id", name=op.f("pk_exports")),
    )
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_exports_agreement_id"), ["agreement_id"], unique=False)
        batch_op.create_index("ix_exports_live", ["agreement_id", "deleted"], unique=False)

    op.create_table(
        "receipts",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("consumer_organization", sa.String(length=64), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("agreement_id", sa.String(length=36), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("query_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_receipts")),
    )
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_receipts_agreement_id"), ["agreement_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_receipts_consumer_organization"), ["consumer_organization"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_receipts_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_receipts_owner_organization"), ["owner_organization"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_receipts_owner_organization"))
        batch_op.drop_index(batch_op.f("ix_receipts_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_receipts_consumer_organization"))
        batch_op.drop_index(batch_op.f("ix_receipts_agreement_id"))

    op.drop_table("receipts")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_index("ix_exports_live")
        batch_op.drop_index(batch_op.f("ix_exports_agreement_id"))

    op.drop_table("exports")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_owner_organization"))

    op.drop_table("datasets")
    with op.batch_alter_table("agreements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agreements_state"))
        batch_op.drop_index(batch_op.f("ix_agreements_owner_organization"))
        batch_op.drop_index(batch_op.f("ix_agreements_expire_time"))
        batch_op.drop_index(batch_op.f("ix_agreements_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_agreements_consumer_organization"))

    op.drop_table("agreements")
    with op.batch_alter_table("agreement_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agreement_transitions_agreement_id"))

    op.drop_table("agreement_transitions")
