"""tier override requests

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 02:10:00

``tier_override_requests``: requests to pin a member's tier until a date, asked for by one
principal and approved (then applied as a tier override) or rejected by another; the database
refuses the same name deciding.

Nothing existing changes, so the code of the previous release runs on the upgraded schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tier_override_requests",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.CheckConstraint("length(reason) BETWEEN 1 AND 500", name=op.f("ck_tier_override_requests_reason")),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')", name=op.f("ck_tier_override_requests_status")
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (decided_by IS NULL AND decided_at IS NULL)",
            name=op.f("ck_tier_override_requests_decided"),
        ),
        sa.CheckConstraint(
            "decided_by IS NULL OR decided_by <> requested_by", name=op.f("ck_tier_override_requests_four_eyes")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_tier_override_requests_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_tier_override_requests")),
    )
    with op.batch_alter_table("tier_override_requests", schema=None) as batch_op:
        batch_op.create_index("ix_tier_override_requests_id", ["id"], unique=False)
        batch_op.create_index("ix_tier_override_requests_status_requested_at", ["status", "requested_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tier_override_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_tier_override_requests_status_requested_at")
        batch_op.drop_index("ix_tier_override_requests_id")
    op.drop_table("tier_override_requests")
