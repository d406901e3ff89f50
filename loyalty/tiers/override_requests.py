"""Tier override requests, with four eyes.

One principal asks for a member's tier to be pinned (a tier, a reason, the end); another approves
or rejects the request. Asking checks what :func:`loyalty.tiers.service.set_override` checks (a
tier of the ladder in force, a reason, an end in the future) and changes nothing about the
member. Approval applies it through :func:`~loyalty.tiers.service.set_override`, so the tier
change, its history line, its ``tier.changed`` event and its ``tier.override`` audit line are
those of a direct override; it does so once: the request's row is locked first, so of two
approvals racing the second finds it decided, and the decision is written only where the request
is still pending. The principal is whoever the entry point authenticated: the API key's name, or
the admin UI's signed-in user. The one who asked can never decide (:mod:`loyalty.foureyes`: refused
with :class:`~loyalty.errors.FourEyes`, and by a CHECK constraint).

Each step writes an audit line (``object_type`` ``tier_override_request``) in the same
transaction. Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.errors import MemberNotFound, OverrideRequestNotPending, ValidationError
from loyalty.foureyes import Kind, principal_name
from loyalty.records.models import members
from loyalty.tiers import service
from loyalty.tiers.models import MAX_OVERRIDE_REASON, OVERRIDE_REQUEST_STATUSES, tier_override_requests
from rules import Programme


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


KIND = Kind(
    table=tier_override_requests,
    object_type="tier_override_request",
    noun="tier override request",
    id_field="override_request_id",
    open_status="pending",
    statuses=OVERRIDE_REQUEST_STATUSES,
    not_pending=OverrideRequestNotPending,
    status_field="override_request_status",
    max_text=MAX_OVERRIDE_REASON,
    view=view,
)


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
    principal = principal_name(principal)
    _check(tier, until, programme, now, asked=False)
    text = KIND.text(reason, "reason", required=True)
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    row = {"member_id": member_id, "id": str(uuid.uuid4()), "tier": tier, "reason": text, "until": until}
    return KIND.record(conn, row, principal=principal, now=now)


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
    principal = principal_name(principal)
    text = KIND.text(note, "note", required=False)
    row = KIND.pending(conn, request_id, principal)
    _check(row.tier, row.until, programme, now, asked=True)
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
    return KIND.decide(conn, row, "approved", principal=principal, note=text, now=now)


def reject(conn: Connection, request_id: str, *, principal: str, note: str, now: dt.datetime) -> dict[str, Any]:
    """Reject a pending request, saying why in ``note``; the member's tier is untouched."""
    principal = principal_name(principal)
    text = KIND.text(note, "note", required=True)
    row = KIND.pending(conn, request_id, principal)
    return KIND.decide(conn, row, "rejected", principal=principal, note=text, now=now)


get = KIND.get
list_ = KIND.list
