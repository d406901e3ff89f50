"""voucher code positions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 17:00:00

Codes are issued in the order they were uploaded. The codes of one upload
share their upload time, and were then ordered by their random ids; now each
code has a position in its benefit's pool, numbered in upload order (an upload
continues after the pool's last position), and the index that picks the next
available codes reads them by position. Codes already stored are numbered by
upload time and id, the order they were issued in until now.

Nodes of the previous release, still running during the upgrade, store codes
without a position; PostgreSQL issues those after the numbered ones.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE voucher_codes SET position = numbered.position FROM ("
        " SELECT benefit_code, id, row_number() OVER (PARTITION BY benefit_code ORDER BY uploaded_at, id) AS position"
        " FROM voucher_codes) AS numbered"
        " WHERE voucher_codes.benefit_code = numbered.benefit_code AND voucher_codes.id = numbered.id"
    )
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_voucher_codes_benefit_code_status_uploaded_at_id")
        batch_op.create_index(
            "ix_voucher_codes_benefit_code_status_position", ["benefit_code", "status", "position"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("voucher_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_voucher_codes_benefit_code_status_position")
        batch_op.create_index(
            "ix_voucher_codes_benefit_code_status_uploaded_at_id",
            ["benefit_code", "status", "uploaded_at", "id"],
            unique=False,
        )
        batch_op.drop_column("position")
