"""Stored reconciliations: one row per statement reconciled, one per line of the result.

A reconciliation is finance's record of a partner's statement, not a member's
record: it is keyed by its own id, and a line names the member of our
redemption only to describe it.
"""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

#: What a line of a reconciliation says.
MATCHED = "matched"
#: in the partner's statement, not among our delivered redemptions
MISSING_ON_OUR_SIDE = "missing_on_our_side"
#: one of our delivered redemptions in the period, not in the statement
MISSING_ON_THEIR_SIDE = "missing_on_their_side"
#: in both, the amounts differ
AMOUNT_MISMATCH = "amount_mismatch"
CATEGORIES = (MATCHED, MISSING_ON_OUR_SIDE, MISSING_ON_THEIR_SIDE, AMOUNT_MISMATCH)

reconciliations = sa.Table(
    "reconciliations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    #: the partner's name in ``LOYALTY_PARTNERS`` when it was run
    sa.Column("partner", sa.String(64), nullable=False),
    #: the statement's period: local dates, both included, in ``timezone``
    sa.Column("from_date", sa.Date, nullable=False),
    sa.Column("to_date", sa.Date, nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    #: SHA-256 of the statement file as received, to tell which file was reconciled
    sa.Column("statement_sha256", sa.String(64), nullable=False),
    #: the API key's name, or ``cli:<user>`` for the command line
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("from_date <= to_date", name="period"),
    sa.Index("ix_reconciliations_partner_created_at", "partner", "created_at"),
)

reconciliation_lines = sa.Table(
    "reconciliation_lines",
    metadata,
    sa.Column("reconciliation_id", sa.String(36), sa.ForeignKey("reconciliations.id"), primary_key=True),
    #: the statement's lines in file order, then ours missing from it in the order they were fulfilled
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("category", sa.String(24), nullable=False),
    sa.Column("redemption_id", sa.String(64), nullable=False),
    #: the statement's side: its line number, reference, date and amount (NULL: not in the statement)
    sa.Column("statement_line", sa.Integer),
    sa.Column("partner_reference", sa.String(128)),
    sa.Column("statement_date", sa.Date),
    sa.Column("statement_fen", sa.BigInteger),
    #: our redemption of that id with that partner, if there is one, whatever its status
    sa.Column("member_id", sa.String(64)),
    sa.Column("benefit_code", sa.String(64)),
    sa.Column("benefit_version", sa.Integer),
    sa.Column("quantity", sa.Integer),
    #: the unit cost of the benefit version it was redeemed under, fen
    sa.Column("unit_cost_fen", sa.BigInteger),
    #: what we expect to pay for it (unit cost x quantity); NULL unless the partner delivered it by our records
    sa.Column("ours_fen", sa.BigInteger),
    sa.Column("our_status", sa.String(16)),
    sa.Column("our_reference", sa.String(128)),
    sa.Column("fulfilled_at", UTCDateTime),
    sa.CheckConstraint(sa.column("category").in_(CATEGORIES), name="category"),
    sa.CheckConstraint(
        "(statement_line IS NULL AND partner_reference IS NULL AND statement_date IS NULL"
        " AND statement_fen IS NULL)"
        " OR (statement_line IS NOT NULL AND partner_reference IS NOT NULL AND statement_date IS NOT NULL"
        " AND statement_fen IS NOT NULL)",
        name="statement_side",
    ),
    sa.CheckConstraint(
        "(category = 'matched' AND statement_fen = ours_fen)"
        " OR (category = 'amount_mismatch' AND statement_fen <> ours_fen)"
        " OR (category = 'missing_on_our_side' AND statement_fen IS NOT NULL AND ours_fen IS NULL)"
        " OR (category = 'missing_on_their_side' AND statement_fen IS NULL AND ours_fen IS NOT NULL)",
        name="category_amounts",
    ),
    sa.CheckConstraint("statement_fen >= 0 AND ours_fen >= 0", name="amounts_not_negative"),
    #: a redemption is on one line of a reconciliation at most
    sa.Index(
        "ix_reconciliation_lines_reconciliation_id_redemption_id", "reconciliation_id", "redemption_id", unique=True
    ),
)
