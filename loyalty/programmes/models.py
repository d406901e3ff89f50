"""Programme versions."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

PROGRAMME_STATUSES = ("draft", "published")

#: Every version of the earning programme. A draft may be edited; a published
#: version is immutable and in force from ``effective_from`` until the next.
programme_versions = sa.Table(
    "programme_versions",
    metadata,
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    #: the programme document (JSON), as validated by rules.load_programme
    sa.Column("document", sa.Text, nullable=False),
    #: when it takes effect; set at publication
    sa.Column("effective_from", UTCDateTime),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("published_by", sa.String(100)),
    sa.Column("published_at", UTCDateTime),
    sa.CheckConstraint(sa.column("status").in_(PROGRAMME_STATUSES), name="status"),
    sa.CheckConstraint(
        "(status = 'published') = (effective_from IS NOT NULL AND published_at IS NOT NULL)",
        name="published_has_dates",
    ),
    sa.Index(
        "ix_programme_versions_effective_from_published",
        "effective_from",
        unique=True,
        sqlite_where=sa.text("status = 'published'"),
        postgresql_where=sa.text("status = 'published'"),
    ),
)
