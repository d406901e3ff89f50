"""The ``analytics`` job: the roll-ups of every completed local day, week, month, quarter and year.

Who held which tier is computed for all the periods of a kind due in one pass
over the tier history (:func:`loyalty.analytics.metrics.held_in`); then each
period is built in its own transaction (its rows deleted and written again),
so a run is idempotent and one that stopped part way is finished by the
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

#: Most periods whose tier holders one pass computes (a year of days): bounds the memory a pass
#: takes and the work a stopped run leaves undone.
HELD_CHUNK = 366


def programme_at(rt: Runtime, moment: dt.datetime) -> Programme:
    """The programme in force at ``moment``; the default one when none is published yet."""
    try:
        return rt.programmes.at(moment)
    except NoProgramme:
        return default_programme()


def build(rt: Runtime, span: Span, *, now: dt.datetime, held: metrics.Held | None = None) -> int:
    """Compute ``span`` from the raw tables and store it, in one transaction; returns rows written.
    ``held`` is who held which tier in it, if computed already (:func:`metrics.held_in`)."""
    programme = programme_at(rt, span.bounds.end - dt.timedelta(microseconds=1))
    with transaction(rt.engine) as conn:
        raw = metrics.compute(conn, span, zone=programme.zone, tiers=list(programme.ladder.codes), held=held)
        return rollups.store(conn, span, raw, now=now)


def build_all(rt: Runtime, spans: list[Span], *, now: dt.datetime) -> int:
    """Build ``spans``: who held which tier is computed for all the periods of a kind in one pass
    over the tier history, then each period is computed and stored in its own transaction."""
    rows = 0
    for kind in KINDS:
        of_kind = sorted((s for s in spans if s.kind == kind), key=lambda s: s.start)
        for chunk in (of_kind[i : i + HELD_CHUNK] for i in range(0, len(of_kind), HELD_CHUNK)):
            with transaction(rt.engine, readonly=True) as conn:
                held = metrics.held_in(conn, chunk)
            rows += sum(build(rt, span, now=now, held=h) for span, h in zip(chunk, held, strict=True))
    return rows


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
    """Build the roll-ups due as of ``as_of`` (:func:`due`): the days first, then the weeks,
    months, quarters and years, each kind oldest first."""
    zone = programme_at(rt, as_of).zone
    spans = sorted(due(rt, as_of, zone), key=lambda s: (KINDS.index(s.kind), s.bounds.end))
    rows = build_all(rt, spans, now=rt.now())
    latest = max(spans, key=lambda s: (s.bounds.end, KINDS.index(s.kind)), default=None)
    return Outcome(rows=rows, detail=f"{len(spans)} periods built" + (f", up to {latest.label}" if latest else ""))
