"""Member profiles: the bank's value and need data about a member."""

from __future__ import annotations

import datetime as dt

from flask import Response
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, json_body, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.idempotency import Result
from loyalty.members import profiles
from loyalty.members.profiles import local_today
from loyalty.members.schemas import load_profile


@bp.put("/members/<member_id>/profile")
@requires("accrue", "profile")
def put_profile(member_id: str) -> Response:
    body = json_body()
    rt = runtime()
    programme = rt.programme
    cmd = load_profile(body, local_today(rt.now(), programme.zone))

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(profiles.put_profile(conn, member_id, cmd, programme=programme, now=now))

    return execute(operation, body)


@bp.get("/members/<member_id>/profile")
@requires("read")
def get_profile(member_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(profiles.get_profile(conn, member_id))
