"""Per-key rate limits by route class, with Flask-Limiter.

Each operation belongs to one class: ``admin`` (it needs the ``admin`` or ``finance`` scope),
``reads`` (any other GET), ``redemption`` (a write needing ``redeem``) or ``accrual`` (every
other write: transactions, refunds, enrolments, profiles). A key's limit for a class is its own
(``api_keys.rate_limits``), else the service's (``LOYALTY_RATE_LIMITS``); with neither, the class
is not limited for it. Every operation of a class shares one budget per key (Flask-Limiter's
shared limit, scoped by class; the key's id identifies the caller). Requests without a valid key
are not counted: they are refused as 401 before doing any work.

The counters live in Redis when ``LOYALTY_REDIS_URL`` is set, so a limit holds across gunicorn's
workers and across nodes; otherwise in each process's memory (a limit then holds per worker). If
Redis cannot be reached, requests are let through, not refused (``swallow_errors``), and the
failure is logged.

Past the limit the answer is a 429 ``/problems/rate_limited`` with ``Retry-After`` and the
``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` headers (seconds), which every answer to a
limited request carries.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import HeaderNames, Limiter, RateLimitExceeded

from loyalty.api.base import authenticated, problem, runtime
from loyalty.config import UNLIMITED, Settings
from loyalty.errors import RateLimited


def route_class(endpoint: str) -> str:
    view = current_app.view_functions.get(endpoint)
    scopes: frozenset[str] = getattr(view, "required_scopes", frozenset())
    if scopes & {"admin", "finance"}:
        return "admin"
    if request.method in ("GET", "HEAD"):
        return "reads"
    if "redeem" in scopes:
        return "redemption"
    return "accrual"


def limit_for_request() -> str:
    """The limit of the request's key for the request's class; empty: not limited."""
    endpoint = request.endpoint or ""
    view = current_app.view_functions.get(endpoint)
    if not hasattr(view, "required_scopes"):
        return ""
    key = authenticated()
    if key is None:
        return ""
    klass = route_class(endpoint)
    limit = key.rate_limits.get(klass) or runtime().settings.rate_limits.get(klass, "")
    return "" if limit == UNLIMITED else limit


def caller() -> str:
    key = authenticated()
    return key.id if key is not None else "anonymous"


def init_app(app: Flask, bp: Blueprint) -> None:
    settings: Settings = app.extensions["loyalty"].settings
    limiter = Limiter(
        caller,
        storage_uri=settings.redis_url or "memory://",
        strategy="fixed-window",
        headers_enabled=True,
        header_name_mapping={
            HeaderNames.LIMIT: "RateLimit-Limit",
            HeaderNames.REMAINING: "RateLimit-Remaining",
            HeaderNames.RESET: "RateLimit-Reset",
            HeaderNames.RETRY_AFTER: "Retry-After",
        },
        swallow_errors=True,
        key_prefix="loyalty",
    )

    @app.after_request
    def _headers_in_seconds(response: Response) -> Response:
        # Flask-Limiter writes the reset as a moment (epoch seconds), and a Retry-After on every
        # answer; the RateLimit fields count the seconds left, and only a refusal says to retry.
        # Registered before Flask-Limiter's own, so it runs after it.
        reset = response.headers.get("RateLimit-Reset")
        if reset is not None and reset.isdigit():
            response.headers["RateLimit-Reset"] = str(max(0, int(reset) - int(time.time())))
            if response.status_code == 429:
                response.headers["Retry-After"] = str(max(1, int(response.headers["RateLimit-Reset"])))
            elif response.status_code != 503:
                del response.headers["Retry-After"]
        return response

    limiter.shared_limit(limit_for_request, scope=route_class)(bp)
    # A request no limit applies to (no limits configured, or none for its key and class) skips
    # Flask-Limiter's work altogether.
    limiter.request_filter(lambda: not limit_for_request())
    limiter.init_app(app)
    app.extensions["loyalty_limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def _limited(err: RateLimitExceeded) -> Response:
        return problem(
            RateLimited(
                f"past this API key's limit of {err.limit.limit} for {route_class(request.endpoint or '')} requests",
                field="Authorization",
            )
        )
