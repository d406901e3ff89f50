"""API keys: list, create, rotate with an overlap, revoke. Scope ``admin``; audited.

A key's secret is in the answer that makes it and nowhere else: these operations do not honour
``Idempotency-Key`` (a stored answer would keep the secret), and the secret is masked in logs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, g
from marshmallow import fields, validate

from loyalty import audit, logmask
from loyalty.api.base import bp, json_body, json_response, requires, runtime
from loyalty.auth import service
from loyalty.auth.models import SCOPES
from loyalty.config import ROUTE_CLASSES
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.validation import Base, StrictInteger, StrictString, load


class NewKeySchema(Base):
    name = StrictString(required=True, validate=validate.Length(min=1, max=100))
    scopes = fields.List(StrictString(validate=validate.OneOf(SCOPES)), required=True, validate=validate.Length(min=1))
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)
    rate_limits = fields.Dict(
        keys=StrictString(validate=validate.OneOf(ROUTE_CLASSES)), values=StrictString(), load_default=dict
    )


class RotationSchema(Base):
    overlap_seconds = StrictInteger(
        required=True, validate=validate.Range(min=0, max=int(service.MAX_OVERLAP.total_seconds()))
    )


NEW_KEY_SCHEMA = NewKeySchema()
ROTATION_SCHEMA = RotationSchema()


def revealed(key: str, view: dict[str, Any]) -> dict[str, Any]:
    logmask.keep_out_of_logs(key)
    return {"key": key, "api_key": view}


@bp.get("/api-keys")
@requires("admin")
def list_api_keys() -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response({"api_keys": service.list_keys(conn, rt.now())})


@bp.post("/api-keys")
@requires("admin")
def create_api_key() -> Response:
    data = load(NEW_KEY_SCHEMA, json_body())
    rt = runtime()
    now = rt.now()
    with transaction(rt.engine) as conn:
        key, view = service.issue_key(
            conn,
            name=data["name"],
            scopes=frozenset(data["scopes"]),
            actor=g.api_key.name,
            now=now,
            expires_at=data["expires_at"],
            rate_limits=data["rate_limits"],
        )
    return json_response(revealed(key, view), 201)


def not_own(key_id: str) -> None:
    """A key may not rotate or revoke itself: the caller would lock itself out (another admin key can)."""
    if key_id == g.api_key.id:
        raise ValidationError.one("key_id", "is the key making this request; use another admin key")


@bp.post("/api-keys/<key_id>/rotate")
@requires("admin")
def rotate_api_key(key_id: str) -> Response:
    not_own(key_id)
    data = load(ROTATION_SCHEMA, json_body())
    rt = runtime()
    now = rt.now()
    with transaction(rt.engine) as conn:
        key, view = service.rotate(conn, key_id, overlap=dt.timedelta(seconds=data["overlap_seconds"]), now=now)
        audit.record(
            conn,
            actor=g.api_key.name,
            action="api_key.rotate",
            object_type="api_key",
            object_id=key_id,
            after=view,
            now=now,
        )
    return json_response(revealed(key, view))


@bp.post("/api-keys/<key_id>/revoke")
@requires("admin")
def revoke_api_key(key_id: str) -> Response:
    not_own(key_id)
    rt = runtime()
    now = rt.now()
    with transaction(rt.engine) as conn:
        view = service.revoke(conn, key_id, actor=g.api_key.name, now=now)
    return json_response({"api_key": view})
