"""Manual adjustments of a member's points, with four eyes.

One principal requests an adjustment (signed points and a reason); another approves or rejects
it. Approval posts it to the ledger (:func:`loyalty.ledger.service.adjust`) exactly once: the
adjustment's row is locked first, so of two approvals racing the second finds it decided, and
the entry's ``source_ref`` (``adjustment:<id>``) is unique per member as a last guard. The
principal is whoever the entry point authenticated: the API key's name, or the admin UI's
signed-in user. The one who requested an adjustment can never decide it (:mod:`loyalty.foureyes`:
refused with :class:`~loyalty.errors.FourEyes`, and by a CHECK constraint).

Each step writes an audit line in the same transaction; approval also emits ``points.adjusted``.
Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.errors import AdjustmentNotPending, MemberNotFound, ValidationError
from loyalty.events.service import emit
from loyalty.foureyes import Kind, principal_name
from loyalty.ledger import service as ledger
from loyalty.members.models import ADJUSTMENT_STATUSES, MAX_ADJUSTMENT_POINTS, MAX_REASON, adjustments
from loyalty.records.models import members
from rules import Programme


def view(row: Any) -> dict[str, Any]:
    return {
        "adjustment_id": row.id,
        "member_id": row.member_id,
        "points": int(row.points),
        "reason": row.reason,
        "status": row.status,
        "requested_by": row.requested_by,
        "requested_at": iso(row.requested_at),
        "decided_by": row.decided_by,
        "decided_at": iso(row.decided_at),
        "note": row.note,
        "entry_id": row.entry_id,
    }


KIND = Kind(
    table=adjustments,
    object_type="adjustment",
    noun="adjustment",
    id_field="adjustment_id",
    open_status="requested",
    statuses=ADJUSTMENT_STATUSES,
    not_pending=AdjustmentNotPending,
    status_field="adjustment_status",
    max_text=MAX_REASON,
    view=view,
)


def request(
    conn: Connection, member_id: str, points: int, reason: str, *, principal: str, now: dt.datetime
) -> dict[str, Any]:
    """Ask for ``points`` (signed, not zero) to be added to the member's points, for ``reason``.

    Nothing is posted until another principal approves it. Refuses an unknown member
    (:class:`MemberNotFound`), zero or too many points and an empty or overlong reason
    (:class:`ValidationError` naming the field)."""
    principal = principal_name(principal)
    if isinstance(points, bool) or not isinstance(points, int) or points == 0 or abs(points) > MAX_ADJUSTMENT_POINTS:
        raise ValidationError.one(
            "points", f"must be a non-zero integer from -{MAX_ADJUSTMENT_POINTS} to {MAX_ADJUSTMENT_POINTS}"
        )
    text = KIND.text(reason, "reason", required=True)
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    row = {"member_id": member_id, "id": ledger.new_id(), "points": points, "reason": text}
    return KIND.record(conn, row, principal=principal, now=now)


def approve(
    conn: Connection,
    adjustment_id: str,
    *,
    principal: str,
    programme: Programme,
    now: dt.datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """Approve a requested adjustment and post it: a positive one opens a lot expiring by
    ``programme``'s policy for the member's tier, counted from ``now``; a negative one needs the
    member's available, unexpired points to cover it (:class:`~loyalty.errors.InsufficientPoints`
    otherwise, and nothing is written). Emits ``points.adjusted``."""
    principal = principal_name(principal)
    text = KIND.text(note, "note", required=False)
    row = KIND.pending(conn, adjustment_id, principal)
    points = int(row.points)
    tier = conn.execute(sa.select(members.c.tier).where(members.c.member_id == row.member_id)).scalar()
    posted = ledger.adjust(
        conn,
        row.member_id,
        points,
        source_ref=f"adjustment:{row.id}",
        reason=row.reason,
        expires_at=ledger.lot_expiry(programme, now, tier),
        now=now,
    )
    after = KIND.decide(conn, row, "approved", principal=principal, note=text, now=now, entry_id=posted.entry_id)
    emit(
        conn,
        "points.adjusted",
        member_id=row.member_id,
        payload={
            "adjustment_id": adjustment_id,
            "entry_id": posted.entry_id,
            "points": points,
            "balance": posted.total_after,
            "reason": row.reason,
            "requested_by": row.requested_by,
            "approved_by": principal,
        },
        now=now,
    )
    return after


def reject(conn: Connection, adjustment_id: str, *, principal: str, note: str, now: dt.datetime) -> dict[str, Any]:
    """Reject a requested adjustment, saying why in ``note``; nothing is posted."""
    principal = principal_name(principal)
    text = KIND.text(note, "note", required=True)
    row = KIND.pending(conn, adjustment_id, principal)
    return KIND.decide(conn, row, "rejected", principal=principal, note=text, now=now)


get = KIND.get
list_ = KIND.list
