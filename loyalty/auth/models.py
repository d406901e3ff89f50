"""API keys."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

SCOPES = ("accrue", "redeem", "read", "finance", "admin", "profile", "feedback")

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    #: SHA-256 of the key; the key itself is shown once and never stored
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    #: comma-separated scopes
    sa.Column("scopes", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)
