"""Tier and lifecycle history: every change, with where it came from and why; and requests for a
tier override, asked for by one person and decided by another."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

TIER_SOURCES = ("enrolment", "event", "review", "override")
LIFECYCLE_SOURCES = ("event", "job")

tier_changes = sa.Table(
    "tier_changes",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("from_tier", sa.String(64)),
    sa.Column("to_tier", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    #: which criterion was met (or no longer met), or the override's reason
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("programme_version", sa.String(32)),
    sa.Column("changed_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("source").in_(TIER_SOURCES), name="source"),
    sa.Index("ix_tier_changes_member_id_changed_at", "member_id", "changed_at"),
)

lifecycle_changes = sa.Table(
    "lifecycle_changes",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("from_stage", sa.String(16)),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("source").in_(LIFECYCLE_SOURCES), name="source"),
    sa.Index("ix_lifecycle_changes_member_id_changed_at", "member_id", "changed_at"),
)

OVERRIDE_REQUEST_STATUSES = ("pending", "approved", "rejected")
#: Longest reason and note of an override request, in characters.
MAX_OVERRIDE_REASON = 500

tier_override_requests = sa.Table(
    "tier_override_requests",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
    #: the tier to pin, a code of the ladder in force when it was asked for (checked again on approval)
    sa.Column("tier", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(MAX_OVERRIDE_REASON), nullable=False),
    #: when the override is to end
    sa.Column("until", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: the principal (API key name, or the admin UI's signed-in user) who asked for it
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    #: the other principal who approved or rejected it
    sa.Column("decided_by", sa.String(100)),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("note", sa.String(MAX_OVERRIDE_REASON)),
    sa.CheckConstraint(f"length(reason) BETWEEN 1 AND {MAX_OVERRIDE_REASON}", name="reason"),
    sa.CheckConstraint(sa.column("status").in_(OVERRIDE_REQUEST_STATUSES), name="status"),
    sa.CheckConstraint("(status = 'pending') = (decided_by IS NULL AND decided_at IS NULL)", name="decided"),
    #: four eyes, held by the database too
    sa.CheckConstraint("decided_by IS NULL OR decided_by <> requested_by", name="four_eyes"),
    sa.Index("ix_tier_override_requests_id", "id"),
    sa.Index("ix_tier_override_requests_status_requested_at", "status", "requested_at"),
)
