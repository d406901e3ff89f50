"""Member tables."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

members = sa.Table(
    "members",
    metadata,
    #: the bank's customer id
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("birth_date", sa.Date),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    #: where the member enrolled: app, branch, mini_program, ...
    sa.Column("channel", sa.String(32)),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
