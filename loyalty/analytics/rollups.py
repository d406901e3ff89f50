"""The roll-up tables: the raw measures of every completed period, stored by the analytics job
and read back by the reports, so a report over completed periods reads a few rows per tier and
benefit instead of the journal."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.analytics import metrics
from loyalty.analytics.models import benefit_rollups, tier_rollups
from loyalty.analytics.periods import Span

Raw = tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]


def store(conn: Connection, span: Span, raw: Raw, *, now: dt.datetime) -> int:
    """Replace the stored rows of ``span`` with ``raw``; returns the rows written."""
    by_tier, by_benefit = raw
    for table in (tier_rollups, benefit_rollups):
        conn.execute(table.delete().where(table.c.kind == span.kind, table.c.period_start == span.start))
    key = {"kind": span.kind, "period_start": span.start, "built_at": now}
    tier_rows = [
        {
            **key,
            "tier": tier,
            **{m: values[m] for m in metrics.TIER_MEASURES},
            "migrations": metrics.dumps(values["migrations"]),
        }
        for tier, values in by_tier.items()
    ]
    benefit_rows = [
        {
            **key,
            "tier": tier,
            "benefit_code": code,
            **{m: values[m] for m in metrics.BENEFIT_MEASURES},
            "cost_by_funding": metrics.dumps(values["cost_by_funding"]),
            "refusals": metrics.dumps(values["refusals"]),
        }
        for (tier, code), values in by_benefit.items()
    ]
    if tier_rows:
        conn.execute(tier_rollups.insert(), tier_rows)
    if benefit_rows:
        conn.execute(benefit_rollups.insert(), benefit_rows)
    return len(tier_rows) + len(benefit_rows)


def load(conn: Connection, span: Span) -> tuple[Raw, dt.datetime] | None:
    """The stored raw measures of ``span`` and when they were built; ``None`` if not built."""
    t, b = tier_rollups.c, benefit_rollups.c
    tier_rows = list(conn.execute(sa.select(tier_rollups).where(t.kind == span.kind, t.period_start == span.start)))
    if not tier_rows:
        return None
    by_tier = {
        r.tier: {**{m: int(getattr(r, m)) for m in metrics.TIER_MEASURES}, "migrations": json.loads(r.migrations)}
        for r in tier_rows
    }
    by_benefit = {
        (r.tier, r.benefit_code): {
            **{m: int(getattr(r, m)) for m in metrics.BENEFIT_MEASURES},
            "cost_by_funding": json.loads(r.cost_by_funding),
            "refusals": json.loads(r.refusals),
        }
        for r in conn.execute(sa.select(benefit_rollups).where(b.kind == span.kind, b.period_start == span.start))
    }
    return (by_tier, by_benefit), min(r.built_at for r in tier_rows)


def built(conn: Connection, kind: str, first: dt.date, last: dt.date) -> set[dt.date]:
    """The start dates of the periods of ``kind`` stored between ``first`` and ``last``."""
    t = tier_rollups.c
    q = sa.select(t.period_start).where(t.kind == kind, t.period_start >= first, t.period_start <= last).distinct()
    return set(conn.execute(q).scalars())
