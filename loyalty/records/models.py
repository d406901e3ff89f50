"""The member's record, which every part of the engine reads: who the member is and where they
stand (``members``), what the bank tells the programme of them (``member_profiles``), and the
bank transactions and refunds booked for them (``transactions``, ``reversals``)."""

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
    #: the tier in force, and since when
    sa.Column("tier", sa.String(64), nullable=False, server_default="basic"),
    sa.Column("tier_since", UTCDateTime),
    #: a manual override pins the tier until ``override_until``
    sa.Column("override_tier", sa.String(64)),
    sa.Column("override_until", UTCDateTime),
    sa.Column("override_reason", sa.String(500)),
    #: the last quarterly review applied to this member, e.g. ``2026Q3``
    sa.Column("tier_reviewed", sa.String(16)),
    sa.Column("lifecycle_stage", sa.String(16), nullable=False, server_default="acquisition"),
    sa.Column("lifecycle_since", UTCDateTime),
    #: when the member's first and latest transactions occurred
    sa.Column("first_transaction_at", UTCDateTime),
    sa.Column("last_transaction_at", UTCDateTime),
)

#: What the bank tells the programme about a member, and nothing more: the
#: value and need dimensions tiers are decided on, and a few descriptive
#: fields for segmentation. No names, no contact details.
member_profiles = sa.Table(
    "member_profiles",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    #: assets under management, fen
    sa.Column("aum", sa.BigInteger),
    #: profit contribution over the trailing 12 months, fen
    sa.Column("profit_contribution", sa.BigInteger),
    #: products held, sorted, written ``,deposit,wealth,`` so a product is found with LIKE '%,wealth,%'
    sa.Column("products_held", sa.String(400)),
    sa.Column("occupation", sa.String(64)),
    sa.Column("region", sa.String(64)),
    sa.Column("preferred_channel", sa.String(32)),
    sa.Column("risk_profile", sa.String(16)),
    #: the bank's snapshot date the values are from; an older snapshot never overwrites a newer one
    sa.Column("as_of", sa.Date),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

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
    #: the journal entry of the points it earned; NULL when it earned none
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    #: the member's balance right after the transaction was booked, held points included (the API's ``balance``)
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("programme_version", sa.String(32), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("points >= 0", name="points_not_negative"),
    sa.CheckConstraint("reversed_amount >= 0 AND reversed_amount <= amount", name="reversed_amount_in_range"),
    sa.CheckConstraint("reversed_points >= 0 AND reversed_points <= points", name="reversed_points_in_range"),
    sa.CheckConstraint(sa.column("type").in_(TRANSACTION_TYPES), name="type"),
    #: checked at commit: the release before 0011 wrote a transaction before its entry
    sa.ForeignKeyConstraint(
        ["member_id", "entry_id"],
        ["entry_keys.member_id", "entry_keys.entry_id"],
        deferrable=True,
        initially="DEFERRED",
    ),
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
    #: the member's balance right after the refund, held points included (the API's ``balance``)
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["member_id", "transaction_id"], ["transactions.member_id", "transactions.transaction_id"]),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("points >= 0 AND points <= points_due", name="points_in_range"),
)
