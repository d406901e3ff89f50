"""Enrolment and the member's view of their points."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.calendar import iso
from loyalty.db import insert_ignore
from loyalty.errors import MemberNotFound
from loyalty.events.service import emit
from loyalty.ledger import service as ledger
from loyalty.ledger.models import POSTING_ENTRY, journal_entries, member_accounts, point_lots, postings
from loyalty.records.models import members
from loyalty.tiers import service as tiers
from rules import Award, Programme, evaluate

EXPIRY_WINDOWS = (30, 60, 90)


@dataclass(frozen=True)
class Enrolment:
    member_id: str
    birth_date: dt.date | None = None
    enrolled_at: dt.datetime | None = None
    channel: str | None = None


def enrol(conn: Connection, cmd: Enrolment, *, programme: Programme, now: dt.datetime) -> tuple[bool, dict[str, Any]]:
    """Enrol a bank customer and credit the programme's account-opening awards.

    Enrolling an existing member changes nothing and returns them as they
    are. Returns ``(created, member view)``.
    """
    created = conn.execute(
        insert_ignore(conn, members)
        .values(
            member_id=cmd.member_id,
            birth_date=cmd.birth_date,
            enrolled_at=cmd.enrolled_at or now,
            channel=cmd.channel,
            created_at=now,
        )
        .returning(members.c.member_id)
    ).first()
    if created is not None:
        conn.execute(member_accounts.insert().values(member_id=cmd.member_id, last_activity_at=None))
        emit(
            conn,
            "member.enrolled",
            member_id=cmd.member_id,
            payload={"enrolled_at": iso(cmd.enrolled_at or now), "channel": cmd.channel},
            now=now,
        )
        tiers.on_enrolment(conn, cmd.member_id, programme=programme, now=now)
        awards = evaluate(programme, "account_opened", {"channel": cmd.channel})
        credit_bonus(conn, cmd.member_id, awards, source="account_opened", programme=programme, now=now)
    return created is not None, member_view(conn, cmd.member_id, programme=programme, now=now)


def credit_bonus(
    conn: Connection,
    member_id: str,
    awards: list[Award],
    *,
    source: str,
    programme: Programme,
    now: dt.datetime,
    source_ref: str | None = None,
    earned_at: dt.datetime | None = None,
    tier: str | None = None,
) -> None:
    """Credit a bonus (not a transaction's accrual) and emit its ``points.accrued`` event.

    ``source`` names what caused it (``account_opened``, ``birthday``, ...);
    ``source_ref`` makes it once per member (default: ``source``); ``tier`` is the member's
    (its points' expiry policy; read from the member when not given)."""
    if not awards:
        return
    posted = ledger.accrue(
        conn,
        member_id,
        awards,
        kind="bonus",
        source_ref=source_ref or source,
        earned_at=earned_at or now,
        expires_at=ledger.lot_expiry(programme, earned_at or now, tier or _tier(conn, member_id)),
        now=now,
        programme_version=programme.version,
    )
    emit(
        conn,
        "points.accrued",
        member_id=member_id,
        payload={
            "source": source,
            "entry_id": posted.entry_id,
            "points": posted.points,
            "balance": posted.total_after,
            "rules": [a.rule_id for a in awards],
        },
        now=earned_at or now,
    )


def _tier(conn: Connection, member_id: str) -> str | None:
    return conn.execute(sa.select(members.c.tier).where(members.c.member_id == member_id)).scalar()


def member_view(conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime) -> dict[str, Any]:
    """Balance, held and available points, points expiring soon, activity, tier and lifecycle stage.

    ``balance`` is the points the member owns, held ones included; ``held`` what pending
    redemptions reserve; ``available`` = balance - held, what they can spend now (below zero
    only after a refund took back points already spent)."""
    m, a = members.c, member_accounts.c
    row = conn.execute(
        sa.select(m.member_id, m.birth_date, m.enrolled_at, m.channel, a.balance, a.held, a.last_activity_at)
        .join(member_accounts, member_accounts.c.member_id == m.member_id)
        .where(m.member_id == member_id)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    pl = point_lots.c
    expiring = conn.execute(
        sa.select(
            *[
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case((pl.expires_at <= calendar.add_days(now, d, programme.zone), pl.remaining), else_=0)
                    ),
                    0,
                ).label(f"d{d}")
                for d in EXPIRY_WINDOWS
            ]
        ).where(pl.member_id == member_id, pl.remaining > 0, pl.expires_at > now)
    ).one()
    return {
        "member_id": row.member_id,
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "enrolled_at": iso(row.enrolled_at),
        "channel": row.channel,
        # The member account's stored balance is what is left after holds: the available points.
        "balance": int(row.balance) + int(row.held),
        "held": int(row.held),
        "available": int(row.balance),
        "expiring": [{"within_days": d, "points": int(getattr(expiring, f"d{d}"))} for d in EXPIRY_WINDOWS],
        "last_activity_at": iso(row.last_activity_at),
        **tiers.tier_view(conn, member_id, programme=programme, now=now),
    }


def expiry_schedule(conn: Connection, member_id: str, *, zone: dt.tzinfo, now: dt.datetime) -> dict[str, Any]:
    """The member's unexpired points by the local month they expire in, soonest first, and the
    points that never expire. Held points are in no lot, so they are not in it."""
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    pl = point_lots.c
    lots = conn.execute(
        sa.select(pl.expires_at, pl.remaining).where(pl.member_id == member_id, pl.remaining > 0, pl.expires_at > now)
    )
    months: dict[str, int] = defaultdict(int)
    never = 0
    for lot in lots:
        if lot.expires_at >= ledger.NEVER:
            never += int(lot.remaining)
        else:
            months[calendar.local_date(lot.expires_at, zone).strftime("%Y-%m")] += int(lot.remaining)
    return {
        "member_id": member_id,
        "months": [{"month": month, "points": points} for month, points in sorted(months.items())],
        "never_expire": never,
    }


def statement(conn: Connection, member_id: str, *, limit: int, before_seq: int | None) -> dict[str, Any]:
    """The member's entries, newest first, ``limit`` at a time (keyset by seq).

    Each entry shows what it did to the member's balance (held points included), to the held
    points and to the available points, as :func:`member_view` counts them. The ledger stores
    the member account's balance, which holds leave out; the held points after an entry are the
    member's ``holds`` postings up to it."""
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    je, p = journal_entries.c, postings.c
    held_change = (
        sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0))
        .where(p.member_id == je.member_id, p.entry_id == je.id, p.account == ledger.HOLDS)
        .scalar_subquery()
    )
    q = sa.select(
        je.id,
        je.seq,
        je.kind,
        je.points,
        je.balance_after,
        held_change.label("held_change"),
        je.transaction_id,
        je.source_ref,
        je.related_entry_id,
        je.posted_at,
        je.occurred_at,
    ).where(je.member_id == member_id)
    if before_seq is not None:
        q = q.where(je.seq < before_seq)
    rows = conn.execute(q.order_by(je.seq.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    entries: list[dict[str, Any]] = []
    if rows:
        # Entries are never changed, so what was held before the page's oldest entry is fixed.
        held = int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0))
                .select_from(postings.join(journal_entries, POSTING_ENTRY))
                .where(p.member_id == member_id, p.account == ledger.HOLDS, je.seq < rows[-1].seq)
            ).scalar_one()
        )
        for r in reversed(rows):
            held += int(r.held_change)
            available = int(r.balance_after)
            entries.append(
                {
                    "entry_id": r.id,
                    "seq": r.seq,
                    "kind": r.kind,
                    "points": int(r.points) + int(r.held_change),
                    "balance_after": available + held,
                    "held_after": held,
                    "available_after": available,
                    "transaction_id": r.transaction_id,
                    "source_ref": r.source_ref,
                    "related_entry_id": r.related_entry_id,
                    "posted_at": iso(r.posted_at),
                    "occurred_at": iso(r.occurred_at),
                }
            )
        entries.reverse()
    return {
        "member_id": member_id,
        "entries": entries,
        "next_cursor": str(rows[-1].seq) if more else None,
    }


