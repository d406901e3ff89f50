"""The tier jobs: the quarterly tier review and the daily lifecycle stages.

Each works through the members in chunks of member ids, one transaction per
chunk, and is idempotent: a chunk already done is skipped or changes
nothing, so a run that crashed is finished by running it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from loyalty import calendar
from loyalty.db import transaction
from loyalty.records.models import members
from loyalty.runtime import Outcome, Runtime
from loyalty.tiers.service import apply_stages, apply_tiers
from loyalty.tiers.sql import KeyRange

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


def tier_review(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The quarterly review: every member not yet reviewed this quarter is reassessed.
    Changes are stamped with ``as_of``.

    Members who qualify higher move up; members who no longer qualify move
    down one step; overrides that have ended are cleared first; overrides in
    force are left alone. Each member is marked with the quarter, so a second
    run in the same quarter changes nothing."""
    programme = rt.programmes.at(as_of)
    period = calendar.quarter_label(as_of, programme.zone)
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
