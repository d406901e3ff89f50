"""Member tables: who the member is, where they stand, and what the bank knows of them."""

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
