"""a pool benefit's stock is its available codes, counted

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 01:10:00

A redemption of a pool benefit no longer updates the benefit's row: the code it
takes (``SKIP LOCKED``) is the stock, so redemptions of one benefit do not queue
on that row. The catalogue counts a pool's available codes when it shows the
stock; ``benefits.stock`` of a pool benefit is NULL from now on.

Each migration must work with the code of the previous release still running:
an old node reads a pool's NULL stock as unlimited, and still refuses a
redemption the pool has no code for. Downgrading stores the count again.
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE benefits SET stock = NULL WHERE fulfilment = 'pool'")


def downgrade() -> None:
    op.execute(
        "UPDATE benefits SET stock = (SELECT count(*) FROM voucher_codes v"
        " WHERE v.benefit_code = benefits.code AND v.status = 'available') WHERE fulfilment = 'pool'"
    )
