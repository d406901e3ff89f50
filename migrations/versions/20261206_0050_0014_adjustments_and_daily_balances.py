"""manual adjustments and daily balances

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 00:50:00

``adjustments``: manual adjustments of a member's points, requested by one
principal and approved or rejected by another (the database refuses the
same name deciding). ``daily_balances``: the net movement of each account
per local day, by entry kind and rule, rolled up from the postings by the
``balances`` job; a cache the postings can always rebuild.

Nothing existing changes, so the code of the previous release runs on the
upgraded schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adjustments",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.CheckConstraint(
            "points <> 0 AND points BETWEEN -1000000000 AND 1000000000", name=op.f("ck_adjustments_points")
        ),
        sa.CheckConstraint("length(reason) BETWEEN 1 AND 500", name=op.f("ck_adjustments_reason")),
        sa.CheckConstraint("status IN ('requested', 'approved', 'rejected')", name=op.f("ck_adjustments_status")),
        sa.CheckConstraint(
            "(status = 'requested') = (decided_by IS NULL AND decided_at IS NULL)",
            name=op.f("ck_adjustments_decided"),
        ),
        sa.CheckConstraint(
            "(status = 'approved') = (entry_id IS NOT NULL)", name=op.f("ck_adjustments_posted_iff_approved")
        ),
        sa.CheckConstraint("decided_by IS NULL OR decided_by <> requested_by", name=op.f("ck_adjustments_four_eyes")),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"], name=op.f("fk_adjustments_member_id_members")),
        sa.ForeignKeyConstraint(
            ["member_id", "entry_id"],
            ["journal_entries.member_id", "journal_entries.id"],
            name=op.f("fk_adjustments_member_id_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_adjustments")),
    )
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.create_index("ix_adjustments_id", ["id"], unique=False)
        batch_op.create_index("ix_adjustments_status_requested_at", ["status", "requested_at"], unique=False)

    op.create_table(
        "daily_balances",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("postings", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "account", "kind", "rule_id", name=op.f("pk_daily_balances")),
    )
    op.create_table(
        "daily_balances_state",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("through", sa.Date(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_daily_balances_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily_balances_state")),
    )


def downgrade() -> None:
    op.drop_table("daily_balances_state")
    op.drop_table("daily_balances")
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.drop_index("ix_adjustments_status_requested_at")
        batch_op.drop_index("ix_adjustments_id")
    op.drop_table("adjustments")
