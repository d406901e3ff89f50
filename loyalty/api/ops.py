"""What operators need of every request and of the process: request ids, one JSON log line per
request, metrics, health and readiness, and a 503 (not a 500) while the database is away.

See docs/operations.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, g, request
from sqlalchemy.engine import Engine

from loyalty import logs
from loyalty.api import metrics
from loyalty.api.base import json_response, problem, runtime
from loyalty.errors import DatabaseUnavailable, NotReady

access_log = logging.getLogger("loyalty.access")

#: A request id a client may choose: short, and safe to echo into headers and log lines.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Seconds a client is asked to wait before trying again while the database is away.
RETRY_AFTER_SECONDS = 5


def init_app(app: Flask) -> None:
    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(lambda _exc: logs.set_request_id(None))

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        rt = runtime()
        try:
            at_head = migrations_at_head(rt.engine)
        except sa.exc.SQLAlchemyError:
            return unavailable(DatabaseUnavailable("the database cannot be reached"))
        if not at_head:
            return unavailable(NotReady("the database's schema is not the one this release needs"))
        return json_response({"status": "ready"})

    @app.get("/metrics")
    def prometheus() -> Response:
        rt = runtime()
        return Response(metrics.scrape(rt.engine, rt.now()), mimetype="text/plain", content_type=CONTENT_TYPE)


#: The Prometheus text format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the database is away (down, restarting, the connection cut, the pool
    exhausted), as opposed to a statement it refused (a missing column is a 500, not a 503)."""
    if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, (sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True
    if not isinstance(err, sa.exc.OperationalError):
        return False
    code = getattr(err.orig, "pgcode", None)
    if code is not None:
        # PostgreSQL: connection exceptions (08xxx), and the server shutting down or starting (57P0x).
        return bool(code.startswith("08") or code.startswith("57P"))
    text = str(err.orig).lower()
    # psycopg2 without a code: it could not connect, or lost the connection; SQLite: the file is locked.
    return any(word in text for word in ("connection", "server closed", "could not connect", "database is locked"))


def database_away(err: BaseException) -> Response:
    """The answer to a request the database's absence stopped: 503 with ``Retry-After``."""
    logging.getLogger(__name__).warning("database unavailable: %s", type(err).__name__)
    return unavailable(DatabaseUnavailable("the database cannot be reached; nothing was written, try again shortly"))


def unavailable(err: DatabaseUnavailable | NotReady) -> Response:
    response = problem(err)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    # Alembic is imported here, not with the app: it takes a while, and workers boot without it.
    from alembic.script import ScriptDirectory

    from loyalty.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads())


def migrations_at_head(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return frozenset(current) == head_revisions()


def begin() -> None:
    g.started = time.perf_counter()
    sent = request.headers.get("X-Request-Id", "")
    g.request_id = (
        sent
        if CLIENT_REQUEST_ID.fullmatch(sent)
        else hashlib.sha256(f"{time.time_ns()}:{id(request)}".encode()).hexdigest()[:32]
    )
    logs.set_request_id(g.request_id)


def finish(response: Response) -> Response:
    rid = g.get("request_id")
    if rid is None:  # a request refused before begin() ran (none is, today)
        return response
    response.headers["X-Request-Id"] = rid
    took = time.perf_counter() - g.started
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    rt = runtime()
    metrics.REQUEST_SECONDS.labels(route, request.method, str(response.status_code)).observe(took)
    if response.mimetype == "application/problem+json":
        metrics.REFUSALS.labels(g.get("problem_type", "unknown"), str(response.status_code)).inc()
    elif response.status_code == 201 and not response.headers.get("Idempotent-Replayed"):
        count_bookings(request.endpoint, response)
    metrics.observe_pool(rt.engine)
    key = g.get("api_key")
    fields: dict[str, Any] = {
        "request_id": rid,
        "method": request.method,
        "route": route,
        "status": response.status_code,
        "duration_ms": round(took * 1000, 2),
        "key": key.name if key is not None else None,
        "member": member_hash(rt.settings.secret_key),
    }
    access_log.info("%s %s %s", request.method, route, response.status_code, extra={"fields": fields})
    return response


def member_hash(secret: str) -> str | None:
    """The member a request is about, as a keyed hash: lines of one member can be matched without
    the log holding the id (HMAC-SHA256 under ``LOYALTY_SECRET_KEY``, 16 hex digits)."""
    member_id = (request.view_args or {}).get("member_id")
    if member_id is None:
        member_id = g.get("body_member_id")  # set by json_body() from the body it parsed
    if not isinstance(member_id, str):
        return None
    return hmac.new(secret.encode(), member_id.encode(), hashlib.sha256).hexdigest()[:16]


def note_tier(member_id: str, tier: str | None) -> None:
    """Remember the member's tier for the accrual metrics, as the booking read it (no statement of
    its own: the hot path's statement count is pinned by tests/test_statement_counts.py)."""
    g.setdefault("booked_tiers", {})[member_id] = tier or "unknown"


def count_bookings(endpoint: str | None, response: Response) -> None:
    """Accruals and redemptions, counted from the answer the API gives (see :mod:`metrics`)."""
    body: Any = response.get_json(silent=True)
    if endpoint == "v1.post_transaction":
        booked = [body]
    elif endpoint == "v1.post_batch":
        booked = [item["result"] for item in body["results"] if item["status"] == 201]
    elif endpoint == "v1.post_redemption":
        metrics.REDEMPTIONS.labels(body["benefit"]["kind"], body["status"]).inc()
        return
    else:
        return
    tiers: dict[str, str] = g.get("booked_tiers", {})
    for result in booked:
        tier = tiers.get(result["member_id"], "unknown")
        metrics.ACCRUALS.labels(tier).inc()
        for award in result["awards"]:
            metrics.POINTS.labels(award["rule_id"], tier).inc(award["points"])
