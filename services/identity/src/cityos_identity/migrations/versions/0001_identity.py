"""identity: organizations, users, service accounts, API keys, audit trail

Revision ID: identity_0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import BigId, UtcDateTime

revision: str = "identity_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("organization_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(63), nullable=True),
        sa.Column("concession", sa.JSON(), nullable=True),
        sa.Column("concession_start", UtcDateTime(), nullable=True),
        sa.Column("concession_end", UtcDateTime(), nullable=True),
        sa.Column("access_ended_time", UtcDateTime(), nullable=True),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["organizations.organization_id"],
            name=op.f("fk_organizations_parent_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_organizations")),
    )
    op.create_index(op.f("ix_organizations_kind"), "organizations", ["kind"])
    op.create_index(op.f("ix_organizations_concession_end"), "organizations", ["concession_end"])
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(63), nullable=False),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("organization_id", sa.String(63), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.organization_id"],
            name=op.f("fk_users_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_index(op.f("ix_users_organization_id"), "users", ["organization_id"])
    op.create_table(
        "service_accounts",
        sa.Column("account_id", sa.String(63), nullable=False),
        sa.Column("client_id", sa.String(70), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("organization_id", sa.String(63), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.organization_id"],
            name=op.f("fk_service_accounts_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_service_accounts")),
        sa.UniqueConstraint("client_id", name=op.f("uq_service_accounts_client_id")),
    )
    op.create_index(op.f("ix_service_accounts_organization_id"), "service_accounts", ["organization_id"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("organization_id", sa.String(63), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("quota_per_minute", sa.Integer(), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("creator", sa.String(100), nullable=False),
        sa.Column("revoke_time", UtcDateTime(), nullable=True),
        sa.Column("exchange_count", sa.BigInteger(), nullable=False),
        sa.Column("last_used_time", UtcDateTime(), nullable=True),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.organization_id"],
            name=op.f("fk_api_keys_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_keys_secret_sha256")),
    )
    op.create_index(op.f("ix_api_keys_organization_id"), "api_keys", ["organization_id"])
    op.create_table(
        "audit_records",
        sa.Column("seq", BigId, autoincrement=True, nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("on_behalf_of", sa.String(200), nullable=False),
        sa.Column("organization", sa.String(64), nullable=False),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("resource", sa.String(300), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
    )
    op.create_index(op.f("ix_audit_records_time"), "audit_records", ["time"])
    op.create_index(op.f("ix_audit_records_subject"), "audit_records", ["subject"])
    op.create_table(
        "access_log_offsets",
        sa.Column("file_name", sa.String(200), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("file_name", name=op.f("pk_access_log_offsets")),
    )


def downgrade() -> None:
    op.drop_table("access_log_offsets")
    op.drop_table("audit_records")
    op.drop_table("api_keys")
    op.drop_table("service_accounts")
    op.drop_table("users")
    op.drop_table("organizations")
