"""Manual adjustments of a member's points, requested by one person and decided by another."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

ADJUSTMENT_STATUSES = ("requested", "approved", "rejected")
#: Longest reason and note, in characters.
MAX_REASON = 500
#: Largest number of points one adjustment moves, either way.
MAX_ADJUSTMENT_POINTS = 1_000_000_000

adjustments = sa.Table(
    "adjustments",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
    #: signed: positive credits the member, negative debits them
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(MAX_REASON), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: the principal (API key name, or the admin UI's signed-in user) who asked for it
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    #: the other principal who approved or rejected it
    sa.Column("decided_by", sa.String(100)),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("note", sa.String(MAX_REASON)),
    #: the ``adjustment`` entry, once approved
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    sa.ForeignKeyConstraint(["member_id", "entry_id"], ["entry_keys.member_id", "entry_keys.entry_id"]),
    sa.CheckConstraint(
        f"points <> 0 AND points BETWEEN -{MAX_ADJUSTMENT_POINTS} AND {MAX_ADJUSTMENT_POINTS}", name="points"
    ),
    sa.CheckConstraint(f"length(reason) BETWEEN 1 AND {MAX_REASON}", name="reason"),
    sa.CheckConstraint(sa.column("status").in_(ADJUSTMENT_STATUSES), name="status"),
    sa.CheckConstraint("(status = 'requested') = (decided_by IS NULL AND decided_at IS NULL)", name="decided"),
    sa.CheckConstraint("(status = 'approved') = (entry_id IS NOT NULL)", name="posted_iff_approved"),
    #: four eyes, held by the database too
    sa.CheckConstraint("decided_by IS NULL OR decided_by <> requested_by", name="four_eyes"),
    sa.Index("ix_adjustments_id", "id"),
    sa.Index("ix_adjustments_status_requested_at", "status", "requested_at"),
)
