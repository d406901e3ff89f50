"""Finance: the liability, the roll-forward, the trial balance, breakage, revenue recognition and its
what-if, valuation settings, period close, partner reconciliations. Every table is shown as the
CSV and XLSX exports write it (the same table functions), and downloads as either."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy.engine import Connection

from admin.core import Form, actor, bp, done, faults, local_day, reading, roles, runtime, table_download, today, zone
from loyalty import calendar
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.finance import breakage, export, liability, periods, recognition, reports, settings
from loyalty.finance.models import SETTING_KINDS
from loyalty.finance.recognition import PeriodFigures
from loyalty.finance.reconciliation import service as reconciliations
from loyalty.finance.reconciliation import statement, tables

REPORTS = ("liability", "rollforward", "trial-balance", "breakage", "recognition")


def _last_month() -> str:
    first = today().replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def report_of(conn: Connection, name: str, args: Any) -> tuple[dict[str, Any], Callable[..., export.Table], str]:
    """The report ``name`` for the page's inputs, as the API computes it (a closed month's as stored)."""
    rt = runtime()
    z = zone()
    if name == "rollforward":
        start = local_day(args.get("from") or today().replace(day=1).isoformat(), "from")
        end = local_day(args.get("to") or today().isoformat(), "to")
        if end < start:
            raise ValidationError.one("to", "must not be before from")
        month = periods.closed_month(start, end)
        report = (month and periods.frozen(conn, month, "rollforward")) or reports.rollforward(
            conn, start=calendar.start_of(start, z), end=calendar.day_of(end, z).end
        )
        return report, export.rollforward_table, f"rollforward-{start}-{end}"
    if name == "recognition":
        label = args.get("period") or _last_month()
        report = periods.frozen(conn, label, "recognition") or recognition.report(conn, label=label, zone=z)
        return report, export.recognition_table, f"recognition-{label}"
    if name == "breakage":
        return breakage.cohorts(conn, end=rt.now(), zone=z), export.breakage_table, "breakage"
    as_of = local_day(args.get("as_of") or today().isoformat(), "as_of")
    if name == "trial-balance":
        report = periods.frozen_at_month_end(conn, "trial_balance", as_of) or reports.trial_balance(
            conn, end=calendar.day_of(as_of, z).end
        )
        return report, export.trial_balance_table, f"trial-balance-{as_of}"
    report = periods.frozen_at_month_end(conn, "liability", as_of) or liability.liability(
        conn, as_of=as_of, zone=z, default_point_value=rt.settings.point_value_fen
    )
    return report, export.liability_table, f"liability-{as_of}"


@bp.get("/finance")
@roles("finance")
def finance() -> Any:
    name = request.args.get("report", "liability")
    if name not in REPORTS:
        name = "liability"
    errors: dict[str, list[str]] = {}
    header: Any = ()
    rows: list[Any] = []
    title = name
    try:
        with reading() as conn:
            report, table, title = report_of(conn, name, request.args)
        header, rows = table(report)
    except LoyaltyError as exc:
        errors = faults(exc, "period")
    if not errors:
        download = table_download(title, header, rows)
        if download is not None:
            return download
    return finance_page(name, errors, header=header, rows=rows)


def finance_page(report: str, errors: dict[str, list[str]], **more: Any) -> tuple[str, int]:
    page = {"header": (), "rows": [], "what_if": None, "args": request.form, **more}
    return render_template(
        "admin/finance.html",
        report=report,
        reports=REPORTS,
        errors=errors,
        today=today().isoformat(),
        month_start=today().replace(day=1).isoformat(),
        last_month=_last_month(),
        form=Form(),
        **page,
    ), (422 if errors else 200)


@bp.post("/finance/what-if")
@roles("finance")
def what_if() -> Any:
    """Revenue per period for the figures typed in, by the report's own arithmetic; nothing is stored."""
    form = request.form
    errors: dict[str, list[str]] = {}
    result = None
    try:
        allocated = form.get("allocated_fen", "").strip()
        if not allocated.isdigit():
            raise ValidationError.one("allocated_fen", "a whole number of fen")
        lines = []
        for number, line in enumerate((form.get("periods") or "").splitlines(), start=1):
            if not line.strip():
                continue
            cells = [c.strip() for c in line.split(",")]
            if len(cells) != 3 or not cells[1].isdigit() or not cells[2].isdigit():
                raise ValidationError.one("periods", f"line {number}: label,cumulative_redeemed,expected_total")
            lines.append(PeriodFigures(cells[0][:32], int(cells[1]), int(cells[2])))
        if not lines:
            raise ValidationError.one("periods", "one period a line: label,cumulative_redeemed,expected_total")
        result = [asdict(p) for p in recognition.recognise(int(allocated), lines)]
    except LoyaltyError as exc:
        errors = faults(exc, "periods")
    return finance_page("what-if", errors, what_if=result)


