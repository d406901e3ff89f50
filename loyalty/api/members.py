"""Members: enrolment, balance, statement, expiry schedule."""

from __future__ import annotations

import datetime as dt

from flask import Response
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, cursor_arg, execute, int_arg, json_body, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.idempotency import Result
from loyalty.members import service
from loyalty.members.schemas import ENROLMENT_SCHEMA
from loyalty.members.service import Enrolment
from loyalty.validation import check_not_future, load

MAX_PAGE = 200
#: A statement's cursor is an entry's ``seq``: nine digits are more entries than a member will ever have.
CURSOR_DIGITS = 9


@bp.post("/members")
@requires("accrue")
def enrol() -> Response:
    body = json_body()
    cmd: Enrolment = load(ENROLMENT_SCHEMA, body)
    rt = runtime()
    check_not_future(cmd.enrolled_at, "enrolled_at", rt.now())

    def operation(conn: Connection, now: dt.datetime) -> Result:
        created, view = service.enrol(conn, cmd, programme=rt.programme, now=now)
        return Result(view, created=created)

    return execute(operation, body)


@bp.get("/members/<member_id>")
@requires("read")
def get_member(member_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.member_view(conn, member_id, programme=rt.programme, now=rt.now()))


@bp.get("/members/<member_id>/entries")
@requires("read")
def get_statement(member_id: str) -> Response:
    limit = int_arg("limit", 50, 1, MAX_PAGE)
    cursor = cursor_arg("cursor", CURSOR_DIGITS)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.statement(conn, member_id, limit=limit, before_seq=cursor))


@bp.get("/members/<member_id>/expiry-schedule")
@requires("read")
def get_expiry_schedule(member_id: str) -> Response:
    rt = runtime()
    now = rt.now()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.expiry_schedule(conn, member_id, zone=rt.programmes.at(now).zone, now=now))
