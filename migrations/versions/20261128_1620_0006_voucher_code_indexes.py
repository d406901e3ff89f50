"""voucher code indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 16:20:00

Picking the next available codes reads them in upload order straight from an
index instead of sorting the pool, and a redemption's codes are found
without scanning the benefit's pool.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_voucher_codes_benefit_code_status")
        batch_op.create_index(
            "ix_voucher_codes_benefit_code_status_uploaded_at_id",
            ["benefit_code", "status", "uploaded_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_voucher_codes_benefit_code_redemption_id", ["benefit_code", "redemption_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_voucher_codes_benefit_code_redemption_id")
        batch_op.drop_index("ix_voucher_codes_benefit_code_status_uploaded_at_id")
        batch_op.create_index("ix_voucher_codes_benefit_code_status", ["benefit_code", "status"], unique=False)