@bp.route("/finance/settings", methods=["GET", "POST"])
@roles("finance")
def valuation() -> Any:
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        form = request.form
        rt = runtime()
        try:
            kind = form.get("kind", "")
            if kind not in SETTING_KINDS:
                raise ValidationError.one("kind", f"must be one of {', '.join(SETTING_KINDS)}")
            value = settings.parse_value(kind, form.get("value", ""))
            source = (form.get("funding_source") or "").strip()
            if not source:
                raise ValidationError.one("funding_source", "name the funding source, e.g. bank")
            with transaction(rt.engine) as conn:
                settings.set_value(
                    conn,
                    kind=kind,
                    funding_source=source,
                    effective_from=local_day(form.get("effective_from"), "effective_from"),
                    value=value,
                    actor=actor(),
                    now=rt.now(),
                )
        except ValidationError as exc:
            errors, status = dict(exc.errors), 422
        else:
            done(_("Valuation saved."))
            return redirect(url_for("admin.valuation"))
    with reading() as conn:
        found = settings.all_settings(conn)
    header = ["kind", "funding_source", "effective_from", "value", "created_by", "created_at"]
    table = [[s.get(h) for h in header] for s in found]
    download = table_download("valuation-settings", header, table)
    if download is not None:
        return download
    return render_template(
        "admin/valuation.html",
        settings=found,
        kinds=SETTING_KINDS,
        errors=errors,
        form=Form(),
        args=request.form,
        today=today().isoformat(),
    ), status


@bp.route("/finance/periods", methods=["GET", "POST"])
@roles("finance")
def close_periods() -> Any:
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        rt = runtime()
        label = request.form.get("period", "")
        try:
            periods.month_of(label, zone())
            with transaction(rt.engine) as conn:
                periods.close(
                    conn,
                    label,
                    zone=zone(),
                    default_point_value=rt.settings.point_value_fen,
                    actor=actor(),
                    now=rt.now(),
                )
        except LoyaltyError as exc:
            errors = faults(exc, "period")
            status = exc.status
        else:
            done(_("Month %(period)s closed.", period=label))
            return redirect(url_for("admin.close_periods"))
    with reading() as conn:
        closed = periods.listing(conn)
    return render_template(
        "admin/periods.html", closed=closed, errors=errors, form=Form(), last_month=_last_month()
    ), status


@bp.post("/finance/periods/<period>/reopen")
@roles("admin")
def reopen_period(period: str) -> Any:
    rt = runtime()
    reason = (request.form.get("reason") or "").strip()
    try:
        if not 1 <= len(reason) <= 500:
            raise ValidationError.one("reason", "say why, in 1 to 500 characters")
        with transaction(rt.engine) as conn:
            periods.reopen(conn, period, reason=reason, actor=actor(), now=rt.now())
    except LoyaltyError as exc:
        with reading() as conn:
            closed = periods.listing(conn)
        errors = faults(exc, "period")
        return render_template(
            "admin/periods.html", closed=closed, errors=errors, form=Form(), last_month=_last_month()
        ), exc.status
    done(_("Month %(period)s reopened.", period=period))
    return redirect(url_for("admin.close_periods"))


@bp.route("/finance/reconciliations", methods=["GET", "POST"])
@roles("finance")
def reconciliation_list() -> Any:
    rt = runtime()
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        form = request.form
        upload = request.files.get("statement")
        try:
            start = local_day(form["from"], "from") if form.get("from") else None
            end = local_day(form["to"], "to") if form.get("to") else None
            prepared = statement.prepare(
                form.get("partner") or None,
                upload.read() if upload else b"",
                known_partners=rt.settings.partners,
                start=start,
                end=end,
            )
            with transaction(rt.engine) as conn:
                made = reconciliations.reconcile(conn, prepared, zone=rt.programme.zone, actor=actor(), now=rt.now())
        except LoyaltyError as exc:
            errors = faults(exc, "statement")
            status = exc.status
        else:
            return redirect(url_for("admin.reconciliation", reconciliation_id=made["id"]))
    with reading() as conn:
        found = reconciliations.list_reconciliations(conn, partner=None, limit=50)
    header, rows = tables.list_table({"reconciliations": found})
    download = table_download("reconciliations", header, rows)
    if download is not None:
        return download
    return render_template(
        "admin/reconciliations.html",
        found=found,
        header=header,
        rows=rows,
        errors=errors,
        form=Form(),
        partners=sorted(rt.settings.partners),
        args=request.form,
    ), status


@bp.get("/finance/reconciliations/<reconciliation_id>")
@roles("finance")
def reconciliation(reconciliation_id: str) -> Any:
    with reading() as conn:
        found = reconciliations.get(conn, reconciliation_id)
    header, rows = tables.reconciliation_table(found)
    download = table_download(f"reconciliation-{found['partner']}-{found['from']}-{found['to']}", header, rows)
    if download is not None:
        return download
    return render_template("admin/reconciliation.html", found=found, header=header, rows=rows)
