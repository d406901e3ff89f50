"""Tier override requests, with four eyes.

One principal asks for a member's tier to be pinned (a tier, a reason, the end); another approves
or rejects the request. Asking checks what :func:`loyalty.tiers.service.set_override` checks (a
tier of the ladder in force, a reason, an end in the future) and changes nothing about the
member. Approval applies it through :func:`~loyalty.tiers.service.set_override`, so the tier
change, its history line, its ``tier.changed`` event and its ``tier.override`` audit line are
those of a direct override; it does so once: the request's row is locked first, so of two
approvals racing the second finds it decided, and the decision is written only where the request
is still pending. The principal is whoever the entry point authenticated: the API key's name, or
the admin UI's signed-in user. The one who asked can never decide (refused with
:class:`~loyalty.errors.FourEyes`, and by a CHECK constraint).

Each step writes an audit line (``object_type`` ``tier_override_request``) in the same
transaction. Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.calendar import iso
from loyalty.errors import FourEyes, MemberNotFound, NotFound, OverrideRequestNotPending, ValidationError
from loyalty.records.models import members
from loyalty.tiers import service
from loyalty.tiers.models import MAX_OVERRIDE_REASON, OVERRIDE_REQUEST_STATUSES, tier_override_requests
from rules import Programme

#: Longest principal name, as the audit log stores it.
MAX_PRINCIPAL = 100
OBJECT_TYPE = "tier_override_request"


def _text(value: str | None, field: str, *, required: bool) -> str | None:
    """The text stripped; a blank one is refused, and so is none at all when ``required``."""
    if value is None and not required:
        return None
    text = (value or "").strip()
    if not text:
        raise ValidationError.one(field, f"must say why, in 1 to {MAX_OVERRIDE_REASON} characters")
    if len(text) > MAX_OVERRIDE_REASON:
        raise ValidationError.one(field, f"must be at most {MAX_OVERRIDE_REASON} characters")
    return text


def _principal(principal: str) -> str:
    name = principal.strip()
    if not name or len(name) > MAX_PRINCIPAL:
        raise ValueError(f"a principal is 1 to {MAX_PRINCIPAL} characters")
    return name


def _check(tier: str, until: dt.datetime, programme: Programme, now: dt.datetime, *, asked: bool) -> None:
    """What :func:`~loyalty.tiers.service.set_override` refuses, said for a request (``asked``: one
    already stored, which the approver cannot mend)."""
    codes = programme.ladder.codes
    again = ": reject this request and ask for a new one" if asked else ""
    if tier not in codes:
        raise ValidationError.one("tier", f"must be one of {', '.join(codes)}{again}")
    if until <= now:
        raise ValidationError.one("until", f"must be in the future{again}")


def view(row: Any) -> dict[str, Any]:
    return {
        "override_request_id": row.id,
        "member_id": row.member_id,
        "tier": row.tier,
        "until": iso(row.until),
        "reason": row.reason,
        "status": row.status,
        "requested_by": row.requested_by,
        "requested_at": iso(row.requested_at),
        "decided_by": row.decided_by,
        "decided_at": iso(row.decided_at),
        "note": row.note,
    }


def request(
    conn: Connection,
    member_id: str,
    *,
    tier: str,
    until: dt.datetime,
    reason: str,
    principal: str,
    programme: Programme,
    now: dt.datetime,
) -> dict[str, Any]:
    """Ask for the member's tier to be pinned to ``tier`` until ``until``, for ``reason``.

    Nothing about the member changes until another principal approves it. Refuses a tier not on
    ``programme``'s ladder, an end not after ``now``, an empty or overlong reason
    (:class:`ValidationError` naming the field) and an unknown member (:class:`MemberNotFound`)."""
    principal = _principal(principal)
    _check(tier, until, programme, now, asked=False)
    text = _text(reason, "reason", required=True)
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    row = {
        "member_id": member_id,
        "id": str(uuid.uuid4()),
        "tier": tier,
        "reason": text,
        "until": until,
        "status": "pending",
        "requested_by": principal,
        "requested_at": now,
    }
    conn.execute(tier_override_requests.insert().values(**row))
    made = get(conn, str(row["id"]))
    audit.record(
        conn,
        actor=principal,
        action=f"{OBJECT_TYPE}.requested",
        object_type=OBJECT_TYPE,
        object_id=made["override_request_id"],
        after=made,
        now=now,
    )
    return made


def _pending(conn: Connection, request_id: str, principal: str) -> Any:
    """Lock the request and read it; refuse one that is decided, or a principal deciding their own."""
    row = conn.execute(_select(request_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"no tier override request {request_id!r}", field="override_request_id")
    if row.status != "pending":
        raise OverrideRequestNotPending(
            f"tier override request {request_id!r} is already {row.status}", override_request_status=row.status
        )
    if row.requested_by.casefold() == principal.casefold():
        raise FourEyes(
            f"{principal!r} requested tier override request {request_id!r}: another person must approve or reject it",
            field="principal",
        )
    return row


def approve(
    conn: Connection,
    request_id: str,
    *,
    principal: str,
    programme: Programme,
    now: dt.datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """Approve a pending request and apply it with :func:`~loyalty.tiers.service.set_override`
    (``actor`` the approver). A request whose end has passed, or whose tier ``programme``'s ladder
    no longer has, is refused (:class:`ValidationError` naming ``until`` or ``tier``; it stays
    pending, to be rejected)."""
    principal = _principal(principal)
    text = _text(note, "note", required=False)
    row = _pending(conn, request_id, principal)
    _check(row.tier, row.until, programme, now, asked=True)
    before = view(row)
    service.set_override(
        conn,
        row.member_id,
        tier=row.tier,
        until=row.until,
        reason=row.reason,
        actor=principal,
        programme=programme,
        now=now,
    )
    return _decide(conn, row, "approved", principal, now, text, before)


def reject(conn: Connection, request_id: str, *, principal: str, note: str, now: dt.datetime) -> dict[str, Any]:
    """Reject a pending request, saying why in ``note``; the member's tier is untouched."""
    principal = _principal(principal)
    text = _text(note, "note", required=True)
    row = _pending(conn, request_id, principal)
    return _decide(conn, row, "rejected", principal, now, text, view(row))


