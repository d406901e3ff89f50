"""Daily balances: each account's net movement per local day, rolled up from the postings.

The ``balances`` job sums the postings of every local day that has ended into
:data:`~loyalty.finance.models.daily_balances`, by account, entry kind and rule, with set-based
``INSERT ... SELECT`` statements, one transaction per chunk of days; it records in
:data:`~loyalty.finance.models.daily_balances_state` the last day rolled up, so a run that stops
part way is carried on by the next, and running it again changes nothing. The booking path
never writes these tables.

It also takes a member snapshot (:mod:`loyalty.finance.snapshots`) at the end of each local month
of the last :data:`SNAPSHOT_DAYS` it rolled up, each in a transaction of its own.

Reports split any span of posting dates (:func:`split`) into whole days rolled up, read from the
roll-up, and the rest (the days after the last one rolled up, today among them, and the partial
days at the span's ends), read from the postings. So a report is exact whether the job has run or
not, and costs what the days not rolled up cost.

A day is rolled up only once it ended :data:`SETTLE` before the job's ``as_of``, so that
transactions still committing at midnight are in; each run also rolls up again the last
:data:`REROLL_DAYS` days it had done, to take in a straggler posted later still.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.db import is_postgres, transaction
from loyalty.finance import snapshots
from loyalty.finance.models import daily_balances, daily_balances_state
from loyalty.ledger.models import POSTING_ENTRY, journal_entries, postings
from loyalty.runtime import Outcome, Runtime

#: How long after a local day ends the job first rolls it up.
SETTLE = dt.timedelta(minutes=30)
#: Days already rolled up that each run rolls up again.
REROLL_DAYS = 2
#: Days rolled up per transaction.
CHUNK_DAYS = 31
#: How far back from the last day rolled up a month's end gets a member snapshot
#: (:mod:`loyalty.finance.snapshots`): the months finance has yet to close. Older months are closed
#: and served as stored, or read from the ledger.
SNAPSHOT_DAYS = 92


@dataclass(frozen=True)
class Split:
    """A span of posting dates as whole local days to read from the roll-up (inclusive; ``None``
    for no lower bound) and the posting-date spans ``[start, end)`` to read from the postings."""

    days: tuple[dt.date | None, dt.date] | None = None
    live: list[tuple[dt.datetime | None, dt.datetime]] = field(default_factory=list)


def state(conn: Connection) -> tuple[ZoneInfo, dt.date] | None:
    """The roll-up's zone and last day, or ``None`` before the first run."""
    s = daily_balances_state.c
    row = conn.execute(sa.select(s.zone, s.through).where(s.id == 1)).first()
    return (ZoneInfo(row.zone), row.through) if row else None


def split(conn: Connection, start: dt.datetime | None, end: dt.datetime) -> Split:
    """How to sum the postings posted in ``[start, end)`` (``start`` ``None``: since the first)."""
    rolled = state(conn)
    if rolled is None:
        return Split(live=[(start, end)])
    zone, through = rolled
    first: dt.date | None = None
    if start is not None:
        first = calendar.local_date(start, zone)
        if calendar.start_of(first, zone) != start:
            first += dt.timedelta(days=1)
    cut = min(calendar.local_date(end, zone), through + dt.timedelta(days=1))  # days before it are whole and done
    if first is not None and first >= cut:
        return Split(live=[(start, end)])
    live: list[tuple[dt.datetime | None, dt.datetime]] = []
    if first is not None and start is not None and start < calendar.start_of(first, zone):
        live.append((start, calendar.start_of(first, zone)))
    if calendar.start_of(cut, zone) < end:
        live.append((calendar.start_of(cut, zone), end))
    return Split(days=(first, cut - dt.timedelta(days=1)), live=live)


def in_days(days: tuple[dt.date | None, dt.date]) -> sa.ColumnElement[bool]:
    d = daily_balances.c
    first, last = days
    return sa.and_(d.day <= last, d.day >= first) if first is not None else d.day <= last


def posted_in(
    span: tuple[dt.datetime | None, dt.datetime], posted_at: sa.ColumnElement[dt.datetime] = postings.c.posted_at
) -> sa.ColumnElement[bool]:
    """Posted in ``[start, end)``: the postings, or the entries if given ``journal_entries.c.posted_at``.
    A query joining the two bounds both: PostgreSQL prunes each table's monthly partitions by its own
    bounds alone (it does not carry a range across the join's equality)."""
    start, end = span
    return sa.and_(posted_at >= start, posted_at < end) if start is not None else posted_at < end


