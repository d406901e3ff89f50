"""The catalogue: benefits with filters, create and edit, status changes, versions and their diffs,
voucher code uploads, stock alerts, tier prices and entitlements per tier."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from flask import redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.datastructures import MultiDict

from admin.core import Form, actor, bp, done, local_moment, reading, roles, runtime, table_download
from loyalty.catalogue import service
from loyalty.catalogue.codes import parse_codes
from loyalty.catalogue.models import FULFILMENTS, KINDS, PERIODS, STATUSES
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError

YUAN = re.compile(r"[0-9]{1,12}(\.[0-9]{1,2})?")
INTEGER = re.compile(r"[0-9]{1,12}")


def ladder() -> tuple[str, ...]:
    return tuple(runtime().programme.ladder.codes)


def next_statuses(benefit: dict[str, Any]) -> tuple[str, ...]:
    """The statuses a benefit may move to from its own."""
    if benefit["status"] == "retired":
        return ()
    return (*service.TRANSITIONS[benefit["status"]], "retired")


def low_stock(benefit: dict[str, Any]) -> bool:
    threshold, stock = benefit["low_stock_threshold"], benefit["stock"]
    return threshold is not None and stock is not None and stock <= threshold


@bp.get("/catalogue")
@roles("catalogue")
def benefits() -> Any:
    args = request.args
    with reading() as conn:
        found = service.list_benefits(conn, status=args.get("status") or None)
    if args.get("kind"):
        found = [b for b in found if b["kind"] == args["kind"]]
    if args.get("partner"):
        found = [b for b in found if (b["partner"] or "") == args["partner"]]
    if args.get("tier"):
        tier = args["tier"]
        found = [
            b
            for b in found
            if (not b["eligible_tiers"] or tier in b["eligible_tiers"])
            and (b["points_price"] is not None or tier in b["entitlements"])
        ]
    header = ["code", "name", "kind", "status", "partner", "points_price", "stock", "low_stock_threshold"]
    download = table_download("benefits", header, [[b[h] for h in header] for b in found])
    if download is not None:
        return download
    with reading() as conn:
        partners = sorted({b["partner"] for b in service.list_benefits(conn) if b["partner"]})
    return render_template(
        "admin/catalogue.html",
        benefits=found,
        tiers=ladder(),
        kinds=KINDS,
        statuses=STATUSES,
        partners=partners,
        low_stock=low_stock,
    )


def _number(form: MultiDict[str, str], name: str, errors: dict[str, list[str]], *, money: bool = False) -> Any:
    raw = (form.get(name) or "").strip().replace(",", "")
    if raw == "":
        return None
    if money:
        if not YUAN.fullmatch(raw):
            errors[name] = [_("an amount in yuan, e.g. 10 or 10.50")]
            return None
        whole, _dot, cents = raw.partition(".")
        return int(whole) * 100 + int((cents + "00")[:2])
    if not INTEGER.fullmatch(raw):
        errors[name] = [_("a whole number")]
        return None
    return int(raw)


def benefit_document(form: MultiDict[str, str], tiers: tuple[str, ...], *, new: bool) -> dict[str, Any]:
    """The benefit the form describes, as the catalogue service reads it; a field the form itself
    cannot read (an amount that is not one) is a :class:`ValidationError` naming it."""
    errors: dict[str, list[str]] = {}
    doc: dict[str, Any] = {
        "name": form.get("name", ""),
        "description": form.get("description", ""),
        "kind": form.get("kind", ""),
        "fulfilment": form.get("fulfilment", ""),
        "partner": form.get("partner") or None,
        "funding_source": form.get("funding_source") or "bank",
        "face_value": _number(form, "face_value", errors, money=True),
        "unit_cost": _number(form, "unit_cost", errors, money=True),
        "points_price": _number(form, "points_price", errors),
        "stock": _number(form, "stock", errors),
        "low_stock_threshold": _number(form, "low_stock_threshold", errors),
        "cancel_hours": _number(form, "cancel_hours", errors) or 0,
        "eligible_tiers": [t for t in tiers if form.get(f"eligible_tiers.{t}")],
        "tier_prices": {},
        "entitlements": {},
        "limits": {},
    }
    for name in ("face_value", "unit_cost"):
        if doc[name] is None and name not in errors:
            del doc[name]  # the service names it as required
    for tier in tiers:
        price = _number(form, f"tier_prices.{tier}", errors)
        if price is not None:
            doc["tier_prices"][tier] = price
        quota = _number(form, f"entitlements.{tier}.quota", errors)
        if quota is not None:
            doc["entitlements"][tier] = {"quota": quota, "period": form.get(f"entitlements.{tier}.period") or None}
    for period in PERIODS:
        most = _number(form, f"limits.{period}", errors)
        if most is not None:
            doc["limits"][period] = most
    for name in ("valid_from", "valid_until"):
        try:
            moment = local_moment(form.get(name), name)
        except ValidationError as exc:
            errors.update(exc.errors)
            moment = None
        doc[name] = None if moment is None else moment.isoformat()
    if new:
        doc["code"] = form.get("code", "")
        doc["status"] = form.get("status") or "draft"
    else:
        doc["version"] = _number(form, "version", errors)
    if errors:
        raise ValidationError(errors)
    return doc


def form_values(benefit: dict[str, Any]) -> dict[str, Any]:
    """A stored benefit as the form's field values."""
    zone = runtime().programme.zone
    values: dict[str, Any] = {k: v for k, v in benefit.items() if not isinstance(v, (dict, list))}
    for name in ("face_value", "unit_cost"):
        values[name] = f"{benefit[name] / 100:.2f}"
    for name in ("valid_from", "valid_until"):
        from datetime import datetime

        values[name] = (
            datetime.fromisoformat(benefit[name]).astimezone(zone).strftime("%Y-%m-%dT%H:%M") if benefit[name] else ""
        )
    for tier in benefit["eligible_tiers"]:
        values[f"eligible_tiers.{tier}"] = "on"
    for tier, price in benefit["tier_prices"].items():
        values[f"tier_prices.{tier}"] = price
    for tier, grant in benefit["entitlements"].items():
        values[f"entitlements.{tier}.quota"] = grant["quota"]
        values[f"entitlements.{tier}.period"] = grant["period"]
    for period, most in benefit["limits"].items():
        values[f"limits.{period}"] = most
    return values