def _decide(
    conn: Connection,
    row: Any,
    status: str,
    principal: str,
    now: dt.datetime,
    note: str | None,
    before: dict[str, Any],
) -> dict[str, Any]:
    r = tier_override_requests.c
    decided = conn.execute(
        sa.update(tier_override_requests)
        .where(r.member_id == row.member_id, r.id == row.id, r.status == "pending")
        .values(status=status, decided_by=principal, decided_at=now, note=note)
    )
    if decided.rowcount != 1:
        # Another decision came first (where the row lock cannot be had): undo this one.
        raise OverrideRequestNotPending(f"tier override request {row.id!r} was decided meanwhile")
    after = get(conn, str(row.id))
    audit.record(
        conn,
        actor=principal,
        action=f"{OBJECT_TYPE}.{status}",
        object_type=OBJECT_TYPE,
        object_id=str(row.id),
        before=before,
        after=after,
        now=now,
    )
    return after


def _select(request_id: str) -> sa.Select[Any]:
    try:
        key = str(uuid.UUID(request_id))
    except ValueError:
        raise NotFound(f"no tier override request {request_id!r}", field="override_request_id") from None
    return sa.select(tier_override_requests).where(tier_override_requests.c.id == key)


def get(conn: Connection, request_id: str) -> dict[str, Any]:
    """One request; :class:`NotFound` if there is none with that id."""
    row = conn.execute(_select(request_id)).first()
    if row is None:
        raise NotFound(f"no tier override request {request_id!r}", field="override_request_id")
    return view(row)


def list_(
    conn: Connection, *, status: str | None = None, member_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Requests newest first, at most ``limit``, optionally of one status and one member."""
    if status is not None and status not in OVERRIDE_REQUEST_STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(OVERRIDE_REQUEST_STATUSES)}")
    r = tier_override_requests.c
    q = sa.select(tier_override_requests)
    if status is not None:
        q = q.where(r.status == status)
    if member_id is not None:
        q = q.where(r.member_id == member_id)
    return [view(row) for row in conn.execute(q.order_by(r.requested_at.desc(), r.id.desc()).limit(limit))]
