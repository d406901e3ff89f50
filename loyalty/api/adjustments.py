"""Manual adjustments of members' points, with four eyes: one key's principal requests, another's decides.

The principal is the API key's name: two keys with the same name are the same person.
"""

from __future__ import annotations

import datetime as dt

from flask import Response, g
from marshmallow import validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, int_arg, json_body, json_response, query_arg, requires, runtime
from loyalty.db import transaction
from loyalty.idempotency import Result
from loyalty.members import adjustments
from loyalty.members.models import MAX_ADJUSTMENT_POINTS, MAX_REASON
from loyalty.validation import Base, StrictInteger, StrictString, load

MAX_PAGE = 200


class RequestSchema(Base):
    points = StrictInteger(
        required=True, validate=validate.Range(min=-MAX_ADJUSTMENT_POINTS, max=MAX_ADJUSTMENT_POINTS)
    )
    reason = StrictString(required=True, validate=validate.Length(min=1, max=MAX_REASON))


class ApproveSchema(Base):
    note = StrictString(load_default=None, validate=validate.Length(min=1, max=MAX_REASON))


class RejectSchema(Base):
    note = StrictString(required=True, validate=validate.Length(min=1, max=MAX_REASON))


REQUEST_SCHEMA, APPROVE_SCHEMA, REJECT_SCHEMA = RequestSchema(), ApproveSchema(), RejectSchema()


def principal() -> str:
    return str(g.api_key.name)


@bp.post("/members/<member_id>/adjustments")
@requires("support", "finance")
def request_adjustment(member_id: str) -> Response:
    """Ask for a manual adjustment; another principal approves or rejects it."""
    body = json_body()
    data = load(REQUEST_SCHEMA, body)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        made = adjustments.request(conn, member_id, data["points"], data["reason"], principal=principal(), now=now)
        return Result(made, created=True)

    return execute(operation, body)


@bp.get("/adjustments")
@requires("support", "finance")
def list_adjustments() -> Response:
    status, member_id = query_arg("status"), query_arg("member_id")
    limit = int_arg("limit", 50, 1, MAX_PAGE)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        found = adjustments.list_(conn, status=status, member_id=member_id, limit=limit)
    return json_response({"adjustments": found})


@bp.post("/adjustments/<adjustment_id>/approve")
@requires("finance")
def approve_adjustment(adjustment_id: str) -> Response:
    """Approve and post an adjustment someone else requested."""
    body = json_body()
    data = load(APPROVE_SCHEMA, body)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(
            adjustments.approve(
                conn, adjustment_id, principal=principal(), programme=rt.programmes.at(now), now=now, note=data["note"]
            )
        )

    return execute(operation, body)


@bp.post("/adjustments/<adjustment_id>/reject")
@requires("finance")
def reject_adjustment(adjustment_id: str) -> Response:
    """Reject an adjustment someone else requested, saying why."""
    body = json_body()
    data = load(REJECT_SCHEMA, body)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(adjustments.reject(conn, adjustment_id, principal=principal(), note=data["note"], now=now))

    return execute(operation, body)
