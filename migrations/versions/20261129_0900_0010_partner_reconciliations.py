"""partner reconciliations

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 09:00:00

A partner's statement reconciled with the redemptions it fulfilled: one row
per reconciliation, one per line of its result; and an index to read a
partner's deliveries in a period. Nothing existing changes, so the code of
the previous release runs on the upgraded schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("from_date", sa.Date(), nullable=False),
        sa.Column("to_date", sa.Date(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("statement_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("from_date <= to_date", name=op.f("ck_reconciliations_period")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
    )
    with op.batch_alter_table("reconciliations", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliations_partner_created_at", ["partner", "created_at"], unique=False)
    op.create_table(
        "reconciliation_lines",
        sa.Column("reconciliation_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=24), nullable=False),
        sa.Column("redemption_id", sa.String(length=64), nullable=False),
        sa.Column("statement_line", sa.Integer(), nullable=True),
        sa.Column("partner_reference", sa.String(length=128), nullable=True),
        sa.Column("statement_date", sa.Date(), nullable=True),
        sa.Column("statement_fen", sa.BigInteger(), nullable=True),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("benefit_code", sa.String(length=64), nullable=True),
        sa.Column("benefit_version", sa.Integer(), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("unit_cost_fen", sa.BigInteger(), nullable=True),
        sa.Column("ours_fen", sa.BigInteger(), nullable=True),
        sa.Column("our_status", sa.String(length=16), nullable=True),
        sa.Column("our_reference", sa.String(length=128), nullable=True),
        sa.Column("fulfilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "category IN ('matched', 'missing_on_our_side', 'missing_on_their_side', 'amount_mismatch')",
            name=op.f("ck_reconciliation_lines_category"),
        ),
        sa.CheckConstraint(
            "(statement_line IS NULL AND partner_reference IS NULL AND statement_date IS NULL"
            " AND statement_fen IS NULL)"
            " OR (statement_line IS NOT NULL AND partner_reference IS NOT NULL AND statement_date IS NOT NULL"
            " AND statement_fen IS NOT NULL)",
            name=op.f("ck_reconciliation_lines_statement_side"),
        ),
        sa.CheckConstraint(
            "(category = 'matched' AND statement_fen = ours_fen)"
            " OR (category = 'amount_mismatch' AND statement_fen <> ours_fen)"
            " OR (category = 'missing_on_our_side' AND statement_fen IS NOT NULL AND ours_fen IS NULL)"
            " OR (category = 'missing_on_their_side' AND statement_fen IS NULL AND ours_fen IS NOT NULL)",
            name=op.f("ck_reconciliation_lines_category_amounts"),
        ),
        sa.CheckConstraint(
            "statement_fen >= 0 AND ours_fen >= 0", name=op.f("ck_reconciliation_lines_amounts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["reconciliation_id"],
            ["reconciliations.id"],
            name=op.f("fk_reconciliation_lines_reconciliation_id_reconciliations"),
        ),
        sa.PrimaryKeyConstraint("reconciliation_id", "seq", name=op.f("pk_reconciliation_lines")),
    )
    with op.batch_alter_table("reconciliation_lines", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reconciliation_lines_reconciliation_id_redemption_id",
            ["reconciliation_id", "redemption_id"],
            unique=True,
        )
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.create_index("ix_redemptions_partner_fulfilled_at", ["partner", "fulfilled_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.drop_index("ix_redemptions_partner_fulfilled_at")
    with op.batch_alter_table("reconciliation_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_lines_reconciliation_id_redemption_id")
    op.drop_table("reconciliation_lines")
    with op.batch_alter_table("reconciliations", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliations_partner_created_at")
    op.drop_table("reconciliations")
