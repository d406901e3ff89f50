"""How a redemption ends: fulfilled, failed or cancelled; and when its points are spent for good.

Every function here runs in the caller's transaction, locks the member's rows
first (the order bookings use), acts only if the redemption is still in the
state it expects, and returns whether it acted: a second callback, a retried
job or a race between the two changes nothing.

Points stay *held* until a redemption is settled: at once when the benefit
cannot be cancelled, else when its cancellation window ends (the
``redemptions`` job). A failure or a cancellation voids the hold, which puts
the points back into the lots they came from; stock and voucher codes go back
too.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.catalogue.models import benefits, voucher_codes
from loyalty.events.service import emit
from loyalty.ledger import service as ledger
from loyalty.ledger.models import member_accounts
from loyalty.records.models import members
from loyalty.redemption.models import redemptions


def lock_member(conn: Connection, member_id: str) -> None:
    """The member's rows, locked as bookings lock them (``FOR NO KEY UPDATE``)."""
    conn.execute(
        sa.select(member_accounts.c.member_id)
        .join(members, members.c.member_id == member_accounts.c.member_id)
        .where(member_accounts.c.member_id == member_id)
        .with_for_update(of=[member_accounts, members], key_share=True)
    )


def current(conn: Connection, member_id: str, redemption_id: str) -> Any:
    r = redemptions.c
    return conn.execute(sa.select(redemptions).where(r.member_id == member_id, r.id == redemption_id)).first()


def _set(conn: Connection, row: Any, expected: str, **values: Any) -> bool:
    r = redemptions.c
    done = conn.execute(
        redemptions.update().where(r.member_id == row.member_id, r.id == row.id, r.status == expected).values(**values)
    ).rowcount
    return bool(done)


def _return_stock(conn: Connection, row: Any) -> None:
    b = benefits.c
    conn.execute(
        benefits.update().where(b.code == row.benefit_code, b.stock.is_not(None)).values(stock=b.stock + row.quantity)
    )


def fulfilled(conn: Connection, member_id: str, redemption_id: str, *, reference: str | None, now: dt.datetime) -> bool:
    """A pending redemption was delivered (the partner said so, or the bank booked it)."""
    lock_member(conn, member_id)
    row = current(conn, member_id, redemption_id)
    if row is None or row.status != "pending":
        return False
    cancel_hours = conn.execute(sa.select(benefits.c.cancel_hours).where(benefits.c.code == row.benefit_code)).scalar()
    cancel_until = now + dt.timedelta(hours=int(cancel_hours or 0)) if cancel_hours else None
    _set(
        conn,
        row,
        "pending",
        status="fulfilled",
        partner_ref=reference,
        fulfilled_at=now,
        updated_at=now,
        cancel_until=cancel_until,
        next_attempt_at=None,
    )
    if cancel_until is None:
        settle(conn, member_id, redemption_id, now=now)
    emit(
        conn,
        "redemption.fulfilled",
        member_id=member_id,
        payload={"redemption_id": redemption_id, "benefit_code": row.benefit_code, "points": int(row.points)},
        now=now,
    )
    return True


def failed(conn: Connection, member_id: str, redemption_id: str, *, reason: str, now: dt.datetime) -> bool:
    """A pending redemption definitely failed: points and stock go back."""
    lock_member(conn, member_id)
    row = current(conn, member_id, redemption_id)
    if row is None or row.status != "pending":
        return False
    _set(conn, row, "pending", status="failed", failure_reason=reason[:500], updated_at=now, next_attempt_at=None)
    if row.hold_id is not None:
        ledger.void(conn, member_id, row.hold_id, now=now)
    _return_stock(conn, row)
    emit(
        conn,
        "redemption.failed",
        member_id=member_id,
        payload={"redemption_id": redemption_id, "benefit_code": row.benefit_code, "reason": reason[:500]},
        now=now,
    )
    return True


def cancelled(conn: Connection, member_id: str, redemption_id: str, *, now: dt.datetime) -> bool:
    """A fulfilled, unsettled redemption cancelled within its window: points, stock and
    voucher codes go back. The caller has checked the window and the policy."""
    lock_member(conn, member_id)
    row = current(conn, member_id, redemption_id)
    if row is None or row.status != "fulfilled" or row.settled:
        return False
    _set(conn, row, "fulfilled", status="cancelled", updated_at=now, cancel_until=None)
    if row.hold_id is not None:
        ledger.void(conn, member_id, row.hold_id, now=now)
    _return_stock(conn, row)
    vc = voucher_codes.c
    conn.execute(
        voucher_codes.update()
        .where(vc.benefit_code == row.benefit_code, vc.redemption_id == redemption_id, vc.member_id == member_id)
        .values(status="available", member_id=None, redemption_id=None, issued_at=None)
    )
    emit(
        conn,
        "redemption.cancelled",
        member_id=member_id,
        payload={"redemption_id": redemption_id, "benefit_code": row.benefit_code, "points": int(row.points)},
        now=now,
    )
    return True


def settle(conn: Connection, member_id: str, redemption_id: str, *, now: dt.datetime) -> bool:
    """Spend the held points for good: capture the hold to ``redeemed:<benefit>``."""
    r = redemptions.c
    row = current(conn, member_id, redemption_id)
    if row is None or row.status != "fulfilled" or row.settled:
        return False
    conn.execute(
        redemptions.update()
        .where(r.member_id == member_id, r.id == redemption_id, r.settled.is_(False))
        .values(settled=True, cancel_until=None, updated_at=now)
    )
    if row.hold_id is not None:
        ledger.capture(conn, member_id, row.hold_id, now=now)
    return True


def delivery_json(row: Any) -> dict[str, Any] | None:
    return json.loads(row.delivery) if row.delivery else None
