"""Finance: valuation settings, the liability, breakage, the trial balance, the roll-forward, revenue recognition."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Response, request
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.api.base import bp, execute, json_body, json_response, requires, runtime
from loyalty.api.programmes import actor
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.finance import breakage, export, liability, periods, recognition, reports, settings
from loyalty.finance.schemas import REOPEN_SCHEMA, SETTING_SCHEMA, WHAT_IF_SCHEMA
from loyalty.idempotency import Result
from loyalty.validation import load


@bp.post("/finance/recognition/what-if")
@requires("finance")
def recognition_what_if() -> Response:
    """Each period's revenue for a cohort under the figures given, by the report's own arithmetic;
    nothing is stored."""
    data = load(WHAT_IF_SCHEMA, json_body())
    periods = recognition.recognise(data["allocated_fen"], data["periods"])
    return json_response({"allocated_fen": data["allocated_fen"], "periods": [asdict(p) for p in periods]})


def local_date_arg(name: str) -> dt.date:
    """A required ``YYYY-MM-DD`` query parameter; a missing or bad one is a 422 naming it."""
    raw = request.args.get(name)
    if raw is None or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
        raise ValidationError.one(name, "must be a local date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ValidationError.one(name, f"{raw} is not a calendar date") from None


def report_response(report: dict[str, Any], table: Callable[[dict[str, Any]], export.Table], title: str) -> Response:
    """The report as JSON, or as ``?format=csv`` or ``?format=xlsx``."""
    fmt = request.args.get("format", "json")
    if fmt not in export.FORMATS:
        raise ValidationError.one("format", f"must be one of {', '.join(export.FORMATS)}")
    if fmt == "json":
        return json_response(report)
    body = export.render(table(report), fmt, title=title)
    filename = f"{title}.{fmt}"
    return Response(
        body,
        mimetype=export.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.get("/finance/trial-balance")
@requires("finance")
def get_trial_balance() -> Response:
    """Every ledger account's balance at the end of a local day; they sum to zero."""
    as_of = local_date_arg("as_of")
    rt = runtime()
    zone = rt.programme.zone
    with transaction(rt.engine, readonly=True) as conn:
        report = periods.frozen_at_month_end(conn, "trial_balance", as_of) or reports.trial_balance(
            conn, end=calendar.day_of(as_of, zone).end
        )
    return report_response(report, export.trial_balance_table, f"trial-balance-{as_of.isoformat()}")


@bp.get("/finance/rollforward")
@requires("finance")
def get_rollforward() -> Response:
    """The roll-forward of outstanding points from the start of local day ``from`` to the end of ``to``."""
    start, end = local_date_arg("from"), local_date_arg("to")
    if end < start:
        raise ValidationError.one("to", "must not be before from")
    rt = runtime()
    zone = rt.programme.zone
    month = periods.closed_month(start, end)
    with transaction(rt.engine, readonly=True) as conn:
        report = (month and periods.frozen(conn, month, "rollforward")) or reports.rollforward(
            conn, start=calendar.start_of(start, zone), end=calendar.day_of(end, zone).end
        )
    return report_response(report, export.rollforward_table, f"rollforward-{start.isoformat()}-{end.isoformat()}")


@bp.post("/finance/settings")
@requires("finance")
def post_setting() -> Response:
    """Set a valuation (point value, redemption rate, allocated value) from a local date; audited."""
    body = json_body()
    data = load(SETTING_SCHEMA, body)
    value = settings.parse_value(data["kind"], data["value"])

    def operation(conn: Connection, now: dt.datetime) -> Result:
        created, setting = settings.set_value(conn, **{**data, "value": value}, actor=actor(), now=now)
        return Result(setting, created=created)

    return execute(operation, body)


@bp.get("/finance/settings")
@requires("finance")
def get_settings() -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response({"settings": settings.all_settings(conn)})


@bp.get("/finance/liability")
@requires("finance")
def get_liability() -> Response:
    """Outstanding points at the end of a local day by funding source and tier, valued, with the inputs."""
    as_of = local_date_arg("as_of")
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        report = periods.frozen_at_month_end(conn, "liability", as_of) or liability.liability(
            conn, as_of=as_of, zone=rt.programme.zone, default_point_value=rt.settings.point_value_fen
        )
    return report_response(report, export.liability_table, f"liability-{as_of.isoformat()}")


@bp.get("/finance/breakage")
@requires("finance")
def get_breakage() -> Response:
    """Cohorts by local month of earning, their redemption curves, and the estimated redemption rate."""
    rt = runtime()
    zone = rt.programme.zone
    as_of = local_date_arg("as_of") if "as_of" in request.args else None
    end = calendar.day_of(as_of, zone).end if as_of is not None else rt.now()
    with transaction(rt.engine, readonly=True) as conn:
        report = (as_of and periods.frozen_at_month_end(conn, "breakage", as_of)) or breakage.cohorts(
            conn, end=end, zone=zone
        )
    return report_response(report, export.breakage_table, "breakage")


@bp.get("/finance/recognition")
@requires("finance")
def get_recognition() -> Response:
    """Revenue recognised per earning cohort for a local month, quarter or year."""
    label = request.args.get("period", "")
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        report = periods.frozen(conn, label, "recognition") or recognition.report(
            conn, label=label, zone=rt.programme.zone
        )
    return report_response(report, export.recognition_table, f"recognition-{label}")


@bp.get("/finance/periods")
@requires("finance")
def get_periods() -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response({"closed": periods.listing(conn)})


@bp.post("/finance/periods/<period>/close")
@requires("finance")
def close_period(period: str) -> Response:
    """Close a local month that has ended: its reports are stored and served as stored."""
    rt = runtime()
    periods.month_of(period, rt.programme.zone)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        summary = periods.close(
            conn,
            period,
            zone=rt.programme.zone,
            default_point_value=rt.settings.point_value_fen,
            actor=actor(),
            now=now,
        )
        return Result(summary, created=True)

    return execute(operation, None)


@bp.post("/finance/periods/<period>/reopen")
@requires("admin")
def reopen_period(period: str) -> Response:
    """Reopen a closed month, with a reason: its stored reports are dropped."""
    body = json_body()
    data = load(REOPEN_SCHEMA, body)
    rt = runtime()
    periods.month_of(period, rt.programme.zone)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(periods.reopen(conn, period, reason=data["reason"], actor=actor(), now=now))

    return execute(operation, body)
