"""Tier and lifecycle history: every change, with where it came from and why."""

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
