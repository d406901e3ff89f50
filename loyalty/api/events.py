"""The event feed, and webhook subscriptions with their deliveries."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import Response, g
from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, cursor_arg, execute, int_arg, json_body, json_response, query_arg, requires, runtime
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
#: A deliveries cursor is an event id, below 10**18 (the ids are bigints; no feed will hold that many).
CURSOR_DIGITS = 18


@bp.get("/events")
@requires("read")
def get_events() -> Response:
    limit = int_arg("limit", 100, 1, MAX_FEED_PAGE)
    types = event_types_arg()
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.feed(conn, after=query_arg("after"), limit=limit, types=types))


def event_types_arg() -> list[str]:
    """``types=a,b``: event types to keep, comma-separated without spaces; left out means all."""
    raw = query_arg("types")
    if raw is None:
        return []
    types = raw.split(",")
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValidationError.one(
            "types", f"unknown event type {', '.join(map(repr, unknown))}; the types are {', '.join(EVENT_TYPES)}"
        )
    return types


#: A webhook URL, as ``openapi.yaml`` states it: http or https, a host name or IPv4 address (no
#: credentials, no IPv6 literal), an optional port from 1 to 65535, then printable ASCII.
WEBHOOK_URL = re.compile(
    r"^https?://[A-Za-z0-9._-]+"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
    r"([/?#][!-~]*)?$"
)


def check_url(url: str) -> None:
    """An absolute http(s) URL naming a host, without credentials (:data:`WEBHOOK_URL`)."""
    if len(url) > MAX_URL:
        raise MarshmallowError(f"must be at most {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise MarshmallowError("must be ASCII without spaces (percent-encode the path, punycode the host)")
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep:
        raise MarshmallowError("must be an http or https URL")
    if re.fullmatch(WEBHOOK_URL, url) is None:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            raise MarshmallowError("must not carry credentials; deliveries are signed with the secret instead")
        raise MarshmallowError("must name a host (letters, digits, '.', '-', '_') and at most a port from 1 to 65535")


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
    box = webhooks.secret_sealer(runtime().settings.secret_key)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(webhooks.create_subscription(conn, cmd, box=box, actor=actor, now=now), created=True)

    # A retry is recognised by a keyed digest of the secret, so the stored key reveals nothing of it.
    return execute(operation, {**body, "secret": box.digest("idempotency", cmd.secret)})


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
    status = query_arg("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError.one("status", f"must be one of {', '.join(DELIVERY_STATUSES)}")
    limit = int_arg("limit", 50, 1, MAX_DELIVERIES_PAGE)
    cursor = cursor_arg("cursor", CURSOR_DIGITS)
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
