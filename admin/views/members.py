"""Members: look-up by id; balance, held and available points, lots and their expiry, the statement,
tier and lifecycle history, redemptions (cancel where allowed), the profile, a tier override (asked
for by support and decided by another person, :mod:`admin.views.override_requests`; set or ended at
once by an administrator, as the API's ``admin`` scope does), and manual adjustments
(:mod:`admin.views.adjustments`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import redirect, render_template, request, url_for
from flask_babel import gettext as _

from admin.core import Form, actor, bp, done, faults, local_moment, reading, roles, runtime
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, MemberNotFound, ValidationError
from loyalty.members import adjustments, profiles
from loyalty.members import service as members
from loyalty.redemption import service as redemptions
from loyalty.tiers import override_requests
from loyalty.tiers import service as tiers


@bp.get("/members")
@roles("support")
def member_lookup() -> Any:
    member_id = (request.args.get("member_id") or "").strip()
    if member_id:
        return redirect(url_for("admin.member", member_id=member_id))
    return render_template("admin/member_lookup.html", missing=None)


def member_page(member_id: str, errors: dict[str, list[str]] | None = None, status: int = 200) -> Any:
    rt = runtime()
    now = rt.now()
    programme = rt.programme
    try:
        with reading() as conn:
            view = members.member_view(conn, member_id, programme=programme, now=now)
            page = {
                "member": view,
                "lots": members.open_lots(conn, member_id, now=now),
                "schedule": members.expiry_schedule(conn, member_id, zone=programme.zone, now=now),
                "statement": members.statement(conn, member_id, limit=50, before_seq=None)["entries"],
                "history": tiers.history(conn, member_id, limit=50),
                "redemptions": redemptions.member_redemptions(conn, member_id, now=now),
                "profile": profiles.get_profile(conn, member_id),
                "adjustments": adjustments.list_(conn, member_id=member_id),
                "override_requests": override_requests.list_(conn, member_id=member_id),
            }
    except MemberNotFound:
        return render_template("admin/member_lookup.html", missing=member_id), 404
    return render_template(
        "admin/member.html", **page, tiers=programme.ladder.codes, errors=errors or {}, form=Form(), args=request.form
    ), status


@bp.get("/members/<member_id>")
@roles("support")
def member(member_id: str) -> Any:
    return member_page(member_id)


@bp.post("/members/<member_id>/redemptions/<redemption_id>/cancel")
@roles("support")
def cancel_redemption(member_id: str, redemption_id: str) -> Any:
    rt = runtime()
    try:
        with transaction(rt.engine) as conn:
            redemptions.cancel(conn, redemption_id, now=rt.now())
    except LoyaltyError as exc:
        return member_page(member_id, {f"redemption.{redemption_id}": [exc.detail]}, status=exc.status)
    done(_("Redemption %(id)s cancelled; its points are back.", id=redemption_id))
    return redirect(url_for("admin.member", member_id=member_id))


def override_form() -> tuple[str, dt.datetime, str]:
    """The tier override form's tier, end (UTC) and reason; the end and reason are required here,
    the tier and the end's being ahead are checked by the service."""
    form = request.form
    until = local_moment(form.get("until"), "until")
    if until is None:
        raise ValidationError.one("until", "choose the day the override ends")
    reason = (form.get("reason") or "").strip()
    if not 1 <= len(reason) <= 500:
        raise ValidationError.one("reason", "say why, in 1 to 500 characters")
    return form.get("tier", ""), until, reason


@bp.post("/members/<member_id>/tier-override")
@roles("admin")
def tier_override(member_id: str) -> Any:
    rt = runtime()
    try:
        tier, until, reason = override_form()
        with transaction(rt.engine) as conn:
            tiers.set_override(
                conn,
                member_id,
                tier=tier,
                until=until,
                reason=reason,
                actor=actor(),
                programme=rt.programme,
                now=rt.now(),
            )
    except LoyaltyError as exc:
        errors = faults(exc, "tier")
        return member_page(member_id, errors, status=exc.status)
    done(_("Tier override saved."))
    return redirect(url_for("admin.member", member_id=member_id))


@bp.post("/members/<member_id>/tier-override/end")
@roles("admin")
def end_override(member_id: str) -> Any:
    rt = runtime()
    with transaction(rt.engine) as conn:
        tiers.end_override(conn, member_id, actor=actor(), now=rt.now())
    done(_("Tier override ended."))
    return redirect(url_for("admin.member", member_id=member_id))
