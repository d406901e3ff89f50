"""Partners' callbacks: a partner reporting what became of an order.

A callback is checked (signature, then body) by the API and applied here in
the caller's transaction. It is idempotent: a duplicate, or a callback about a
redemption that is already final, changes nothing and is answered with the
redemption's current state. A callback that contradicts a final state (a
delivery reported for a redemption already failed) is logged for
reconciliation with the partner.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.errors import ValidationError
from loyalty.fulfilment import protocol
from loyalty.fulfilment.adapters import MAX_REFERENCE, MAX_TEXT
from loyalty.redemption import states
from loyalty.redemption.errors import RedemptionNotFound
from loyalty.redemption.models import redemptions

log = logging.getLogger(__name__)

r = redemptions.c

FIELDS = {"order_id", "status", "reference", "reason"}
#: redemption statuses that contradict what a callback reports
CONTRADICTED = {protocol.SUCCEEDED: ("failed",), protocol.FAILED: ("fulfilled", "cancelled")}


@dataclass(frozen=True)
class Callback:
    order_id: str
    #: ``succeeded``, ``failed`` or ``processing``
    status: str
    reference: str | None
    reason: str | None


def parse(body: Any) -> Callback:
    """A callback body, or a :class:`ValidationError` naming every bad field."""
    if not isinstance(body, dict):
        raise ValidationError.one("body", "must be a JSON object")
    errors: dict[str, list[str]] = {f: ["unknown field"] for f in sorted(set(body) - FIELDS)}
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not 1 <= len(order_id) <= 64 or "\x00" in order_id:
        errors["order_id"] = ["must be a string of 1 to 64 characters, without NUL"]
    status = body.get("status")
    if status not in protocol.STATUSES:
        errors["status"] = [f"must be one of {', '.join(protocol.STATUSES)}"]
    for name, limit in (("reference", MAX_REFERENCE), ("reason", MAX_TEXT)):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit or "\x00" in value):
            errors[name] = [f"must be a string of at most {limit} characters without NUL, or null"]
    if errors:
        raise ValidationError(errors)
    return Callback(order_id, status, body.get("reference"), body.get("reason"))  # type: ignore[arg-type]


def find(conn: Connection, partner: str, order_id: str) -> Any:
    """The partner's redemption ``order_id``, or :class:`RedemptionNotFound`.

    Pending redemptions are looked for first, through the status index; only
    a callback about a redemption that is no longer pending searches them all."""
    columns = (r.member_id, r.id, r.status, r.partner_ref)
    for query in (
        sa.select(*columns).where(r.status == "pending", r.id == order_id, r.partner == partner),
        sa.select(*columns).where(r.id == order_id, r.partner == partner),
    ):
        row = conn.execute(query).first()
        if row is not None:
            return row
    raise RedemptionNotFound(f"partner {partner!r} has no order {order_id!r}", field="order_id")


def apply(conn: Connection, partner: str, callback: Callback, *, now: dt.datetime) -> dict[str, Any]:
    """Settle the redemption as the callback says, if it is still pending; return its state and
    whether this callback changed it."""
    row = find(conn, partner, callback.order_id)
    changed = False
    if callback.status == protocol.SUCCEEDED:
        changed = states.fulfilled(conn, row.member_id, row.id, reference=callback.reference, now=now)
    elif callback.status == protocol.FAILED:
        reason = callback.reason or "the partner failed the order"
        changed = states.failed(conn, row.member_id, row.id, reason=reason, now=now)
    after = states.current(conn, row.member_id, row.id)
    if after.status in CONTRADICTED.get(callback.status, ()):
        log.error(
            "partner %s reports order %s %s, but the redemption is already %s: reconcile with the partner",
            partner,
            callback.order_id,
            callback.status,
            after.status,
        )
    return {"order_id": after.id, "status": after.status, "partner_ref": after.partner_ref, "changed": changed}
