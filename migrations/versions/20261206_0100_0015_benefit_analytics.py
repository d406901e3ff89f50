"""benefit analytics

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 01:00:00

Benefit-usage analytics: refused redemptions (one row per redemption id), member
feedback, the roll-ups the analytics job keeps per completed period, decisions
on advice, and an index to read a period's redemptions. Nothing existing
changes, so the code of the previous release runs on the upgraded schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

KINDS = "kind IN ('day', 'week', 'month', 'quarter', 'year')"


def _measures(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.BigInteger(), nullable=False) for n in names]


def upgrade() -> None:
    op.create_table(
        "redemption_refusals",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("redemption_id", sa.String(length=64), nullable=False),
        sa.Column("benefit_code", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "reason IN ('benefit_inactive', 'not_eligible', 'limit_reached', 'out_of_stock', 'insufficient_points')",
            name=op.f("ck_redemption_refusals_reason"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_redemption_refusals_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["benefit_code"], ["benefits.code"], name=op.f("fk_redemption_refusals_benefit_code_benefits")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_redemption_refusals_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "redemption_id", name=op.f("pk_redemption_refusals")),
    )
    with op.batch_alter_table("redemption_refusals", schema=None) as batch_op:
        batch_op.create_index("ix_redemption_refusals_refused_at", ["refused_at"], unique=False)
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.create_index("ix_redemptions_created_at", ["created_at"], unique=False)
    op.create_table(
        "member_feedback",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("feedback_id", sa.String(length=64), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("benefit_code", sa.String(length=64), nullable=True),
        sa.Column("redemption_id", sa.String(length=64), nullable=True),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("score >= 0 AND score <= 10", name=op.f("ck_member_feedback_score_in_range")),
        sa.ForeignKeyConstraint(
            ["benefit_code"], ["benefits.code"], name=op.f("fk_member_feedback_benefit_code_benefits")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_member_feedback_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["member_id", "redemption_id"],
            ["redemptions.member_id", "redemptions.id"],
            name=op.f("fk_member_feedback_member_id_redemption_id_redemptions"),
        ),
        sa.PrimaryKeyConstraint("member_id", "feedback_id", name=op.f("pk_member_feedback")),
    )
    with op.batch_alter_table("member_feedback", schema=None) as batch_op:
        batch_op.create_index("ix_member_feedback_answered_at", ["answered_at"], unique=False)
    op.create_table(
        "analytics_benefit_rollups",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("benefit_code", sa.String(length=64), nullable=False),
        *_measures("eligible", "redeemers", "redemptions", "units", "points", "cost_fen"),
        sa.Column("cost_by_funding", sa.Text(), nullable=False),
        *_measures("entitlement_units", "quota_granted"),
        sa.Column("refusals", sa.Text(), nullable=False),
        *_measures("answers", "promoters", "detractors"),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(KINDS, name=op.f("ck_analytics_benefit_rollups_kind")),
        sa.PrimaryKeyConstraint(
            "kind", "period_start", "tier", "benefit_code", name=op.f("pk_analytics_benefit_rollups")
        ),
    )
    op.create_table(
        "analytics_tier_rollups",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        *_measures("members", "active", "earned", "burned", "expired", "previously_active", "retained"),
        *_measures("entering_decline", "entering_win_back", "profiles", "products", "multi_product"),
        *_measures("aum_members", "aum_fen"),
        sa.Column("migrations", sa.Text(), nullable=False),
        *_measures("answers", "promoters", "detractors"),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(KINDS, name=op.f("ck_analytics_tier_rollups_kind")),
        sa.PrimaryKeyConstraint("kind", "period_start", "tier", name=op.f("pk_analytics_tier_rollups")),
    )
    op.create_table(
        "analytics_advice_decisions",
        sa.Column("finding_id", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "decision IN ('accepted', 'dismissed')", name=op.f("ck_analytics_advice_decisions_decision")
        ),
        sa.PrimaryKeyConstraint("finding_id", name=op.f("pk_analytics_advice_decisions")),
    )


def downgrade() -> None:
    op.drop_table("analytics_advice_decisions")
    op.drop_table("analytics_tier_rollups")
    op.drop_table("analytics_benefit_rollups")
    with op.batch_alter_table("member_feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_member_feedback_answered_at")
    op.drop_table("member_feedback")
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.drop_index("ix_redemptions_created_at")
    with op.batch_alter_table("redemption_refusals", schema=None) as batch_op:
        batch_op.drop_index("ix_redemption_refusals_refused_at")
    op.drop_table("redemption_refusals")
