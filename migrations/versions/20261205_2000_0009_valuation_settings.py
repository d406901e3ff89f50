"""valuation settings and period close

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05 20:00:00

Finance's valuation of outstanding points, versioned by effective date: the
value of a point, the expected redemption rate and the value allocated to a
point when issued, per funding source. Closed months and their frozen
reports. Journal entries record when what they post occurred (the business
date) beside when they were posted.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "valuation_settings",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("funding_source", sa.String(64), nullable=False),
        sa.Column("effective_from", sa.Date, nullable=False),
        sa.Column("value", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('point_value', 'redemption_rate', 'allocated_value')", name="ck_valuation_settings_kind"
        ),
        sa.PrimaryKeyConstraint("kind", "funding_source", "effective_from", name="pk_valuation_settings"),
    )

    op.create_table(
        "closed_periods",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_by", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("period", name="pk_closed_periods"),
    )
    op.create_table(
        "frozen_reports",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("report", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["period"], ["closed_periods.period"], name="fk_frozen_reports_period_closed_periods"
        ),
        sa.PrimaryKeyConstraint("period", "report", name="pk_frozen_reports"),
    )
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.drop_column("occurred_at")
    op.drop_table("frozen_reports")
    op.drop_table("closed_periods")
    op.drop_table("valuation_settings")
