"""The benefit catalogue: benefits, their versions, and the voucher code pools."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

KINDS = ("phone_credit", "voucher", "membership", "experience")
#: How a benefit reaches the member: a code from its pool (in the request), a
#: partner over HTTP (after commit), or the bank itself (a booking reference).
FULFILMENTS = ("pool", "partner", "bank")
STATUSES = ("draft", "active", "paused", "retired")
PERIODS = ("day", "month", "year")

benefits = sa.Table(
    "benefits",
    metadata,
    sa.Column("code", sa.String(64), primary_key=True),
    #: 1, 2, 3, ...: every change makes a new version (``benefit_versions``)
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("fulfilment", sa.String(16), nullable=False),
    #: the partner that delivers it (fulfilment ``partner``)
    sa.Column("partner", sa.String(64)),
    #: what the member gets, and what one unit costs the bank, in fen
    sa.Column("face_value", sa.BigInteger, nullable=False),
    sa.Column("unit_cost", sa.BigInteger, nullable=False),
    #: who pays the unit cost: ``bank`` or a partner
    sa.Column("funding_source", sa.String(64), nullable=False),
    #: points per unit; NULL: not for sale, only an entitlement
    sa.Column("points_price", sa.BigInteger),
    #: JSON object tier -> points per unit, overriding ``points_price``
    sa.Column("tier_prices", sa.Text, nullable=False, server_default="{}"),
    #: JSON list of tiers that may redeem it; empty: every tier
    sa.Column("eligible_tiers", sa.Text, nullable=False, server_default="[]"),
    #: JSON object tier -> {"quota": n, "period": "day" | "month" | "year"}: units the tier gets without points
    sa.Column("entitlements", sa.Text, nullable=False, server_default="{}"),
    #: units left; NULL: unlimited. Always NULL for a pool benefit: its stock is its available
    #: codes, counted when read (:data:`STOCK`).
    sa.Column("stock", sa.BigInteger),
    #: a ``benefit.low_stock`` event is emitted when stock falls below this
    sa.Column("low_stock_threshold", sa.BigInteger),
    #: JSON object period -> most units one member may redeem per period
    sa.Column("limits", sa.Text, nullable=False, server_default="{}"),
    sa.Column("valid_from", UTCDateTime),
    sa.Column("valid_until", UTCDateTime),
    sa.Column("status", sa.String(16), nullable=False),
    #: hours after fulfilment in which the member may cancel; 0: no cancellation
    sa.Column("cancel_hours", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_by", sa.String(100), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
    sa.CheckConstraint(sa.column("fulfilment").in_(FULFILMENTS), name="fulfilment"),
    sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),
    sa.CheckConstraint("stock IS NULL OR stock >= 0", name="stock_not_negative"),
    sa.CheckConstraint("face_value >= 0 AND unit_cost >= 0", name="money_not_negative"),
    sa.CheckConstraint("points_price IS NULL OR points_price > 0", name="points_price_positive"),
    sa.CheckConstraint("cancel_hours >= 0", name="cancel_hours_not_negative"),
    sa.CheckConstraint("fulfilment <> 'partner' OR partner IS NOT NULL", name="partner_named"),
)

#: Every version of every benefit, as the JSON document it was saved as.
benefit_versions = sa.Table(
    "benefit_versions",
    metadata,
    sa.Column("code", sa.String(64), sa.ForeignKey("benefits.code"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("changed_by", sa.String(100), nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
)

CODE_STATUSES = ("available", "issued")
ISSUED_TO_A_REDEMPTION = (
    "(status = 'issued' AND member_id IS NOT NULL AND redemption_id IS NOT NULL)"
    " OR (status = 'available' AND member_id IS NULL AND redemption_id IS NULL)"
)

#: Voucher codes. The code itself is stored encrypted (``secret``) and found by
#: a keyed digest (``digest``), so a database dump alone reveals no code.
voucher_codes = sa.Table(
    "voucher_codes",
    metadata,
    sa.Column("benefit_code", sa.String(64), sa.ForeignKey("benefits.code"), primary_key=True),
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="available"),
    sa.Column("member_id", sa.String(64)),
    sa.Column("redemption_id", sa.String(64)),
    sa.Column("uploaded_at", UTCDateTime, nullable=False),
    #: 1, 2, 3, ...: the code's place in its benefit's pool, in upload order (codes are issued in
    #: this order). NULL only for a code written by the previous release during an upgrade.
    sa.Column("position", sa.BigInteger),
    sa.Column("issued_at", UTCDateTime),
    sa.CheckConstraint(sa.column("status").in_(CODE_STATUSES), name="status"),
    #: an issued code names its member and redemption; an available one neither
    sa.CheckConstraint(ISSUED_TO_A_REDEMPTION, name="issued_to_a_redemption"),
    sa.Index("ix_voucher_codes_benefit_code_digest", "benefit_code", "digest", unique=True),
    #: the next available codes, in upload order, without sorting the pool; and a pool's last position
    sa.Index("ix_voucher_codes_benefit_code_status_position", "benefit_code", "status", "position"),
    #: the codes of one redemption
    sa.Index("ix_voucher_codes_benefit_code_redemption_id", "benefit_code", "redemption_id"),
)


def _available_codes() -> sa.ScalarSelect[int]:
    vc = voucher_codes.c
    return (
        sa.select(sa.func.count())
        .where(vc.benefit_code == benefits.c.code, vc.status == "available")
        .scalar_subquery()
    )


#: A benefit's stock as the catalogue shows it: a pool's is its available codes, counted when read,
#: for no redemption updates a pool benefit's row (the code it takes, ``SKIP LOCKED``, is its stock);
#: any other benefit's is the ``stock`` column (``NULL``: unlimited).
STOCK = sa.case((benefits.c.fulfilment == "pool", _available_codes()), else_=benefits.c.stock).label("stock")
#: The columns of ``benefits`` with :data:`STOCK` for ``stock``: select these to read a benefit.
BENEFIT_COLUMNS = tuple(STOCK if c.name == "stock" else c for c in benefits.c)
