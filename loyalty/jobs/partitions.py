"""The ``partitions`` job: the journal's monthly partitions, created ahead (PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from loyalty.db import transaction
from loyalty.ledger import partitions
from loyalty.runtime import Outcome, Runtime


def run(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Create the partitions of ``as_of``'s UTC month and of the ``LOYALTY_PARTITION_MONTHS_AHEAD``
    months after it that have none yet. Fails, creating nothing, if a DEFAULT partition holds rows
    of one of those months (:class:`~loyalty.ledger.partitions.PartitionBlocked`, naming them).
    Nothing to do on SQLite."""
    with transaction(rt.engine) as conn:
        if not partitions.partitioned(conn):
            return Outcome(detail="the journal is not partitioned on this database")
        first = partitions.month_of(as_of)
        wanted = partitions.months(first, partitions.add_months(first, rt.settings.partition_months_ahead))
        created = partitions.create_months(conn, wanted)
    span = f"{wanted[0]:%Y-%m} to {wanted[-1]:%Y-%m}"
    if not created:
        return Outcome(detail=f"every month from {span} has its partitions")
    return Outcome(rows=len(created), detail=f"created {', '.join(created)} (months {span} covered)")
