"""benefits, voucher codes and redemptions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:52:27.465565

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "benefits",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("fulfilment", sa.String(length=16), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=True),
        sa.Column("face_value", sa.BigInteger(), nullable=False),
        sa.Column("unit_cost", sa.BigInteger(), nullable=False),
        sa.Column("funding_source", sa.String(length=64), nullable=False),
        sa.Column("points_price", sa.BigInteger(), nullable=True),
        sa.Column("tier_prices", sa.Text(), server_default="{}", nullable=False),
        sa.Column("eligible_tiers", sa.Text(), server_default="[]", nullable=False),
        sa.Column("entitlements", sa.Text(), server_default="{}", nullable=False),
        sa.Column("stock", sa.BigInteger(), nullable=True),
        sa.Column("low_stock_threshold", sa.BigInteger(), nullable=True),
        sa.Column("limits", sa.Text(), server_default="{}", nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cancel_hours", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("fulfilment IN ('pool', 'partner', 'bank')", name=op.f("ck_benefits_fulfilment")),
        sa.CheckConstraint(
            "kind IN ('phone_credit', 'voucher', 'membership', 'experience')", name=op.f("ck_benefits_kind")
        ),
        sa.CheckConstraint("status IN ('draft', 'active', 'paused', 'retired')", name=op.f("ck_benefits_status")),
        sa.CheckConstraint("face_value >= 0 AND unit_cost >= 0", name=op.f("ck_benefits_money_not_negative")),
        sa.CheckConstraint("stock IS NULL OR stock >= 0", name=op.f("ck_benefits_stock_not_negative")),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_benefits")),
    )
    op.create_table(
        "benefit_versions",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=100), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["code"], ["benefits.code"], name=op.f("fk_benefit_versions_code_benefits")),
        sa.PrimaryKeyConstraint("code", "version", name=op.f("pk_benefit_versions")),
    )
    op.create_table(
        "redemptions",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("benefit_code", sa.String(length=64), nullable=False),
        sa.Column("benefit_version", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("entitlement", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_id", sa.String(length=64), nullable=True),
        sa.Column("settled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("delivery", sa.Text(), nullable=True),
        sa.Column("partner", sa.String(length=64), nullable=True),
        sa.Column("partner_ref", sa.String(length=128), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fulfilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'fulfilled', 'failed', 'cancelled')", name=op.f("ck_redemptions_status")
        ),
        sa.CheckConstraint("quantity > 0 AND points >= 0", name=op.f("ck_redemptions_amounts")),
        sa.ForeignKeyConstraint(["benefit_code"], ["benefits.code"], name=op.f("fk_redemptions_benefit_code_benefits")),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"], name=op.f("fk_redemptions_member_id_members")),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_redemptions")),
    )
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_redemptions_member_id_benefit_code_created_at",
            ["member_id", "benefit_code", "created_at"],
            unique=False,
        )
        batch_op.create_index("ix_redemptions_status_next_attempt_at", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "voucher_codes",
        sa.Column("benefit_code", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="available", nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("redemption_id", sa.String(length=64), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('available', 'issued')", name=op.f("ck_voucher_codes_status")),
        sa.ForeignKeyConstraint(
            ["benefit_code"], ["benefits.code"], name=op.f("fk_voucher_codes_benefit_code_benefits")
        ),
        sa.PrimaryKeyConstraint("benefit_code", "id", name=op.f("pk_voucher_codes")),
    )
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.create_index("ix_voucher_codes_benefit_code_digest", ["benefit_code", "digest"], unique=True)
        batch_op.create_index("ix_voucher_codes_benefit_code_status", ["benefit_code", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_voucher_codes_benefit_code_status")
        batch_op.drop_index("ix_voucher_codes_benefit_code_digest")

    op.drop_table("voucher_codes")
    with op.batch_alter_table("redemptions", schema=None) as batch_op:
        batch_op.drop_index("ix_redemptions_status_next_attempt_at")
        batch_op.drop_index("ix_redemptions_member_id_benefit_code_created_at")

    op.drop_table("redemptions")
    op.drop_table("benefit_versions")
    op.drop_table("benefits")
