"""Redemptions: a member spending points (or an entitlement) on a benefit."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

STATUSES = ("pending", "fulfilled", "failed", "cancelled")

redemptions = sa.Table(
    "redemptions",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    #: the channel's redemption id (unique across members through ``idempotency_keys``)
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("benefit_code", sa.String(64), sa.ForeignKey("benefits.code"), nullable=False),
    sa.Column("benefit_version", sa.Integer, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    #: points spent in all (0 for an entitlement)
    sa.Column("points", sa.BigInteger, nullable=False),
    #: claimed as a tier entitlement, within its quota
    sa.Column("entitlement", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status", sa.String(16), nullable=False),
    #: the ledger hold of the points (NULL when no points are spent)
    sa.Column("hold_id", sa.String(64)),
    #: the hold has been captured: the points are spent for good
    sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    #: JSON: {"phone_number": ...} or {"account_ref": ...}
    sa.Column("delivery", sa.Text),
    sa.Column("partner", sa.String(64)),
    #: the partner's reference, or the bank's booking reference
    sa.Column("partner_ref", sa.String(128)),
    sa.Column("failure_reason", sa.String(500)),
    #: partner calls made, and when the next is due (the fulfilment job's outbox)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime),
    #: a pending redemption still pending then is resolved by the job
    sa.Column("deadline", UTCDateTime),
    #: the member may cancel until then
    sa.Column("cancel_until", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("fulfilled_at", UTCDateTime),
    sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),
    sa.CheckConstraint("quantity > 0 AND points >= 0", name="amounts"),
    sa.ForeignKeyConstraint(["member_id", "hold_id"], ["holds.member_id", "holds.id"]),
    sa.Index("ix_redemptions_status_next_attempt_at", "status", "next_attempt_at"),
    sa.Index("ix_redemptions_member_id_benefit_code_created_at", "member_id", "benefit_code", "created_at"),
    #: a partner's deliveries in a period, for reconciliation with its statements
    sa.Index("ix_redemptions_partner_fulfilled_at", "partner", "fulfilled_at"),
    #: the redemptions of a period, for analytics
    sa.Index("ix_redemptions_created_at", "created_at"),
)

#: Why a refused redemption was refused: the reason codes kept, so turned-away demand can be counted.
REFUSAL_REASONS = ("benefit_inactive", "not_eligible", "limit_reached", "out_of_stock", "insufficient_points")

#: Redemptions refused (a refusal writes nothing else): one row per redemption id, the first refusal.
redemption_refusals = sa.Table(
    "redemption_refusals",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("redemption_id", sa.String(64), primary_key=True),
    sa.Column("benefit_code", sa.String(64), sa.ForeignKey("benefits.code"), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("refused_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("reason").in_(REFUSAL_REASONS), name="reason"),
    sa.CheckConstraint("quantity > 0", name="quantity_positive"),
    sa.Index("ix_redemption_refusals_refused_at", "refused_at"),
)
