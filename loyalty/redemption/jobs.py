"""The ``redemptions`` job: points of fulfilled redemptions are spent for good once they can no longer be cancelled."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.ledger.models import member_accounts
from loyalty.records.models import members
from loyalty.redemption import states
from loyalty.redemption.models import redemptions
from loyalty.runtime import Outcome, Runtime

#: Redemptions per chunk (one transaction each).
CHUNK = 500


def settle(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Capture the holds of fulfilled, unsettled redemptions whose cancellation window ended by ``as_of``.

    Works through them in chunks by (member, redemption), one transaction
    each, locking the chunk's members in member id order (the order other
    jobs lock in). :func:`loyalty.redemption.states.settle` acts only on a
    redemption still fulfilled and unsettled, so a redemption cancelled
    meanwhile is left alone and a second run settles nothing twice."""
    r = redemptions.c
    due = sa.and_(r.status == "fulfilled", r.settled.is_(False), r.cancel_until <= as_of)
    settled = 0
    after: Any = None
    while True:
        query = sa.select(r.member_id, r.id).where(due).order_by(r.member_id, r.id).limit(CHUNK)
        if after is not None:
            query = query.where(
                sa.or_(r.member_id > after.member_id, sa.and_(r.member_id == after.member_id, r.id > after.id))
            )
        with transaction(rt.engine) as conn:
            rows = conn.execute(query).all()
            if not rows:
                break
            ma = member_accounts.c
            conn.execute(
                sa.select(ma.member_id)
                .join(members, members.c.member_id == ma.member_id)
                .where(ma.member_id.in_(sorted({row.member_id for row in rows})))
                .order_by(ma.member_id)
                .with_for_update(of=[member_accounts, members], key_share=True)
            )
            for row in rows:
                settled += states.settle(conn, row.member_id, row.id, now=rt.now())
        after = rows[-1]
    return Outcome(rows=settled, detail=f"{settled} redemptions settled")
