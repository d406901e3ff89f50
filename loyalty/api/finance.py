"""Finance: the trial balance, the roll-forward, revenue recognition and its what-if."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Response, request

from loyalty import calendar
from loyalty.api.base import bp, json_body, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.finance import export, recognition, reports
from loyalty.finance.schemas import WHAT_IF_SCHEMA
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
        report = reports.trial_balance(conn, end=calendar.day_of(as_of, zone).end)
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
    with transaction(rt.engine, readonly=True) as conn:
        report = reports.rollforward(conn, start=calendar.start_of(start, zone), end=calendar.day_of(end, zone).end)
    return report_response(report, export.rollforward_table, f"rollforward-{start.isoformat()}-{end.isoformat()}")
