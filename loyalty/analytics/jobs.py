"""The ``analytics`` job: the roll-ups of every completed local day, week, month, quarter and year.

Each period is built in its own transaction (its rows deleted and written
again), so a run is idempotent and one that stopped part way is finished by the
next: a run builds every completed period not built yet, from the first tier
change (the first enrolment) to the day before ``as_of``, and always rebuilds
that day and the periods ending with it: ``loyalty jobs run analytics --as-of
2026-03-15`` rebuilds 14 March (and March, Q1 ... if they end that day).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from loyalty import calendar
from loyalty.analytics import metrics, rollups
from loyalty.analytics.models import KINDS
from loyalty.analytics.periods import Span, following, span_at
from loyalty.db import transaction
from loyalty.programmes.service import NoProgramme
from loyalty.runtime import Outcome, Runtime
from loyalty.tiers.models import tier_changes
from rules import Programme, default_programme


def programme_at(rt: Runtime, moment: dt.datetime) -> Programme:
    """The programme in force at ``moment``; the default one when none is published yet."""
    try:
        return rt.programmes.at(moment)
    except NoProgramme:
        return default_programme()


def build(rt: Runtime, span: Span, *, now: dt.datetime) -> int:
    """Compute ``span`` from the raw tables and store it, in one transaction; returns rows written."""
    programme = programme_at(rt, span.bounds.end - dt.timedelta(microseconds=1))
    with transaction(rt.engine) as conn:
        raw = metrics.compute(conn, span, zone=programme.zone, tiers=list(programme.ladder.codes))
        return rollups.store(conn, span, raw, now=now)


def due(rt: Runtime, as_of: dt.datetime, zone: dt.tzinfo) -> list[Span]:
    """The completed periods to build as of ``as_of``: those not built yet, and the day before
    ``as_of`` with the periods that end with it."""
    with transaction(rt.engine, readonly=True) as conn:
        first_change = conn.execute(sa.select(sa.func.min(tier_changes.c.changed_at))).scalar()
        if first_change is None:
            return []
        first = calendar.local_date(first_change, zone)
        yesterday = calendar.local_date(as_of, zone) - dt.timedelta(days=1)
        out: list[Span] = []
        for kind in KINDS:
            span = span_at(kind, calendar.start_of(first, zone), zone)
            stored = rollups.built(conn, kind, span.start, yesterday)
            while span.last_day(zone) <= yesterday:
                if span.start not in stored or span.last_day(zone) == yesterday:
                    out.append(span)
                span = following(span, zone)
    return out


def analytics(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Build the roll-ups due as of ``as_of`` (:func:`due`), oldest and shortest first."""
    zone = programme_at(rt, as_of).zone
    spans = sorted(due(rt, as_of, zone), key=lambda s: (s.bounds.end, KINDS.index(s.kind)))
    rows = sum(build(rt, span, now=rt.now()) for span in spans)
    return Outcome(rows=rows, detail=f"{len(spans)} periods built" + (f", up to {spans[-1].label}" if spans else ""))
