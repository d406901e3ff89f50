"""The benefit catalogue's admin API: benefits, their status and versions, voucher code pools."""

from __future__ import annotations

import datetime as dt

from flask import Response, current_app, g, request
from marshmallow import validate
from sqlalchemy.engine import Connection
from werkzeug.exceptions import RequestEntityTooLarge

from loyalty.api.base import bp, execute, json_body, json_response, query_arg, requires, runtime
from loyalty.catalogue import service
from loyalty.catalogue.codes import parse_codes
from loyalty.catalogue.models import STATUSES
from loyalty.db import transaction
from loyalty.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType, ValidationError
from loyalty.idempotency import Result
from loyalty.validation import Base, StrictString, load


def tiers() -> tuple[str, ...]:
    """The tiers of the ladder in force: the tiers a benefit may name."""
    return runtime().programme.ladder.codes


@bp.post("/benefits")
@requires("admin")
def create_benefit() -> Response:
    body = json_body()
    new = service.parse_new(body, tiers())
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.create(conn, new, actor=actor, now=now), created=True)

    return execute(operation, body)


@bp.get("/benefits")
@requires("admin")
def list_benefits() -> Response:
    status = query_arg("status")
    if status is not None and status not in STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(STATUSES)}")
    with transaction(runtime().engine, readonly=True) as conn:
        return json_response({"benefits": service.list_benefits(conn, status=status)})


@bp.get("/benefits/<code>")
@requires("admin")
def get_benefit(code: str) -> Response:
    with transaction(runtime().engine, readonly=True) as conn:
        return json_response(service.get(conn, code))


@bp.put("/benefits/<code>")
@requires("admin")
def replace_benefit(code: str) -> Response:
    body = json_body()
    change = service.parse_replacement(body, code, tiers())
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.replace(conn, code, change, actor=actor, now=now))

    return execute(operation, body)


class StatusSchema(Base):
    status = StrictString(required=True, validate=validate.OneOf(STATUSES))


@bp.post("/benefits/<code>/status")
@requires("admin")
def change_status(code: str) -> Response:
    body = json_body()
    status = load(StatusSchema(), body)["status"]
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.set_status(conn, code, status, actor=actor, now=now))

    return execute(operation, body)


@bp.get("/benefits/<code>/versions")
@requires("admin")
def benefit_versions(code: str) -> Response:
    with transaction(runtime().engine, readonly=True) as conn:
        return json_response({"code": code, "versions": service.versions(conn, code)})


@bp.post("/benefits/<code>/codes")
@requires("admin")
def upload_codes(code: str) -> Response:
    """Codes as ``text/csv``, one a line. The answer, the logs and the audit log hold counts only."""
    box = service.code_box(runtime().settings.secret_key)
    text = csv_body()
    codes = parse_codes(text)
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.upload_codes(conn, box, code, codes, actor=actor, now=now))

    # A retry is recognised by a keyed digest of the file, so no code can be guessed from the stored key.
    return execute(operation, {"codes": box.digest(code, text)})


@bp.get("/benefits/<code>/codes")
@requires("admin")
def code_counts(code: str) -> Response:
    with transaction(runtime().engine, readonly=True) as conn:
        return json_response(service.code_counts(conn, code))


def csv_body() -> str:
    if request.mimetype != "text/csv":
        raise UnsupportedMediaType("send the codes as text/csv, one code a line", field="Content-Type")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes; upload the codes in parts",
            field="body",
        ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not UTF-8 text", field="body") from None
