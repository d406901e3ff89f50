"""admin users and sign-in attempts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 00:40:00

The people who sign in to the admin UI (a scrypt hash of the password, roles,
language) and every sign-in attempt, which limits guessing per account and per
address.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("roles", sa.String(200), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_epoch", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_users"),
        sa.UniqueConstraint("username", name="uq_admin_users_username"),
    )
    op.create_table(
        "admin_sign_in_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_sign_in_attempts"),
    )
    op.create_index("ix_admin_sign_in_attempts_username", "admin_sign_in_attempts", ["username", "at"])
    op.create_index("ix_admin_sign_in_attempts_address", "admin_sign_in_attempts", ["address", "at"])


def downgrade() -> None:
    op.drop_index("ix_admin_sign_in_attempts_address", table_name="admin_sign_in_attempts")
    op.drop_index("ix_admin_sign_in_attempts_username", table_name="admin_sign_in_attempts")
    op.drop_table("admin_sign_in_attempts")
    op.drop_table("admin_users")
