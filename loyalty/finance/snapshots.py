"""Member snapshots: each member's figures at the end of a local month, so that a report need not
read every entry and every lot the ledger ever held.

The ``balances`` job (:mod:`loyalty.finance.balances`) takes a snapshot at the end of each recent
local month it rolls up: per member, the balance after their last entry, their holds pending and
the sum of their postings to the outstanding accounts (:data:`member_snapshots`), and the points
they are owed by funding source (:data:`member_lot_snapshots`). Then

- :func:`members_at` (the roll-forward's tie-out) reads the latest snapshot at or before its end
  and adds what was posted between the two, found through the postings' index on account and
  posting date; with no snapshot it reads the whole ledger;
- :func:`owed_at` (the liability) reads the snapshot taken exactly at its end, or else the lots.

Each is what the same query over the whole ledger gives (``tests/test_daily_balances.py``
compares them); like the daily balances, the snapshots are a cache the ledger can always rebuild.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.finance.models import member_lot_snapshots, member_snapshots
from loyalty.ledger.models import holds, journal_entries, lot_consumptions, point_lots, postings

#: The accounts whose balances the bank owes its members.
OUTSTANDING = ("member", "holds")


@dataclass(frozen=True)
class Figures:
    """A member's figures at an instant: ``balance`` after their last entry before it, ``held`` by
    holds pending then, ``posted`` to the outstanding accounts before it."""

    balance: int = 0
    held: int = 0
    posted: int = 0

    @property
    def owned(self) -> int:
        """What the member owns, as the entries and holds record it."""
        return self.balance + self.held


def _pending(end: dt.datetime) -> sa.ColumnElement[bool]:
    h = holds.c
    return sa.and_(h.created_at < end, sa.or_(h.resolved_at.is_(None), h.resolved_at >= end))


def _last_balances(entries: sa.FromClause) -> sa.Select[Any]:
    """(member_id, balance_after) of each member's entry of highest ``seq`` among ``entries``
    (a selectable of ``member_id, seq``)."""
    je = journal_entries.c
    last = sa.select(entries.c.member_id, sa.func.max(entries.c.seq).label("seq")).group_by(entries.c.member_id)
    last_q = last.subquery()
    return sa.select(je.member_id, je.balance_after).join(
        last_q, sa.and_(last_q.c.member_id == je.member_id, last_q.c.seq == je.seq)
    )


def _figures_query(end: dt.datetime) -> sa.Select[Any]:
    """(member_id, balance, held, posted) of every member at ``end``, from the whole ledger."""
    je, h, p = journal_entries.c, holds.c, postings.c
    zero = sa.literal(0, sa.BigInteger)
    entries = sa.select(je.member_id, je.seq).where(je.posted_at < end).subquery()
    balances = _last_balances(entries).subquery()
    parts = sa.union_all(
        sa.select(
            balances.c.member_id, balances.c.balance_after.label("balance"), zero.label("held"), zero.label("posted")
        ),
        sa.select(h.member_id, zero, h.points, zero).where(_pending(end)),
        sa.select(p.member_id, zero, zero, p.amount).where(p.account.in_(OUTSTANDING), p.posted_at < end),
    ).subquery()
    return sa.select(
        parts.c.member_id, sa.func.sum(parts.c.balance), sa.func.sum(parts.c.held), sa.func.sum(parts.c.posted)
    ).group_by(parts.c.member_id)


def _owed_query(end: dt.datetime) -> sa.Select[Any]:
    """(member_id, funding_source, points) owed at ``end``: what the lots earned before it hold then,
    plus what holds pending then took from them; rows with no points left out."""
    pl, lc, je, h = point_lots.c, lot_consumptions.c, journal_entries.c, holds.c
    earned = (
        sa.select(pl.member_id, pl.funding_source, pl.original.label("points"))
        .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
        .where(je.posted_at < end)
    )
    taken = (
        sa.select(pl.member_id, pl.funding_source, -lc.points)
        .select_from(
            lot_consumptions.join(journal_entries, sa.and_(je.member_id == lc.member_id, je.id == lc.entry_id))
            .join(point_lots, sa.and_(pl.member_id == lc.member_id, pl.id == lc.lot_id))
            .outerjoin(holds, sa.and_(h.member_id == je.member_id, h.hold_entry_id == je.id))
        )
        .where(je.posted_at < end, sa.not_(sa.and_(je.kind == "hold", _pending(end))))
    )
    parts = sa.union_all(earned, taken).subquery()
    total = sa.func.sum(parts.c.points)
    return (
        sa.select(parts.c.member_id, parts.c.funding_source, total)
        .group_by(parts.c.member_id, parts.c.funding_source)
        .having(total != 0)
    )


def take(conn: Connection, at: dt.datetime) -> int:
    """Write the snapshot at ``at`` (replacing one taken before); returns the member rows written."""
    ms, mls = member_snapshots.c, member_lot_snapshots.c
    conn.execute(sa.delete(member_snapshots).where(ms.at == at))
    conn.execute(sa.delete(member_lot_snapshots).where(mls.at == at))
    figures = _figures_query(end=at).subquery()
    rows = conn.execute(
        sa.insert(member_snapshots).from_select(
            ["at", "member_id", "balance", "held", "posted"],
            sa.select(sa.literal(at, ms.at.type), *figures.c),
        )
    ).rowcount
    owed = _owed_query(end=at).subquery()
    conn.execute(
        sa.insert(member_lot_snapshots).from_select(
            ["at", "member_id", "funding_source", "points"], sa.select(sa.literal(at, mls.at.type), *owed.c)
        )
    )
    return int(rows)


def forget(conn: Connection) -> None:
    """Drop every snapshot (the roll-up starts over)."""
    conn.execute(sa.delete(member_snapshots))
    conn.execute(sa.delete(member_lot_snapshots))


def latest(conn: Connection, end: dt.datetime) -> dt.datetime | None:
    """The instant of the latest snapshot at or before ``end``."""
    ms = member_snapshots.c
    found: dt.datetime | None = conn.execute(sa.select(sa.func.max(ms.at)).where(ms.at <= end)).scalar()
    return found


def members_at(conn: Connection, end: dt.datetime) -> dict[str, Figures]:
    """Every member's :class:`Figures` at ``end``: the latest snapshot at or before it and what was
    posted from the snapshot to ``end``, or the whole ledger when there is no snapshot."""
    at = latest(conn, end)
    if at is None:
        return {r[0]: Figures(int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(_figures_query(end))}
    ms = member_snapshots.c
    out = {
        r.member_id: Figures(int(r.balance), int(r.held), int(r.posted))
        for r in conn.execute(sa.select(ms.member_id, ms.balance, ms.held, ms.posted).where(ms.at == at))
    }
    if at == end:
        return out
    p, je, h = postings.c, journal_entries.c, holds.c
    # What was posted after the snapshot, through the postings' index on (account, posted_at): every
    # entry moves a member's own account or ``holds``, so its postings there find every member who moved.
    window = sa.and_(p.account.in_(OUTSTANDING), p.posted_at >= at, p.posted_at < end)
    last_balance = (  # the member's last entry before the end, found backwards through (member_id, seq)
        sa.select(je.balance_after)
        .where(je.member_id == p.member_id, je.posted_at < end)
        .order_by(je.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    posted: dict[str, int] = {}
    balances: dict[str, int] = {}
    for member, amount, balance in conn.execute(
        sa.select(p.member_id, sa.func.sum(p.amount), last_balance).where(window).group_by(p.member_id)
    ):
        posted[member], balances[member] = int(amount), int(balance)
    held: dict[str, int] = {
        r[0]: int(r[1])
        for r in conn.execute(sa.select(h.member_id, sa.func.sum(h.points)).where(_pending(end)).group_by(h.member_id))
    }
    for member in set(out) | set(posted) | set(held):
        base = out.get(member, Figures())
        out[member] = Figures(
            balances.get(member, base.balance), held.get(member, 0), base.posted + posted.get(member, 0)
        )
    return out


def owed_at(conn: Connection, end: dt.datetime) -> dict[tuple[str, str], int]:
    """Points owed at ``end`` by (member, funding source): the snapshot taken at ``end``, or else the
    lots and their consumptions."""
    mls = member_lot_snapshots.c
    if latest(conn, end) == end:
        query: sa.Select[Any] = sa.select(mls.member_id, mls.funding_source, mls.points).where(mls.at == end)
    else:
        query = _owed_query(end)
    return {(r[0], r[1]): int(r[2]) for r in conn.execute(query)}
