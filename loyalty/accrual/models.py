"""Source transactions, refunds against them, and idempotency records."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

TRANSACTION_TYPES = ("card_purchase", "transfer", "wealth_purchase", "bill_payment", "loan_repayment")

#: Every bank transaction the engine has been told of, whether it earned or not.
transactions = sa.Table(
    "transactions",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    #: minor units of ``currency`` (fen for CNY)
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("channel", sa.String(32)),
    sa.Column("mcc", sa.String(4)),
    sa.Column("merchant", sa.String(128)),
    #: points the transaction earned, and how much of it and them refunds took back
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("reversed_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reversed_points", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    #: the member's balance right after the transaction was booked
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("programme_version", sa.String(32), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("points >= 0", name="points_not_negative"),
    sa.CheckConstraint("reversed_amount >= 0 AND reversed_amount <= amount", name="reversed_amount_in_range"),
    sa.CheckConstraint("reversed_points >= 0 AND reversed_points <= points", name="reversed_points_in_range"),
    sa.CheckConstraint(sa.column("type").in_(TRANSACTION_TYPES), name="type"),
    sa.Index("ix_transactions_occurred_at", "occurred_at"),
    #: a member's transactions in time order; tier metrics count them by channel from the index alone (PostgreSQL)
    sa.Index("ix_transactions_member_id_occurred_at", "member_id", "occurred_at", postgresql_include=["channel"]),
)

reversals = sa.Table(
    "reversals",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("reversal_id", sa.String(64), primary_key=True),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    #: points the refund should take back, and how many it did (less under
    #: the "available only" policy when the member has spent them)
    sa.Column("points_due", sa.BigInteger, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    #: of ``points_due``, how many were qualifying (they stop counting toward tier)
    sa.Column("qualifying_points", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["member_id", "transaction_id"], ["transactions.member_id", "transactions.transaction_id"]),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("points >= 0 AND points <= points_due", name="points_in_range"),
)

#: One row per key that may post at most once. ``scope`` is ``transaction``
#: (key = transaction id), ``reversal`` (key = reversal id) or
#: ``request:<api key id>`` for ``Idempotency-Key`` headers. Keys unique
#: across members live here, keyed by the key itself (see docs/scaling.md).
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(48), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    #: SHA-256 of the canonical request body
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("member_id", sa.String(64)),
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    #: the stored response, for ``Idempotency-Key`` replays
    sa.Column("status_code", sa.SmallInteger),
    sa.Column("response_body", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