def render_form(values: Any, errors: dict[str, list[str]], *, code: str | None, status: int = 200) -> Any:
    return (
        render_template(
            "admin/benefit_form.html",
            values=values,
            errors=errors,
            code=code,
            tiers=ladder(),
            kinds=KINDS,
            fulfilments=FULFILMENTS,
            periods=PERIODS,
            form=Form(),
        ),
        status,
    )


@bp.route("/catalogue/new", methods=["GET", "POST"])
@roles("catalogue")
def new_benefit() -> Any:
    if request.method == "GET":
        return render_form({"funding_source": "bank", "cancel_hours": 0, "status": "draft"}, {}, code=None)
    tiers = ladder()
    try:
        new = service.parse_new(benefit_document(request.form, tiers, new=True), tiers)
        rt = runtime()
        with transaction(rt.engine) as conn:
            created = service.create(conn, new, actor=actor(), now=rt.now())
    except ValidationError as exc:
        return render_form(request.form, exc.errors, code=None, status=422)
    except LoyaltyError as exc:
        return render_form(request.form, {exc.field or "code": [exc.detail]}, code=None, status=exc.status)
    done(_("Benefit %(code)s created.", code=created["code"]))
    return redirect(url_for("admin.benefit", code=created["code"]))


@bp.get("/catalogue/<code>")
@roles("catalogue")
def benefit(code: str) -> Any:
    return benefit_page(code, compare=(request.args.get("a", type=int), request.args.get("b", type=int)))


def benefit_page(code: str, *, compare: tuple[int | None, int | None] = (None, None), upload: Any = None) -> str:
    """A benefit: its definition, status, codes, versions and a diff between two of them (by
    default the latest and the one before)."""
    with reading() as conn:
        found = service.get(conn, code)
        history = service.versions(conn, code)
        counts = service.code_counts(conn, code) if found["fulfilment"] == "pool" else None
    a, b = compare
    diff = None
    if history and upload is None:
        by_version = {v["version"]: v for v in history}
        b = b if b in by_version else history[0]["version"]
        a = a if a in by_version else (history[1]["version"] if len(history) > 1 else b)
        diff = list(
            difflib.unified_diff(
                json.dumps(by_version[a]["document"], indent=2, ensure_ascii=False, sort_keys=True).splitlines(),
                json.dumps(by_version[b]["document"], indent=2, ensure_ascii=False, sort_keys=True).splitlines(),
                f"v{a}",
                f"v{b}",
                lineterm="",
            )
        )
    return render_template(
        "admin/benefit.html",
        benefit=found,
        history=history,
        counts=counts,
        diff=diff,
        a=a,
        b=b,
        statuses=next_statuses(found),
        tiers=ladder(),
        low_stock=low_stock(found),
        form=Form(),
        upload=upload,
    )


@bp.route("/catalogue/<code>/edit", methods=["GET", "POST"])
@roles("catalogue")
def edit_benefit(code: str) -> Any:
    if request.method == "GET":
        with reading() as conn:
            return render_form(form_values(service.get(conn, code)), {}, code=code)
    tiers = ladder()
    try:
        change = service.parse_replacement(benefit_document(request.form, tiers, new=False), code, tiers)
        rt = runtime()
        with transaction(rt.engine) as conn:
            service.replace(conn, code, change, actor=actor(), now=rt.now())
    except ValidationError as exc:
        return render_form(request.form, exc.errors, code=code, status=422)
    except LoyaltyError as exc:
        return render_form(request.form, {exc.field or "name": [exc.detail]}, code=code, status=exc.status)
    done(_("Benefit %(code)s saved.", code=code))
    return redirect(url_for("admin.benefit", code=code))


@bp.post("/catalogue/<code>/status")
@roles("catalogue")
def benefit_status(code: str) -> Any:
    status = request.form.get("status", "")
    if status not in STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(STATUSES)}")
    rt = runtime()
    with transaction(rt.engine) as conn:
        service.set_status(conn, code, status, actor=actor(), now=rt.now())
    done(_("Benefit %(code)s is now %(status)s.", code=code, status=status))
    return redirect(url_for("admin.benefit", code=code))


@bp.post("/catalogue/<code>/codes")
@roles("catalogue")
def benefit_codes(code: str) -> Any:
    """A CSV of voucher codes, one a line: every line good, or nothing added and each bad line named."""
    upload = request.files.get("codes")
    summary: dict[str, Any]
    status = 200
    try:
        raw = upload.read() if upload else b""
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError.one("codes", "the file is not UTF-8 text") from None
        if not text.strip():
            raise ValidationError.one("codes", "choose a CSV file of codes, one a line")
        codes = parse_codes(text)
        rt = runtime()
        box = service.code_box(rt.settings.secret_key)
        with transaction(rt.engine) as conn:
            summary = service.upload_codes(conn, box, code, codes, actor=actor(), now=rt.now())
        summary["bad_lines"] = {}
    except ValidationError as exc:
        status = 422
        summary = {"added": 0, "duplicates": 0, "bad_lines": exc.errors}
    return benefit_page(code, upload=summary), status
