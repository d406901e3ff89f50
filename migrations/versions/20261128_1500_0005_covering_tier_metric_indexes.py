"""covering indexes for the tier metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 15:00:00.000000

The member-id indexes of point_lots and transactions also carry the columns
the tier metrics read (whether a lot qualifies and its points; a
transaction's channel), so the quarterly review reads a chunk of members'
lots and transactions from the indexes alone instead of visiting a table
page for nearly every row. PostgreSQL only (SQLite has no INCLUDE); the
indexes keep their names and key columns. Each table is locked against
writes while its index is rebuilt.

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    op.drop_index("ix_point_lots_member_id_earned_at", table_name="point_lots")
    op.create_index(
        "ix_point_lots_member_id_earned_at",
        "point_lots",
        ["member_id", "earned_at"],
        unique=False,
        postgresql_include=["qualifying", "original"],
    )
    op.drop_index("ix_transactions_member_id_occurred_at", table_name="transactions")
    op.create_index(
        "ix_transactions_member_id_occurred_at",
        "transactions",
        ["member_id", "occurred_at"],
        unique=False,
        postgresql_include=["channel"],
    )


def downgrade() -> None:
    if not _postgres():
        return
    op.drop_index("ix_transactions_member_id_occurred_at", table_name="transactions")
    op.create_index("ix_transactions_member_id_occurred_at", "transactions", ["member_id", "occurred_at"], unique=False)
    op.drop_index("ix_point_lots_member_id_earned_at", table_name="point_lots")
    op.create_index("ix_point_lots_member_id_earned_at", "point_lots", ["member_id", "earned_at"], unique=False)
