"""Manual adjustments of a member's points, with four eyes.

One principal requests an adjustment (signed points and a reason); another approves or rejects
it. Approval posts it to the ledger (:func:`loyalty.ledger.service.adjust`) exactly once: the
adjustment's row is locked first, so of two approvals racing the second finds it decided, and
the entry's ``source_ref`` (``adjustment:<id>``) is unique per member as a last guard. The
principal is whoever the entry point authenticated: the API key's name, or the admin UI's
signed-in user. The one who requested an adjustment can never decide it (refused with
:class:`~loyalty.errors.FourEyes`, and by a CHECK constraint).

Each step writes an audit line in the same transaction; approval also emits ``points.adjusted``.
Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.calendar import iso
from loyalty.errors import AdjustmentNotPending, FourEyes, MemberNotFound, NotFound, ValidationError
from loyalty.events.service import emit
from loyalty.ledger import service as ledger
from loyalty.members.models import ADJUSTMENT_STATUSES, MAX_ADJUSTMENT_POINTS, MAX_REASON, adjustments
from loyalty.records.models import members
from rules import Programme

#: Longest principal name, as the audit log stores it.
MAX_PRINCIPAL = 100


def _text(value: str | None, field: str, *, required: bool) -> str | None:
    """The text stripped; a blank one is refused, and so is none at all when ``required``."""
    if value is None and not required:
        return None
    text = (value or "").strip()
    if not text:
        raise ValidationError.one(field, f"must say why, in 1 to {MAX_REASON} characters")
    if len(text) > MAX_REASON:
        raise ValidationError.one(field, f"must be at most {MAX_REASON} characters")
    return text


def _principal(principal: str) -> str:
    name = principal.strip()
    if not name or len(name) > MAX_PRINCIPAL:
        raise ValueError(f"a principal is 1 to {MAX_PRINCIPAL} characters")
    return name


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


def request(
    conn: Connection, member_id: str, points: int, reason: str, *, principal: str, now: dt.datetime
) -> dict[str, Any]:
    """Ask for ``points`` (signed, not zero) to be added to the member's points, for ``reason``.

    Nothing is posted until another principal approves it. Refuses an unknown member
    (:class:`MemberNotFound`), zero or too many points and an empty or overlong reason
    (:class:`ValidationError` naming the field)."""
    principal = _principal(principal)
    if isinstance(points, bool) or not isinstance(points, int) or points == 0 or abs(points) > MAX_ADJUSTMENT_POINTS:
        raise ValidationError.one(
            "points", f"must be a non-zero integer from -{MAX_ADJUSTMENT_POINTS} to {MAX_ADJUSTMENT_POINTS}"
        )
    text = _text(reason, "reason", required=True)
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    row = {
        "member_id": member_id,
        "id": ledger.new_id(),
        "points": points,
        "reason": text,
        "status": "requested",
        "requested_by": principal,
        "requested_at": now,
    }
    conn.execute(adjustments.insert().values(**row))
    made = get(conn, str(row["id"]))
    audit.record(
        conn,
        actor=principal,
        action="adjustment.requested",
        object_type="adjustment",
        object_id=made["adjustment_id"],
        after=made,
        now=now,
    )
    return made


def _pending(conn: Connection, adjustment_id: str, principal: str) -> Any:
    """Lock the adjustment and read it; refuse one that is decided, or a principal deciding their own."""
    row = conn.execute(_select(adjustment_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"no adjustment {adjustment_id!r}", field="adjustment_id")
    if row.status != "requested":
        raise AdjustmentNotPending(
            f"adjustment {adjustment_id!r} is already {row.status}", adjustment_status=row.status
        )
    if row.requested_by.casefold() == principal.casefold():
        raise FourEyes(
            f"{principal!r} requested adjustment {adjustment_id!r}: another person must approve or reject it",
            field="principal",
        )
    return row


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
    principal = _principal(principal)
    text = _text(note, "note", required=False)
    row = _pending(conn, adjustment_id, principal)
    before = view(row)
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
    _decide(conn, row, "approved", principal, now, text, entry_id=posted.entry_id)
    after = get(conn, adjustment_id)
    audit.record(
        conn,
        actor=principal,
        action="adjustment.approved",
        object_type="adjustment",
        object_id=adjustment_id,
        before=before,
        after=after,
        now=now,
    )
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
    principal = _principal(principal)
    text = _text(note, "note", required=True)
    row = _pending(conn, adjustment_id, principal)
    before = view(row)
    _decide(conn, row, "rejected", principal, now, text)
    after = get(conn, adjustment_id)
    audit.record(
        conn,
        actor=principal,
        action="adjustment.rejected",
        object_type="adjustment",
        object_id=adjustment_id,
        before=before,
        after=after,
        now=now,
    )
    return after


def _decide(
    conn: Connection,
    row: Any,
    status: str,
    principal: str,
    now: dt.datetime,
    note: str | None,
    entry_id: str | None = None,
) -> None:
    a = adjustments.c
    conn.execute(
        sa.update(adjustments)
        .where(a.member_id == row.member_id, a.id == row.id, a.status == "requested")
        .values(status=status, decided_by=principal, decided_at=now, note=note, entry_id=entry_id)
    )


def _select(adjustment_id: str) -> sa.Select[Any]:
    try:
        key = str(uuid.UUID(adjustment_id))
    except ValueError:
        raise NotFound(f"no adjustment {adjustment_id!r}", field="adjustment_id") from None
    return sa.select(adjustments).where(adjustments.c.id == key)


def get(conn: Connection, adjustment_id: str) -> dict[str, Any]:
    """One adjustment; :class:`NotFound` if there is none with that id."""
    row = conn.execute(_select(adjustment_id)).first()
    if row is None:
        raise NotFound(f"no adjustment {adjustment_id!r}", field="adjustment_id")
    return view(row)


def list_(
    conn: Connection, *, status: str | None = None, member_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Adjustments newest first, at most ``limit``, optionally of one status and one member."""
    if status is not None and status not in ADJUSTMENT_STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(ADJUSTMENT_STATUSES)}")
    a = adjustments.c
    q = sa.select(adjustments)
    if status is not None:
        q = q.where(a.status == status)
    if member_id is not None:
        q = q.where(a.member_id == member_id)
    return [view(r) for r in conn.execute(q.order_by(a.requested_at.desc(), a.id.desc()).limit(limit))]
