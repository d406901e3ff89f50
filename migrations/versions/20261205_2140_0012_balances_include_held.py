"""balances include held points

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 21:40:00

The API now counts a member's points as banks count an account's money:
``balance`` is what the member owns, held points included; ``held`` what
pending redemptions reserve; ``available`` = balance - held. The balance a
transaction or refund answered with is stored with it (``transactions`` and
``reversals``, ``balance_after``) so that a retry gets the same answer; rows
stored before this revision hold the member account's balance, which leaves
held points out. This adds to each the points held at that moment: the
holds created at or before it and not yet resolved then.

The ledger's own columns keep their meaning (``member_accounts.balance`` and
``journal_entries.balance_after`` are the member account's balance, the
available points); the API adds the held points when it shows them.

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time. This one changes no
schema; a row booked by an old node after it ran shows the member account's
balance until it is corrected by running the same statement again.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: Points held for the row's member at the moment ``{moment}`` of the row.
HELD_THEN = """
    (SELECT coalesce(sum(h.points), 0) FROM holds h
     WHERE h.member_id = {table}.member_id AND h.created_at <= {table}.{moment}
       AND (h.resolved_at IS NULL OR h.resolved_at > {table}.{moment}))
"""


def _shift(sign: str) -> None:
    for table, moment in (("transactions", "received_at"), ("reversals", "created_at")):
        held = HELD_THEN.format(table=table, moment=moment)
        op.execute(
            f"UPDATE {table} SET balance_after = balance_after {sign} {held} "
            f"WHERE EXISTS (SELECT 1 FROM holds h WHERE h.member_id = {table}.member_id)"
        )


def upgrade() -> None:
    _shift("+")


def downgrade() -> None:
    _shift("-")
