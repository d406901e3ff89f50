"""Finance tables: the valuation settings, versioned by effective date, and the reports of closed
months (the months themselves are the ledger's: :data:`loyalty.ledger.models.closed_periods`)."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

#: What a valuation setting values, per funding source:
#: ``point_value`` what one outstanding point is worth, in fen; ``redemption_rate`` the share of
#: outstanding points expected to be redeemed (0 to 1); ``allocated_value`` the value allocated to
#: one point when it is issued, in fen (revenue recognition).
SETTING_KINDS = ("point_value", "redemption_rate", "allocated_value")

valuation_settings = sa.Table(
    "valuation_settings",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    #: ``bank``, or a partner's funding source, as the earning rules name them
    sa.Column("funding_source", sa.String(64), primary_key=True),
    #: the local date from which it applies, until the next one of the same kind and source
    sa.Column("effective_from", sa.Date, primary_key=True),
    #: a decimal written as text (exact on both databases), e.g. ``0.8`` or ``1.25``
    sa.Column("value", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("kind").in_(SETTING_KINDS), name="kind"),
)

#: A closed month's reports as they were when it closed, served as stored.
frozen_reports = sa.Table(
    "frozen_reports",
    metadata,
    sa.Column("period", sa.String(7), sa.ForeignKey("closed_periods.period"), primary_key=True),
    sa.Column("report", sa.String(32), primary_key=True),
    #: JSON
    sa.Column("body", sa.Text, nullable=False),
)

#: The net movement of each account per local day of the bank, by the kind of the entries that
#: moved it and the rule of the postings (``''`` for none): what the roll-forward and the trial
#: balance read for the days rolled up. Written only by the ``balances`` job
#: (:mod:`loyalty.finance.balances`), from the postings; a cache the postings can always rebuild.
daily_balances = sa.Table(
    "daily_balances",
    metadata,
    #: the local day of the postings' posting date, in the zone of :data:`daily_balances_state`
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("account", sa.String(80), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("rule_id", sa.String(80), primary_key=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    #: how many postings the row sums
    sa.Column("postings", sa.BigInteger, nullable=False),
)

#: How far :data:`daily_balances` goes: every local day up to ``through`` in ``zone`` is rolled up;
#: later days are read from the postings. One row.
daily_balances_state = sa.Table(
    "daily_balances_state",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("zone", sa.String(64), nullable=False),
    sa.Column("through", sa.Date, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("id = 1", name="one_row"),
)

#: Each member's figures at the end of a local month, as the ``balances`` job found them (the
#: instant ``at`` is the start of the next month in the zone of :data:`daily_balances_state`):
#: ``balance``, the balance after their last entry before ``at``; ``held``, their holds pending then;
#: ``posted``, the sum of their postings to the outstanding accounts before ``at``. The roll-forward's
#: tie-out reads the latest snapshot at or before its end and the postings after it; like the daily
#: balances, a cache the ledger can always rebuild.
member_snapshots = sa.Table(
    "member_snapshots",
    metadata,
    sa.Column("at", UTCDateTime, primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("held", sa.BigInteger, nullable=False),
    sa.Column("posted", sa.BigInteger, nullable=False),
)

#: Each member's points owed at the end of a local month by funding source (what their lots earned
#: before ``at`` hold then, plus what holds pending then took from them): what the liability at a
#: month's end reads instead of every lot. Rows with no points are left out.
member_lot_snapshots = sa.Table(
    "member_lot_snapshots",
    metadata,
    sa.Column("at", UTCDateTime, primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("funding_source", sa.String(64), primary_key=True),
    sa.Column("points", sa.BigInteger, nullable=False),
)
