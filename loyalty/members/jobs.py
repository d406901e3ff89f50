"""The member jobs: birthday gifts, notices of points about to expire, and their lapse.

Each is idempotent: an event's dedup key and a bonus's source make each
happen once per member and date, however often the job runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa

from loyalty import calendar
from loyalty.accrual.context import member_facts
from loyalty.calendar import iso
from loyalty.db import UTCDateTime, insert_ignore, is_postgres, transaction
from loyalty.events.models import events
from loyalty.events.service import INSERT_EVENT, emit, event_row, json_object
from loyalty.ledger import service as ledger
from loyalty.ledger.models import point_lots
from loyalty.members.service import credit_bonus
from loyalty.records.models import member_profiles, members
from loyalty.runtime import Outcome, Runtime
from loyalty.tiers.jobs import ranges
from rules import evaluate


def _birth_month_day(conn: Any) -> sa.ColumnElement[str]:
    birth = members.c.birth_date
    if is_postgres(conn):
        return sa.func.to_char(birth, "MM-DD")
    return sa.func.strftime("%m-%d", birth)


def birthdays(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Members whose birthday is ``as_of``'s local date get the ``member.birthday`` event and
    whatever the programme's ``birthday`` rules award, once per member per year.

    Members born on 29 February celebrate on the 28th in common years. The
    event's dedup key (``member.birthday:<year>``) and the bonus's source
    (``birthday:<year>``) make each happen once, however often the job runs."""
    programme = rt.programmes.at(as_of)
    day = calendar.local_date(as_of, programme.zone)
    days = calendar.birthdays_on(day)
    m, p = members.c, member_profiles.c
    greeted = awarded = 0
    last = ""
    while True:
        with transaction(rt.engine) as conn:
            rows = conn.execute(
                sa.select(m.member_id, m.birth_date, m.enrolled_at, m.tier, p.products_held)
                .outerjoin(member_profiles, p.member_id == m.member_id)
                .where(m.member_id > last, m.birth_date.is_not(None), _birth_month_day(conn).in_(days))
                .order_by(m.member_id)
                .limit(500)
            ).all()
            if not rows:
                break
            for r in rows:
                if not emit(
                    conn,
                    "member.birthday",
                    member_id=r.member_id,
                    payload={"date": day.isoformat(), "tier": r.tier},
                    now=as_of,
                    dedup_key=f"member.birthday:{day.year}",
                ):
                    continue
                greeted += 1
                facts = member_facts(
                    r.birth_date, r.enrolled_at, as_of, programme.zone, tier=r.tier, products=r.products_held
                )
                awards = evaluate(programme, "birthday", {**facts, "occurred_at": as_of})
                if not awards:
                    continue
                credit_bonus(
                    conn,
                    r.member_id,
                    awards,
                    source="birthday",
                    source_ref=f"birthday:{day.year}",
                    programme=programme,
                    now=rt.now(),
                    earned_at=as_of,
                    tier=r.tier,
                )
                awarded += 1
            last = rows[-1].member_id
    return Outcome(rows=greeted, detail=f"{day.isoformat()}: {greeted} birthdays, {awarded} gifts")


#: How far ahead members are told their points expire.
EXPIRING_NOTICE_DAYS = 30


def points_expiring(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """One ``points.expiring`` event per member with points that expire on the local date
    30 days after ``as_of``: how many, and when. Once per member and date."""
    programme = rt.programmes.at(as_of)
    zone = programme.zone
    day = calendar.local_date(as_of, zone) + dt.timedelta(days=EXPIRING_NOTICE_DAYS)
    start, end = calendar.day_of(day, zone)
    pl = point_lots.c
    with transaction(rt.engine) as conn:
        total = sa.func.sum(pl.remaining)
        expiring = (
            sa.select(
                sa.literal("points.expiring"),
                pl.member_id,
                sa.literal(f"points.expiring:{day.isoformat()}"),
                json_object(conn, "points", total, "expires_on", day.isoformat()),
                sa.literal(as_of, UTCDateTime),
            )
            .where(pl.remaining > 0, pl.expires_at >= start, pl.expires_at < end)
            .group_by(pl.member_id)
        )
        written = conn.execute(
            insert_ignore(conn, events).from_select(
                ["type", "member_id", "dedup_key", "payload", "occurred_at"], expiring
            )
        ).rowcount
    return Outcome(rows=written, detail=f"{written} members with points expiring on {day.isoformat()}")


#: Members per chunk of the expiry job (one transaction each): small, so no booking waits long.
EXPIRY_CHUNK = 500


def _expire_each(
    conn: Any, member_ids: list[str], *, as_of: dt.datetime, now: Callable[[], dt.datetime]
) -> dict[str, ledger.Posted]:
    """The lapse of each member's points in turn, in member id order (SQLite's path)."""
    posted = {}
    for member_id in member_ids:
        p = ledger.expire(conn, member_id, as_of=as_of, now=now())
        if p is not None:
            posted[member_id] = p
    return posted


def expiry(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Lapse every lot whose expiry is at or before ``as_of``: per member, one ``expiry`` entry
    to ``expired`` for the lots' remaining points, first-expiring-first, and a ``points.expired``
    event. Works through the members who have such lots in chunks of member ids, one transaction
    each. The chunk's member accounts are locked in member id order, and nothing else: a
    booking locks one member's account and member row, so the two never wait on each other in
    a cycle. A member done has no such lot left, so running it again, or again after a crash,
    posts nothing more.

    On PostgreSQL a chunk is lapsed set-based (:func:`ledger.expire_members`: a few statements
    whatever its size); on SQLite member by member (:func:`ledger.expire`). Both write the same
    rows; the chunk's events go in one insert."""
    pl, m = point_lots.c, members.c
    # Correlated, so finding a chunk's members probes each member's open lots (ix_point_lots_open)
    # instead of reading every lot due for every chunk.
    due = sa.exists().where(pl.member_id == m.member_id, pl.remaining > 0, pl.expires_at <= as_of)
    members_done = points = 0
    for chunk, _ in ranges(rt, due, EXPIRY_CHUNK):
        with transaction(rt.engine) as conn:
            member_ids = list(conn.execute(sa.select(m.member_id).where(chunk).order_by(m.member_id)).scalars())
            if is_postgres(conn):
                posted = ledger.expire_members(conn, member_ids, as_of=as_of, now=rt.now())
            else:
                posted = _expire_each(conn, member_ids, as_of=as_of, now=rt.now)
            members_done += len(posted)
            points -= sum(p.points for p in posted.values())
            if posted:
                conn.execute(
                    INSERT_EVENT,
                    [
                        event_row(
                            "points.expired",
                            member_id=member_id,
                            payload={
                                "entry_id": p.entry_id,
                                "points": -p.points,
                                "balance": p.total_after,
                                "lots": [
                                    {
                                        "lot_id": lot["id"],
                                        "points": lot["points"],
                                        "expired_at": iso(cast(dt.datetime, lot["expires_at"])),
                                    }
                                    for lot in p.lots
                                ],
                            },
                            now=as_of,
                        )
                        for member_id, p in posted.items()
                    ],
                )
    return Outcome(rows=members_done, detail=f"{points} points of {members_done} members expired")
