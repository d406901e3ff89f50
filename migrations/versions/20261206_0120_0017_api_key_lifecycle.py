"""API key lifecycle: expiry, last use, rotation with an overlap, per-key rate limits

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 01:20:00

Adds to ``api_keys``: ``expires_at`` (a key stops working then), ``last_used_at``, the secret a
rotation replaced with the moment it stops working (``previous_key_hash``,
``previous_valid_until``), when it was last rotated, and ``rate_limits`` (the key's own limits
per route class, over the service's defaults).

Each migration must work with the code of the previous release still running: every column is
nullable and the old code reads none of them (it keeps accepting a key until it is revoked,
including after its expiry, until every node runs the new release).
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("previous_key_hash", sa.String(64)))
        batch.add_column(sa.Column("previous_valid_until", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("rate_limits", sa.String(500)))
        batch.create_unique_constraint(op.f("uq_api_keys_previous_key_hash"), ["previous_key_hash"])
        batch.create_check_constraint(
            op.f("ck_api_keys_previous_until"), "(previous_key_hash IS NULL) = (previous_valid_until IS NULL)"
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_previous_until"), type_="check")
        batch.drop_constraint(op.f("uq_api_keys_previous_key_hash"), type_="unique")
        for column in ("rate_limits", "rotated_at", "previous_valid_until", "previous_key_hash", "last_used_at"):
            batch.drop_column(column)
        batch.drop_column("expires_at")
