"""Analytics: benefit usage by tier and benefit for a chosen period, cost, NPS, retention and
churn (``loyalty.analytics.service.report``), with a chart drawn from its table, the report as
CSV and XLSX (the API's export), the ids behind a figure (``service.explain``), and the tuning
advice with its decisions (``loyalty.analytics.advice``).

Read by ``catalogue``, ``finance`` and ``admin`` (and ``auditor``, who reads every page); the
advice is decided by those who change the catalogue: ``catalogue`` and ``admin``."""

from __future__ import annotations

from typing import Any

from flask import redirect, render_template, request, url_for
from flask_babel import gettext as _

from admin.core import Form, actor, bp, done, faults, runtime, table_download
from admin.core import roles as roles_
from loyalty.analytics import advice, export, periods, service
from loyalty.analytics.jobs import programme_at
from loyalty.analytics.models import ALL, DECISIONS
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError

READERS = ("catalogue", "finance", "admin")
DECIDERS = ("catalogue", "admin")
#: Longest note on a decision (as the API takes).
MAX_NOTE = 1000


def current_month() -> str:
    rt = runtime()
    now = rt.now()
    return periods.span_at("month", now, programme_at(rt, now).zone).label


def analytics_page(errors: dict[str, list[str]] | None = None, status: int = 200) -> Any:
    rt = runtime()
    errors = dict(errors or {})
    period = (request.args.get("period") or "").strip() or current_month()
    tier = (request.args.get("tier") or "").strip() or None
    tiers = list(programme_at(rt, rt.now()).ladder.codes)
    if tier is not None and tier not in tiers:
        errors["tier"] = [f"must be one of {', '.join(tiers)}"]
        status = 422
        tier = None
    report: dict[str, Any] | None = None
    found: dict[str, Any] | None = None
    try:
        report = service.report(rt, period, tier=tier)
        found = advice.advice(rt, period)
    except ValidationError as exc:
        errors.update(faults(exc, "period"))
        status = exc.status
    if report is not None:
        download = table_download(f"analytics-{period}", *export.report_table(report))
        if download is not None:
            return download
    shown = report["periods"][0] if report else None
    usage = [
        (t["tier"], b)
        for t in (shown["tiers"] if shown else [])
        if t["tier"] != ALL or tier is None
        for b in t["benefits"]
        if b["benefit_code"] != ALL
    ]
    return render_template(
        "admin/analytics.html",
        period=period,
        tier=tier,
        tiers=tiers,
        report=shown,
        usage=usage,
        **usage_grid(usage),
        advice=found,
        errors=errors,
        form=Form(),
        args=request.form,
        decisions=DECISIONS,
    ), status


def usage_grid(usage: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The usage rate (per cent) of each benefit (a row) in each tier (a column), for the chart."""
    tiers = list(dict.fromkeys(t for t, _b in usage if t != ALL))
    codes = sorted({b["benefit_code"] for t, b in usage if t != ALL})
    rates = {(t, b["benefit_code"]): b["usage_rate"] for t, b in usage}
    return {
        "grid_tiers": tiers,
        "grid": [[code, *(rates.get((t, code)) for t in tiers)] for code in codes],
    }


@bp.get("/analytics")
@roles_(*READERS)
def analytics() -> Any:
    return analytics_page()


@bp.get("/analytics/explain")
@roles_(*READERS)
def analytics_explain() -> Any:
    rt = runtime()
    args = request.args
    period = (args.get("period") or "").strip() or current_month()
    try:
        found = service.explain(
            rt,
            period,
            args.get("metric", ""),
            tier=args.get("tier") or ALL,
            benefit=args.get("benefit_code") or ALL,
            limit=service.MAX_IDS,
        )
    except ValidationError as exc:
        return render_template("admin/explain.html", found=None, errors=faults(exc, "metric")), exc.status
    return render_template("admin/explain.html", found=found, errors={})


@bp.post("/analytics/advice/<finding_id>")
@roles_(*DECIDERS)
def decide_finding(finding_id: str) -> Any:
    rt = runtime()
    form = request.form
    decision = form.get("decision", "")
    note = (form.get("note") or "").strip()
    try:
        if decision not in DECISIONS:
            raise ValidationError.one("decision", f"must be one of {', '.join(DECISIONS)}")
        if not 1 <= len(note) <= MAX_NOTE:
            raise ValidationError.one("note", f"say why, in 1 to {MAX_NOTE} characters")
        with transaction(rt.engine) as conn:
            advice.decide(conn, finding_id, decision, note, actor=actor(), now=rt.now())
    except LoyaltyError as exc:
        return analytics_page({f"{finding_id}.{k}": v for k, v in faults(exc, "note").items()}, status=exc.status)
    done(_("Finding %(id)s: %(decision)s.", id=finding_id, decision=decision))
    args = request.args
    return redirect(url_for("admin.analytics", period=args.get("period", ""), tier=args.get("tier", "")))