def counts_by_tier_and_stage(conn: Connection) -> list[dict[str, Any]]:
    """How many members each tier holds in each lifecycle stage (the tier as stored: an override included)."""
    m = members.c
    tier = sa.func.coalesce(m.override_tier, m.tier)
    rows = conn.execute(
        sa.select(tier.label("tier"), m.lifecycle_stage, sa.func.count().label("members"))
        .group_by(tier, m.lifecycle_stage)
        .order_by(tier, m.lifecycle_stage)
    )
    return [{"tier": r.tier, "stage": r.lifecycle_stage, "members": int(r.members)} for r in rows]


def open_lots(conn: Connection, member_id: str, *, now: dt.datetime, limit: int = 100) -> list[dict[str, Any]]:
    """The member's lots with points left, soonest to expire first (the order they are spent in)."""
    pl = point_lots.c
    rows = conn.execute(
        sa.select(pl.rule_id, pl.reason, pl.funding_source, pl.original, pl.remaining, pl.earned_at, pl.expires_at)
        .where(pl.member_id == member_id, pl.remaining > 0, pl.expires_at > now)
        .order_by(pl.expires_at, pl.earned_at)
        .limit(limit)
    )
    return [
        {
            "rule_id": r.rule_id,
            "reason": r.reason,
            "funding_source": r.funding_source,
            "original": int(r.original),
            "remaining": int(r.remaining),
            "earned_at": iso(r.earned_at),
            "expires_at": None if r.expires_at >= ledger.NEVER else iso(r.expires_at),
        }
        for r in rows
    ]
