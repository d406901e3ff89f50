"""The event feed."""

from __future__ import annotations

from flask import Response, request

from loyalty.api import bp, int_arg, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.events import service
from loyalty.events.models import EVENT_TYPES

MAX_FEED_PAGE = 500


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
