"""valuation settings

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05 20:00:00

Finance's valuation of outstanding points, versioned by effective date: the
value of a point, the expected redemption rate and the value allocated to a
point when issued, per funding source.
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


def downgrade() -> None:
    op.drop_table("valuation_settings")
