"""The event feed, and webhook subscriptions with their deliveries."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, request
from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, int_arg, json_body, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.errors import NotFound, ValidationError
from loyalty.events import service, webhooks
from loyalty.events.models import DELIVERY_STATUSES, EVENT_TYPES
from loyalty.events.service import MAX_BIGINT
from loyalty.events.webhooks import NewSubscription
from loyalty.idempotency import Result
from loyalty.validation import Base, StrictString, load

MAX_FEED_PAGE = 500
MAX_DELIVERIES_PAGE = 200
MAX_URL = 2000


@bp.get("/events")
@requires("read")
def get_events() -> Response:
    limit = int_arg("limit", 100, 1, MAX_FEED_PAGE) or 100
    types = event_types_arg()
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.feed(conn, after=request.args.get("after"), limit=limit, types=types))


def event_types_arg() -> list[str]:
    """``types=a,b``: event types to keep; none means all."""
    types = [t.strip() for t in request.args.get("types", "").split(",") if t.strip()]
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValidationError.one(
            "types", f"unknown event type {', '.join(unknown)}; the types are {', '.join(EVENT_TYPES)}"
        )
    return types


def check_url(url: str) -> None:
    """An absolute ASCII http(s) URL naming a host, without credentials."""
    if len(url) > MAX_URL:
        raise MarshmallowError(f"must be at most {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise MarshmallowError("must be ASCII without spaces (percent-encode the path, punycode the host)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise MarshmallowError("must be an http or https URL")
    if not parts.hostname:
        raise MarshmallowError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise MarshmallowError("must not carry credentials; deliveries are signed with the secret instead")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise MarshmallowError("has an invalid port") from None


class SubscriptionSchema(Base):
    url = StrictString(required=True, validate=check_url)
    event_types = fields.List(StrictString(validate=validate.OneOf(EVENT_TYPES)), load_default=list)
    secret = StrictString(required=True, validate=validate.Length(min=16, max=200))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> NewSubscription:
        data["event_types"] = list(dict.fromkeys(data["event_types"]))
        return NewSubscription(**data)


SUBSCRIPTION_SCHEMA = SubscriptionSchema()


def event_id_arg(text: str) -> int:
    """An event id in a path; anything that cannot be one is not found."""
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_BIGINT:
        raise NotFound(f"no event {text!r}", field="event_id")
    return int(text)


@bp.post("/webhooks")
@requires("admin")
def create_webhook() -> Response:
    body = json_body()
    cmd: NewSubscription = load(SUBSCRIPTION_SCHEMA, body)
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(webhooks.create_subscription(conn, cmd, actor=actor, now=now), created=True)

    return execute(operation, body)


@bp.get("/webhooks")
@requires("admin")
def list_webhooks() -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response({"subscriptions": webhooks.list_subscriptions(conn)})


@bp.get("/webhooks/<subscription_id>")
@requires("admin")
def get_webhook(subscription_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(webhooks.subscription_view(conn, subscription_id))


@bp.delete("/webhooks/<subscription_id>")
@requires("admin")
def deactivate_webhook(subscription_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine) as conn:
        view = webhooks.deactivate(conn, subscription_id, actor=g.api_key.name, now=rt.now())
    return json_response(view)


@bp.get("/webhooks/<subscription_id>/deliveries")
@requires("admin")
def list_deliveries(subscription_id: str) -> Response:
    status = request.args.get("status") or None
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(DELIVERY_STATUSES)}")
    limit = int_arg("limit", 50, 1, MAX_DELIVERIES_PAGE) or 50
    cursor = int_arg("cursor", None, 1, MAX_BIGINT)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        page = webhooks.deliveries(conn, subscription_id, status=status, limit=limit, before=cursor)
    return json_response(page)


@bp.post("/webhooks/<subscription_id>/deliveries/<event_id>/redeliver")
@requires("admin")
def redeliver(subscription_id: str, event_id: str) -> Response:
    number = event_id_arg(event_id)
    actor = g.api_key.name

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(webhooks.redeliver(conn, subscription_id, number, actor=actor, now=now))

    return execute(operation, None)
