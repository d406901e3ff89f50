"""Analytics tables: the roll-ups the job keeps, member feedback, and decisions on advice."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

#: The period kinds a roll-up is kept for (:data:`loyalty.calendar.PERIODS`).
KINDS = ("day", "week", "month", "quarter", "year")
#: ``tier`` or ``benefit_code`` of a row that totals every tier or every benefit.
ALL = "*"
DECISIONS = ("accepted", "dismissed")

#: One row per completed local period x tier x benefit (``*``: all of them), as the job computed
#: it from the redemptions, refusals, feedback and tier history.
benefit_rollups = sa.Table(
    "analytics_benefit_rollups",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),
    #: the local date the period starts on
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("tier", sa.String(64), primary_key=True),
    sa.Column("benefit_code", sa.String(64), primary_key=True),
    #: members of the tier while the benefit was active and open to it
    sa.Column("eligible", sa.BigInteger, nullable=False),
    sa.Column("redeemers", sa.BigInteger, nullable=False),
    sa.Column("redemptions", sa.BigInteger, nullable=False),
    sa.Column("units", sa.BigInteger, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("cost_fen", sa.BigInteger, nullable=False),
    #: JSON object funding source -> fen
    sa.Column("cost_by_funding", sa.Text, nullable=False),
    sa.Column("entitlement_units", sa.BigInteger, nullable=False),
    sa.Column("quota_granted", sa.BigInteger, nullable=False),
    #: JSON object refusal reason -> {"requests": n, "units": n}
    sa.Column("refusals", sa.Text, nullable=False),
    sa.Column("answers", sa.BigInteger, nullable=False),
    sa.Column("promoters", sa.BigInteger, nullable=False),
    sa.Column("detractors", sa.BigInteger, nullable=False),
    sa.Column("built_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
)

#: One row per completed local period x tier (``*``: all tiers).
tier_rollups = sa.Table(
    "analytics_tier_rollups",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("tier", sa.String(64), primary_key=True),
    sa.Column("members", sa.BigInteger, nullable=False),
    sa.Column("active", sa.BigInteger, nullable=False),
    sa.Column("earned", sa.BigInteger, nullable=False),
    sa.Column("burned", sa.BigInteger, nullable=False),
    sa.Column("expired", sa.BigInteger, nullable=False),
    #: members active in the previous period (in this tier at its end), and of them those active in this one
    sa.Column("previously_active", sa.BigInteger, nullable=False),
    sa.Column("retained", sa.BigInteger, nullable=False),
    sa.Column("entering_decline", sa.BigInteger, nullable=False),
    sa.Column("entering_win_back", sa.BigInteger, nullable=False),
    #: members with a profile, products held over them, those holding two or more
    sa.Column("profiles", sa.BigInteger, nullable=False),
    sa.Column("products", sa.BigInteger, nullable=False),
    sa.Column("multi_product", sa.BigInteger, nullable=False),
    #: assets (fen) over the members whose profile gives them, as the profiles stood when built
    sa.Column("aum_members", sa.BigInteger, nullable=False),
    sa.Column("aum_fen", sa.BigInteger, nullable=False),
    #: JSON list of {"from", "to", "members"}
    sa.Column("migrations", sa.Text, nullable=False),
    sa.Column("answers", sa.BigInteger, nullable=False),
    sa.Column("promoters", sa.BigInteger, nullable=False),
    sa.Column("detractors", sa.BigInteger, nullable=False),
    sa.Column("built_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
)

#: Member feedback: a score of 0 to 10, optionally about a benefit or a redemption.
feedback = sa.Table(
    "member_feedback",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    #: the channel's id (unique across members through ``idempotency_keys``)
    sa.Column("feedback_id", sa.String(64), primary_key=True),
    sa.Column("score", sa.SmallInteger, nullable=False),
    sa.Column("benefit_code", sa.String(64), sa.ForeignKey("benefits.code")),
    sa.Column("redemption_id", sa.String(64)),
    #: free text, without long digit runs (no phone or card numbers)
    sa.Column("comment", sa.String(500)),
    sa.Column("answered_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("score >= 0 AND score <= 10", name="score_in_range"),
    sa.ForeignKeyConstraint(["member_id", "redemption_id"], ["redemptions.member_id", "redemptions.id"]),
    sa.Index("ix_member_feedback_answered_at", "answered_at"),
)

#: A benefits manager's decision on a finding of the advice, latest wins (every one is audited).
advice_decisions = sa.Table(
    "analytics_advice_decisions",
    metadata,
    #: the finding's id, stable for its period, tier, kind and benefit
    sa.Column("finding_id", sa.String(200), primary_key=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("note", sa.String(1000), nullable=False),
    sa.Column("decided_by", sa.String(100), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("decision").in_(DECISIONS), name="decision"),
)
