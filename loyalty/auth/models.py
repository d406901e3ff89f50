"""API keys."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

SCOPES = ("accrue", "redeem", "read", "finance", "admin", "profile", "support", "feedback")

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
    #: the key stops working at this moment (NULL: never)
    sa.Column("expires_at", UTCDateTime),
    #: when a request last authenticated with it (written at most once a minute per process)
    sa.Column("last_used_at", UTCDateTime),
    #: SHA-256 of the secret the last rotation replaced, which keeps working until ``previous_valid_until``
    sa.Column("previous_key_hash", sa.String(64), unique=True),
    sa.Column("previous_valid_until", UTCDateTime),
    sa.Column("rotated_at", UTCDateTime),
    #: the key's own rate limits per route class, over the service's (``accrual=50/second;reads=...``)
    sa.Column("rate_limits", sa.String(500)),
    sa.CheckConstraint("(previous_key_hash IS NULL) = (previous_valid_until IS NULL)", name="previous_until"),
)

#: What a person signed in to the admin UI may do; a user may hold several.
ROLES = ("catalogue", "rules", "finance", "support", "auditor", "admin")
#: The languages of the admin UI.
LOCALES = ("zh_CN", "en")

admin_users = sa.Table(
    "admin_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    #: ``scrypt$n$r$p$salt$hash`` (hex): memory-hard, so a stolen table is slow to guess
    sa.Column("password_hash", sa.String(255), nullable=False),
    #: comma-separated :data:`ROLES`
    sa.Column("roles", sa.String(200), nullable=False),
    sa.Column("locale", sa.String(8), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
    #: bumped by a password reset or a disable, which ends every session signed in before it
    sa.Column("session_epoch", sa.Integer, nullable=False),
)

sign_in_attempts = sa.Table(
    "admin_sign_in_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    #: the client's address as the server saw it
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("succeeded", sa.Boolean, nullable=False),
    sa.Index("ix_admin_sign_in_attempts_username", "username", "at"),
    sa.Index("ix_admin_sign_in_attempts_address", "address", "at"),
)
