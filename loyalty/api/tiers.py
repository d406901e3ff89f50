"""Tiers: manual overrides (scope ``admin``) and the member's tier and lifecycle history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, int_arg, json_body, json_response, requires, runtime
from loyalty.api.programmes import actor
from loyalty.db import transaction
from loyalty.idempotency import Result
from loyalty.tiers import service
from loyalty.validation import Base, StrictString, load


class OverrideSchema(Base):
    tier = StrictString(required=True, validate=validate.Length(min=1, max=64))
    until = fields.AwareDateTime(required=True)
    reason = StrictString(required=True, validate=validate.Length(min=3, max=500))

    @post_load
    def utc(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["until"] = data["until"].astimezone(dt.UTC)
        return data


OVERRIDE_SCHEMA = OverrideSchema()


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


@bp.get("/members/<member_id>/history")
@requires("read")
def get_history(member_id: str) -> Response:
    limit = int_arg("limit", 50, 1, 500)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.history(conn, member_id, limit=limit))
