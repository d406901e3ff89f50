"""Job runs: one row per run of a scheduled job, by the scheduler or by hand."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

RUN_STATUSES = ("running", "succeeded", "failed")

job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(48), nullable=False),
    #: the moment the run works as of (the clock's time, or --as-of)
    sa.Column("as_of", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("status", sa.String(16), nullable=False),
    #: rows the run changed (members reassessed, events delivered, ...)
    sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
    #: what went wrong, or a short summary
    sa.Column("detail", sa.Text),
    #: host:pid of the process that ran it
    sa.Column("runner", sa.String(100), nullable=False),
    sa.CheckConstraint(sa.column("status").in_(RUN_STATUSES), name="status"),
    sa.Index("ix_job_runs_job_started_at", "job", "started_at"),
)
