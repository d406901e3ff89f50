"""Tiers: manual overrides (scope ``admin``), override requests with four eyes (asked for with
``support`` or ``admin``, decided with ``admin`` by another principal), and the member's tier and
lifecycle history.

An override request's principal is the API key's name: two keys with the same name are the same person.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, g
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, int_arg, json_body, json_response, query_arg, requires, runtime
from loyalty.api.programmes import actor
from loyalty.db import transaction
from loyalty.idempotency import Result
from loyalty.tiers import override_requests, service
from loyalty.tiers.models import MAX_OVERRIDE_REASON
from loyalty.validation import Base, StrictString, load

#: Most override requests one page lists.
MAX_PAGE = 200


class OverrideSchema(Base):
    tier = StrictString(required=True, validate=validate.Length(min=1, max=64))
    until = fields.AwareDateTime(required=True)
    reason = StrictString(required=True, validate=validate.Length(min=3, max=500))

    @post_load
    def utc(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["until"] = data["until"].astimezone(dt.UTC)
        return data


class ApproveSchema(Base):
    note = StrictString(load_default=None, validate=validate.Length(min=1, max=MAX_OVERRIDE_REASON))


class RejectSchema(Base):
    note = StrictString(required=True, validate=validate.Length(min=1, max=MAX_OVERRIDE_REASON))


OVERRIDE_SCHEMA, APPROVE_SCHEMA, REJECT_SCHEMA = OverrideSchema(), ApproveSchema(), RejectSchema()


def principal() -> str:
    return str(g.api_key.name)


@bp.put("/members/<member_id>/tier-override")
@requires("admin")
def put_override(member_id: str) -> Response:
    body = json_body()
    data = load(OVERRIDE_SCHEMA, body)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        override = service.set_override(conn, member_id, **data, actor=actor(), programme=rt.programme, now=now)
        return Result({"member_id": member_id, "override": override})

    return execute(operation, body)


@bp.delete("/members/<member_id>/tier-override")
@requires("admin")
def delete_override(member_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine) as conn:
        service.end_override(conn, member_id, actor=actor(), now=rt.now())
    return Response(status=204)


@bp.post("/members/<member_id>/tier-override-requests")
@requires("support", "admin")
def request_override(member_id: str) -> Response:
    """Ask for a tier override (the body of ``PUT .../tier-override``); another principal decides it."""
    body = json_body()
    data = load(OVERRIDE_SCHEMA, body)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        made = override_requests.request(
            conn, member_id, **data, principal=principal(), programme=rt.programmes.at(now), now=now
        )
        return Result(made, created=True)

    return execute(operation, body)


@bp.get("/tier-override-requests")
@requires("support", "admin")
def list_override_requests() -> Response:
    status, member_id = query_arg("status"), query_arg("member_id")
    limit = int_arg("limit", 50, 1, MAX_PAGE)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        found = override_requests.list_(conn, status=status, member_id=member_id, limit=limit)
    return json_response({"override_requests": found})


@bp.post("/tier-override-requests/<override_request_id>/approve")
@requires("admin")
def approve_override_request(override_request_id: str) -> Response:
    """Approve a tier override someone else asked for: the override is set as ``PUT`` sets it."""
    body = json_body()
    data = load(APPROVE_SCHEMA, body)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(
            override_requests.approve(
                conn,
                override_request_id,
                principal=principal(),
                programme=rt.programmes.at(now),
                now=now,
                note=data["note"],
            )
        )

    return execute(operation, body)


@bp.post("/tier-override-requests/<override_request_id>/reject")
@requires("admin")
def reject_override_request(override_request_id: str) -> Response:
    """Reject a tier override someone else asked for, saying why."""
    body = json_body()
    data = load(REJECT_SCHEMA, body)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(
            override_requests.reject(conn, override_request_id, principal=principal(), note=data["note"], now=now)
        )

    return execute(operation, body)


@bp.get("/members/<member_id>/history")
@requires("read")
def get_history(member_id: str) -> Response:
    limit = int_arg("limit", 50, 1, 500)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.history(conn, member_id, limit=limit))
