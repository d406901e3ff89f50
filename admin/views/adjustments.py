"""Manual points adjustments with four eyes: support asks for one on the member page, finance
approves or rejects it on the Adjustments page; the one who asked can never decide it."""

from __future__ import annotations

from typing import Any

from flask import abort, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from admin.core import Form, bp, done, faults, reading, roles, runtime
from admin.views.members import member_page
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.members import adjustments
from loyalty.members.models import MAX_ADJUSTMENT_POINTS

#: How many decided adjustments the page lists under the pending ones.
DECIDED = 50


def principal() -> str:
    """Who asks or decides: the signed-in user's name (the API's principal is its key's name)."""
    return str(current_user.username)


def signed_points(raw: str | None) -> int:
    text = (raw or "").strip().replace(",", "")
    try:
        return int(text)
    except ValueError:
        raise ValidationError.one(
            "points", f"must be a non-zero integer from -{MAX_ADJUSTMENT_POINTS} to {MAX_ADJUSTMENT_POINTS}"
        ) from None


@bp.post("/members/<member_id>/adjustments")
@roles("support")
def request_adjustment(member_id: str) -> Any:
    rt = runtime()
    form = request.form
    try:
        points = signed_points(form.get("adjustment.points"))
        with transaction(rt.engine) as conn:
            made = adjustments.request(
                conn, member_id, points, form.get("adjustment.reason") or "", principal=principal(), now=rt.now()
            )
    except LoyaltyError as exc:
        # the form's fields are named adjustment.*: the tier override's reason is another field
        errors = {f"adjustment.{field}": messages for field, messages in faults(exc, "points").items()}
        return member_page(member_id, errors, status=exc.status)
    done(_("Adjustment of %(points)s points requested; another person must approve it.", points=made["points"]))
    return redirect(url_for("admin.member", member_id=member_id))


def adjustments_page(errors: dict[str, dict[str, list[str]]] | None = None, status: int = 200) -> Any:
    with reading() as conn:
        pending = adjustments.list_(conn, status="requested", limit=200)
        decided = [a for a in adjustments.list_(conn, limit=DECIDED + len(pending)) if a["status"] != "requested"]
    return render_template(
        "admin/adjustments.html",
        pending=pending,
        decided=decided[:DECIDED],
        errors=errors or {},
        form=Form(),
        args=request.form,
    ), status


@bp.get("/adjustments")
@roles("finance")
def adjustment_list() -> Any:
    return adjustments_page()


@bp.post("/adjustments/<adjustment_id>/<decision>")
@roles("finance")
def decide_adjustment(adjustment_id: str, decision: str) -> Any:
    if decision not in ("approve", "reject"):
        abort(404)
    rt = runtime()
    note = request.form.get("note") or None
    try:
        with transaction(rt.engine) as conn:
            now = rt.now()
            if decision == "approve":
                adjustments.approve(
                    conn, adjustment_id, principal=principal(), programme=rt.programmes.at(now), now=now, note=note
                )
            else:
                adjustments.reject(conn, adjustment_id, principal=principal(), note=note or "", now=now)
    except LoyaltyError as exc:
        return adjustments_page({adjustment_id: faults(exc, "decision")}, status=exc.status)
    if decision == "approve":
        done(_("Adjustment %(id)s approved and posted.", id=adjustment_id))
    else:
        done(_("Adjustment %(id)s rejected.", id=adjustment_id))
    return redirect(url_for("admin.adjustment_list"))
