"""Partner reconciliation: a partner's statement (CSV) compared with the redemptions it fulfilled,
stored, and read back as JSON, CSV or XLSX."""

from __future__ import annotations

import datetime as dt
import re

from flask import Response, current_app, g, request
from sqlalchemy.engine import Connection
from werkzeug.exceptions import RequestEntityTooLarge

from loyalty.api.base import bp, execute, int_arg, requires, runtime
from loyalty.api.finance import local_date_arg, report_response
from loyalty.config import PARTNER_NAME
from loyalty.db import transaction
from loyalty.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from loyalty.finance.reconciliation import service, statement, tables
from loyalty.idempotency import Result


@bp.post("/finance/reconciliations")
@requires("finance")
def create_reconciliation() -> Response:
    """Reconcile the statement in the body with the redemptions the partner fulfilled; 201 with
    the stored reconciliation. A bad line, partner or period is a 422 and nothing is stored."""
    rt = runtime()
    start, end = optional_date_arg("from"), optional_date_arg("to")
    partner = request.args.get("partner")
    prepared = statement.prepare(partner, statement_body(), known_partners=rt.settings.partners, start=start, end=end)
    actor = g.api_key.name
    zone = rt.programme.zone

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.reconcile(conn, prepared, zone=zone, actor=actor, now=now), created=True)

    return execute(
        operation,
        {
            "partner": prepared.partner,
            "from": None if start is None else start.isoformat(),
            "to": None if end is None else end.isoformat(),
            "statement_sha256": prepared.sha256,
        },
    )


@bp.get("/finance/reconciliations")
@requires("finance")
def list_reconciliations() -> Response:
    """The latest reconciliations, newest first, optionally of one partner."""
    partner = request.args.get("partner")
    if partner is not None and not PARTNER_NAME.fullmatch(partner):
        raise ValidationError.one("partner", "is not a partner name (lower-case letters, digits, - and _)")
    limit = int_arg("limit", 50, 1, 500) or 50
    with transaction(runtime().engine, readonly=True) as conn:
        found = service.list_reconciliations(conn, partner=partner, limit=limit)
    title = f"reconciliations-{partner}" if partner else "reconciliations"
    return report_response({"reconciliations": found}, tables.list_table, title)


@bp.get("/finance/reconciliations/<reconciliation_id>")
@requires("finance")
def get_reconciliation(reconciliation_id: str) -> Response:
    """One reconciliation with every line."""
    with transaction(runtime().engine, readonly=True) as conn:
        found = service.get(conn, reconciliation_id)
    title = f"reconciliation-{found['partner']}-{found['from']}-{found['to']}"
    return report_response(found, tables.reconciliation_table, title)


def optional_date_arg(name: str) -> dt.date | None:
    """A ``YYYY-MM-DD`` query parameter that may be left out."""
    return None if request.args.get(name) is None else local_date_arg(name)


def statement_body() -> bytes:
    """The statement as sent: ``text/csv``, UTF-8 (a ``charset`` other than UTF-8 is refused)."""
    if request.mimetype != "text/csv":
        raise UnsupportedMediaType(
            "send the statement as text/csv (UTF-8): partner_reference,redemption_id,amount_fen,date",
            field="Content-Type",
        )
    charset = request.mimetype_params.get("charset")
    if charset is not None and not re.fullmatch(r"utf-?8", charset.strip().lower()):
        raise UnsupportedMediaType(
            f"the statement must be UTF-8, not {charset[:40]!r}; save it as UTF-8", field="Content-Type"
        )
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the statement exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes; reconcile it in parts by period,"
            " or with loyalty finance reconcile",
            field="body",
        ) from None
