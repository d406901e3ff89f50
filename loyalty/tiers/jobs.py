"""The member jobs: the quarterly tier review, daily lifecycle stages, birthday gifts, expiring points.

Each works through the members in chunks of member ids, one transaction per
chunk, and is idempotent: a chunk already done is skipped or changes
nothing, so a run that crashed is finished by running it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from loyalty import Runtime
from loyalty.accrual.context import member_facts
from loyalty.db import UTCDateTime, insert_ignore, is_postgres, transaction
from loyalty.events.models import events
from loyalty.events.service import emit, json_object
from loyalty.jobs import Outcome
from loyalty.ledger.models import point_lots
from loyalty.members.models import member_profiles, members
from loyalty.members.service import credit_bonus
from loyalty.tiers.service import apply_stages, apply_tiers
from loyalty.tiers.sql import KeyRange
from rules import evaluate

#: Members per chunk (one transaction each).
CHUNK = 20_000


def ranges(rt: Runtime, where: Any, size: int | None = None) -> Iterator[tuple[Any, KeyRange]]:
    """Successive chunks of at most ``size`` (default :data:`CHUNK`) members matching ``where``, by
    member id: each as a condition selecting its members and the range of member ids it lies in.

    Each chunk's bounds are read when it is due, so members a chunk takes out of
    ``where`` (a review marks them reviewed) do not shift later chunks."""
    size = size or CHUNK
    m = members.c
    last: str | None = None
    while True:
        after = m.member_id > last if last is not None else sa.true()
        with transaction(rt.engine, readonly=True) as conn:
            hi = conn.execute(
                sa.select(m.member_id).where(where, after).order_by(m.member_id).offset(size - 1).limit(1)
            ).scalar()
        if hi is None:
            yield sa.and_(where, after), (last, None)
            return
        yield sa.and_(where, after, m.member_id <= hi), (last, hi)
        last = hi


def lock(conn: Any, chunk: Any) -> None:
    """Lock the chunk's member rows in member id order, the order bookings and imports
    lock them in, so a job and a booking never wait on each other in a cycle."""
    conn.execute(
        sa.select(members.c.member_id).where(chunk).order_by(members.c.member_id).with_for_update(key_share=True)
    )


def quarter(as_of: dt.datetime, zone: dt.tzinfo) -> str:
    local = as_of.astimezone(zone)
    return f"{local.year}Q{(local.month - 1) // 3 + 1}"


def tier_review(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The quarterly review: every member not yet reviewed this quarter is reassessed.
    Changes are stamped with ``as_of``.

    Members who qualify higher move up; members who no longer qualify move
    down one step; overrides that have ended are cleared first; overrides in
    force are left alone. Each member is marked with the quarter, so a second
    run in the same quarter changes nothing."""
    programme = rt.programmes.at(as_of)
    period = quarter(as_of, programme.zone)
    m = members.c
    pending = sa.or_(m.tier_reviewed.is_(None), m.tier_reviewed != period)
    reviewed = changed = 0
    for chunk, key_range in ranges(rt, pending):
        with transaction(rt.engine) as conn:
            lock(conn, chunk)
            changed += apply_tiers(
                conn, chunk, mode="review", programme=programme, as_of=as_of, now=as_of, key_range=key_range
            )
            reviewed += conn.execute(members.update().where(chunk).values(tier_reviewed=period)).rowcount
    return Outcome(rows=changed, detail=f"{period}: {reviewed} members reviewed, {changed} changed tier")


def lifecycle(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Recompute every member's lifecycle stage as of ``as_of`` (decline and win-back come with time alone)."""
    programme = rt.programmes.at(as_of)
    changed = 0
    for chunk, _ in ranges(rt, sa.true()):
        with transaction(rt.engine) as conn:
            lock(conn, chunk)
            changed += apply_stages(conn, chunk, programme=programme, as_of=as_of, now=as_of, source="job")
    return Outcome(rows=changed, detail=f"{changed} members changed stage")


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
    day = as_of.astimezone(programme.zone).date()
    days = [day.strftime("%m-%d")]
    if days == ["02-28"] and not _leap(day.year):
        days.append("02-29")
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
                )
                awarded += 1
            last = rows[-1].member_id
    return Outcome(rows=greeted, detail=f"{day.isoformat()}: {greeted} birthdays, {awarded} gifts")


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


#: How far ahead members are told their points expire.
EXPIRING_NOTICE_DAYS = 30


def points_expiring(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """One ``points.expiring`` event per member with points that expire on the local date
    30 days after ``as_of``: how many, and when. Once per member and date."""
    programme = rt.programmes.at(as_of)
    zone = programme.zone
    day = as_of.astimezone(zone).date() + dt.timedelta(days=EXPIRING_NOTICE_DAYS)
    start = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
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
