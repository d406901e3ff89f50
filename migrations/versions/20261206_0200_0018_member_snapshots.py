"""member snapshots at month ends

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 02:00:00

``member_snapshots`` and ``member_lot_snapshots``: each member's balance,
holds, outstanding postings and points owed by funding source at the end
of each local month, written by the ``balances`` job, so the roll-forward's
tie-out and the liability at a month's end read one row per member instead
of every entry and lot. A cache the ledger can always rebuild; nothing
existing changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_snapshots",
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("posted", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("at", "member_id", name=op.f("pk_member_snapshots")),
    )
    op.create_table(
        "member_lot_snapshots",
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("funding_source", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("at", "member_id", "funding_source", name=op.f("pk_member_lot_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("member_lot_snapshots")
    op.drop_table("member_snapshots")
