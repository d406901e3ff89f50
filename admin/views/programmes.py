"""Rules and tiers: programme versions, the draft editor (checked as you type, each fault at its
JSON path), a simulated transaction against a draft, a backtest, publishing, the tier ladder."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Response, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from admin.core import (
    Form,
    actor,
    bp,
    done,
    faults,
    local_day,
    local_moment,
    reading,
    roles,
    runtime,
    table_download,
    today,
    zone,
)
from loyalty import calendar
from loyalty.accrual import backtest, simulate
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.members import service as members
from loyalty.programmes import service
from loyalty.records.models import TRANSACTION_TYPES
from rules import dump_programme


def _document(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValidationError.one("document", f"is not JSON: {exc}") from None


def fault(exc: LoyaltyError) -> dict[str, list[str]]:
    """A refusal as field -> messages; a fault in the document is named by its JSON path."""
    return faults(exc, "document")


@bp.get("/rules")
@roles("rules")
def programmes() -> Any:
    rt = runtime()
    programme = rt.programme
    with reading() as conn:
        versions = service.list_versions(conn)
        counts = members.counts_by_tier_and_stage(conn)
    per_tier: dict[str, int] = {}
    for row in counts:
        per_tier[row["tier"]] = per_tier.get(row["tier"], 0) + row["members"]
    tier_rows = [[code, per_tier.get(code, 0)] for code in programme.ladder.codes]
    download = table_download("members-per-tier", [_("Tier"), _("Members")], tier_rows)
    if download is not None:
        return download
    levels = {t["code"]: t.get("criteria") for t in dump_programme(programme)["tiers"]["levels"]}
    document = dump_programme(programme)
    document["version"] = f"{programme.version}-next"
    return render_template(
        "admin/programmes.html",
        versions=versions,
        in_force=programme.version,
        ladder=programme.ladder,
        criteria={code: json.dumps(c, ensure_ascii=False) if c else None for code, c in levels.items()},
        per_tier=per_tier,
        tier_rows=tier_rows,
        starter=json.dumps(document, ensure_ascii=False, indent=2),
        form=Form(),
        errors={},
    )


@bp.post("/rules/check")
@roles("rules")
def check_draft() -> Response:
    """The editor's check as you type: JSON, ``{"valid": true}`` or the fault and its path."""
    try:
        programme = service.parse(_document(request.form.get("document", "")))
    except LoyaltyError as exc:
        path, messages = next(iter(fault(exc).items()))
        return jsonify({"valid": False, "path": path, "message": " ".join(messages)})
    return jsonify({"valid": True, "version": programme.version, "rules": len(programme.rules)})


@bp.post("/rules/new")
@roles("rules")
def new_draft() -> Any:
    raw = request.form.get("document", "")
    rt = runtime()
    try:
        with transaction(rt.engine) as conn:
            made = service.create_draft(conn, _document(raw), actor=actor(), now=rt.now())
    except LoyaltyError as exc:
        return render_template("admin/programme.html", **editor(None, raw, fault(exc))), 422
    done(_("Draft %(version)s saved.", version=made["version"]))
    return redirect(url_for("admin.programme", version=made["version"]))


def editor(version: dict[str, Any] | None, text: str, errors: dict[str, list[str]], **more: Any) -> dict[str, Any]:
    now = runtime().now().astimezone(zone())
    return {
        "version": version,
        "text": text,
        "errors": errors,
        "types": TRANSACTION_TYPES,
        "form": Form(),
        "simulation": None,
        "report": None,
        "default_when": (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT00:00"),
        "default_from": (today() - dt.timedelta(days=30)).isoformat(),
        "default_to": today().isoformat(),
        "args": {},
        **more,
    }


def version_page(
    version: str, errors: dict[str, list[str]], *, text: str | None = None, **more: Any
) -> tuple[str, int]:
    """A saved version's page: its document (or ``text`` as typed), the faults, and ``more``."""
    with reading() as conn:
        found = service.version_view(conn, version)
    if text is None:
        text = json.dumps(found["document"], ensure_ascii=False, indent=2)
    return render_template("admin/programme.html", **editor(found, text, errors, **more)), 422 if errors else 200


@bp.get("/rules/<version>")
@roles("rules")
def programme(version: str) -> Any:
    return version_page(version, {})


@bp.post("/rules/<version>")
@roles("rules")
def save_draft(version: str) -> Any:
    raw = request.form.get("document", "")
    rt = runtime()
    try:
        with transaction(rt.engine) as conn:
            service.replace_draft(conn, version, _document(raw), actor=actor(), now=rt.now())
    except LoyaltyError as exc:
        return version_page(version, fault(exc), text=raw)
    done(_("Draft %(version)s saved.", version=version))
    return redirect(url_for("admin.programme", version=version))


@bp.post("/rules/<version>/simulate")
@roles("rules")
def simulate_draft(version: str) -> Any:
    """What a transaction would earn under this version, with the award trace; writes nothing."""
    rt = runtime()
    form = request.form
    errors: dict[str, list[str]] = {}
    result = None
    amount = form.get("amount", "").strip()
    try:
        if not amount.isdigit() or not 0 < int(amount) <= 10**12:
            raise ValidationError.one("amount", "a whole number of fen above 0")
        transaction_doc = {
            "type": form.get("type", ""),
            "amount": int(amount),
            "channel": form.get("channel") or None,
            "mcc": form.get("mcc") or None,
        }
        with reading() as conn:
            result = simulate.simulate(
                conn,
                rt,
                member_id=form.get("member_id") or None,
                version=version,
                event="transaction",
                transaction=transaction_doc,
                context=None,
            )
    except LoyaltyError as exc:
        errors = {k.removeprefix("transaction."): v for k, v in fault(exc).items()}
    return version_page(version, errors, simulation=result, args=form)


@bp.post("/rules/<version>/backtest")
@roles("rules")
def backtest_draft(version: str) -> Any:
    rt = runtime()
    form = request.form
    errors: dict[str, list[str]] = {}
    report = None
    try:
        start, end = local_day(form.get("from"), "from"), local_day(form.get("to"), "to")
        if end < start:
            raise ValidationError.one("to", "must not be before from")
        with reading() as conn:
            report = backtest.run(
                conn,
                service.draft(conn, version),
                start=calendar.start_of(start, zone()),
                end=calendar.day_of(end, zone()).end,
                point_value_fen=rt.settings.point_value_fen,
                top=10,
            )
    except LoyaltyError as exc:
        errors = fault(exc)
    return version_page(version, errors, report=report, args=form)


@bp.post("/rules/<version>/publish")
@roles("rules")
def publish_draft(version: str) -> Any:
    rt = runtime()
    try:
        when = local_moment(request.form.get("effective_from"), "effective_from")
        with transaction(rt.engine) as conn:
            service.publish(conn, version, effective_from=when, actor=actor(), now=rt.now())
    except LoyaltyError as exc:
        return version_page(version, fault(exc), args=request.form)
    rt.programmes.invalidate()
    done(_("Version %(version)s published.", version=version))
    return redirect(url_for("admin.programme", version=version))
