"""Tier override requests with four eyes: support asks for an override on the member page, and
another person (support or an administrator) approves or rejects it on the Tier overrides page;
the one who asked can never decide it. Approval sets the override as an administrator's direct
override does (:func:`loyalty.tiers.service.set_override`)."""

from __future__ import annotations

from typing import Any

from flask import abort, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from admin.core import Form, bp, done, faults, reading, roles, runtime
from admin.views.members import member_page, override_form
from loyalty.db import transaction
from loyalty.errors import LoyaltyError
from loyalty.tiers import override_requests

#: How many decided requests the page lists under the pending ones.
DECIDED = 50


def principal() -> str:
    """Who asks or decides: the signed-in user's name (the API's principal is its key's name)."""
    return str(current_user.username)


@bp.post("/members/<member_id>/tier-override-requests")
@roles("support", "admin")
def request_override(member_id: str) -> Any:
    rt = runtime()
    try:
        tier, until, reason = override_form()
        with transaction(rt.engine) as conn:
            now = rt.now()
            override_requests.request(
                conn,
                member_id,
                tier=tier,
                until=until,
                reason=reason,
                principal=principal(),
                programme=rt.programmes.at(now),
                now=now,
            )
    except LoyaltyError as exc:
        return member_page(member_id, faults(exc, "tier"), status=exc.status)
    done(_("Tier override to %(tier)s requested; another person must approve it.", tier=tier))
    return redirect(url_for("admin.member", member_id=member_id))


def override_requests_page(errors: dict[str, dict[str, list[str]]] | None = None, status: int = 200) -> Any:
    with reading() as conn:
        pending = override_requests.list_(conn, status="pending", limit=200)
        decided = [r for r in override_requests.list_(conn, limit=DECIDED + len(pending)) if r["status"] != "pending"]
    return render_template(
        "admin/override_requests.html",
        pending=pending,
        decided=decided[:DECIDED],
        errors=errors or {},
        form=Form(),
        args=request.form,
    ), status


@bp.get("/tier-overrides")
@roles("support", "admin")
def override_request_list() -> Any:
    return override_requests_page()


@bp.post("/tier-overrides/<request_id>/<decision>")
@roles("support", "admin")
def decide_override_request(request_id: str, decision: str) -> Any:
    if decision not in ("approve", "reject"):
        abort(404)
    rt = runtime()
    note = request.form.get("note") or None
    try:
        with transaction(rt.engine) as conn:
            now = rt.now()
            if decision == "approve":
                override_requests.approve(
                    conn, request_id, principal=principal(), programme=rt.programmes.at(now), now=now, note=note
                )
            else:
                override_requests.reject(conn, request_id, principal=principal(), note=note or "", now=now)
    except LoyaltyError as exc:
        return override_requests_page({request_id: faults(exc, "decision")}, status=exc.status)
    if decision == "approve":
        done(_("Tier override request %(id)s approved; the override is set.", id=request_id))
    else:
        done(_("Tier override request %(id)s rejected.", id=request_id))
    return redirect(url_for("admin.override_request_list"))