def roll_up(conn: Connection, first: dt.date, last: dt.date, zone: ZoneInfo) -> int:
    """Replace the rows of the local days ``first`` to ``last`` (inclusive) with the sums of their
    postings; returns the rows written."""
    d, p, je = daily_balances.c, postings.c, journal_entries.c
    conn.execute(sa.delete(daily_balances).where(d.day >= first, d.day <= last))
    joined = postings.join(journal_entries, POSTING_ENTRY)
    sums = (p.account, je.kind, sa.func.coalesce(p.rule_id, ""))
    columns = ["day", "account", "kind", "rule_id", "amount", "postings"]
    totals = (sa.func.sum(p.amount), sa.func.count())
    if is_postgres(conn):
        window = (calendar.start_of(first, zone), calendar.day_of(last, zone).end)
        # One statement for the whole chunk: the local day computed by the database, in the zone.
        local_day = sa.cast(sa.func.timezone(zone.key, p.posted_at), sa.Date)
        select = (
            sa.select(local_day, *sums, *totals)
            .select_from(joined)
            .where(*(posted_in(window, at) for at in (p.posted_at, je.posted_at)))
            .group_by(local_day, *sums)
        )
        return int(conn.execute(sa.insert(daily_balances).from_select(columns, select)).rowcount)
    written, day = 0, first
    while day <= last:  # SQLite knows no time zones: one statement per day, bounded in UTC
        span = calendar.day_of(day, zone)
        select = (
            sa.select(sa.literal(day, sa.Date), *sums, *totals)
            .select_from(joined)
            .where(*(posted_in((span.start, span.end), at) for at in (p.posted_at, je.posted_at)))
            .group_by(*sums)
        )
        written += int(conn.execute(sa.insert(daily_balances).from_select(columns, select)).rowcount)
        day += dt.timedelta(days=1)
    return written


def run(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The ``balances`` job: roll up every local day (the programme's zone at ``as_of``) that ended
    :data:`SETTLE` before ``as_of`` and is not rolled up yet, and the last :data:`REROLL_DAYS` done
    again; :data:`CHUNK_DAYS` days per transaction, the state moved on with each. A change of zone
    starts the roll-up over."""
    zone = rt.programmes.at(as_of).zone
    through = calendar.local_date(as_of - SETTLE, zone) - dt.timedelta(days=1)
    s = daily_balances_state.c
    with transaction(rt.engine) as conn:
        done = state(conn)
        if done is not None and done[0].key != zone.key:
            conn.execute(sa.delete(daily_balances))
            conn.execute(sa.delete(daily_balances_state))
            snapshots.forget(conn)
            done = None
        if done is not None:
            first = done[1] - dt.timedelta(days=REROLL_DAYS - 1)
        else:
            earliest = conn.execute(sa.select(sa.func.min(postings.c.posted_at))).scalar()
            if earliest is None:
                return Outcome(detail="no postings to roll up")
            first = calendar.local_date(earliest, zone)
    rows, day = 0, first
    while day <= through:
        last = min(day + dt.timedelta(days=CHUNK_DAYS - 1), through)
        with transaction(rt.engine) as conn:
            rows += roll_up(conn, day, last, zone)
            moved = {"zone": zone.key, "through": last, "updated_at": rt.now()}
            current = state(conn)
            if current is None:
                conn.execute(sa.insert(daily_balances_state).values(id=1, **moved))
            elif current[1] < last:
                conn.execute(sa.update(daily_balances_state).where(s.id == 1).values(**moved))
        day = last + dt.timedelta(days=1)
    if first > through:
        return Outcome(detail=f"nothing to roll up: days to {through.isoformat()} are done")
    taken = []
    for month_end in month_ends(max(first, through - dt.timedelta(days=SNAPSHOT_DAYS)), through):
        with transaction(rt.engine) as conn:
            rows += snapshots.take(conn, calendar.day_of(month_end, zone).end)
        taken.append(month_end.isoformat())
    detail = f"{first.isoformat()} to {through.isoformat()} rolled up ({zone.key})"
    return Outcome(rows=rows, detail=detail + (f"; member snapshots at the end of {', '.join(taken)}" if taken else ""))


def month_ends(first: dt.date, last: dt.date) -> list[dt.date]:
    """The last days of months from ``first`` to ``last`` (inclusive)."""
    out, day = [], first
    while day <= last:
        following = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        end = following - dt.timedelta(days=1)
        if end <= last:
            out.append(end)
        day = following
    return out
