"""The JSON API (``/v1``): authentication, idempotency, errors as problem+json.

Views are thin: they parse the request into a command, open one transaction,
call one service, and turn the result into JSON. What they share is in
:mod:`loyalty.api.base`.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from loyalty.api import (  # noqa: F401  (registers the views)
    adjustments,
    analytics,
    apikeys,
    catalogue,
    events,
    finance,
    jobs,
    members,
    ops,
    partners,
    profiles,
    programmes,
    ratelimit,
    reconciliations,
    redemptions,
    reference,
    tiers,
    transactions,
)
from loyalty.api.base import bp, json_response, problem
from loyalty.auth.service import KeyCache
from loyalty.errors import LoyaltyError, PayloadTooLarge
from loyalty.runtime import Runtime

log = logging.getLogger(__name__)


class TransactionIdConverter(BaseConverter):
    """A transaction id in a path: any segment but ``batch``, which is ``POST /v1/transactions/batch``
    (and so no transaction's id), so that path offers POST alone."""

    regex = r"(?!batch(?:/|$))[^/]+"


def init_app(app: Flask) -> None:
    rt: Runtime = app.extensions["loyalty"]
    app.extensions["loyalty_keys"] = KeyCache(rt.engine, rt.settings.api_key_cache_seconds)
    app.url_map.converters["transaction_id"] = TransactionIdConverter
    app.register_blueprint(bp)
    ops.init_app(app)
    ratelimit.init_app(app, bp)

    @app.errorhandler(LoyaltyError)
    def _loyalty_error(err: LoyaltyError) -> Response:
        return problem(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        if isinstance(err, RequestEntityTooLarge):
            return problem(PayloadTooLarge(f"the body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes", field="body"))
        code = (err.name or "error").lower().replace(" ", "_")
        exc = LoyaltyError(err.description or err.name)
        exc.status, exc.code, exc.title = err.code or 500, code, err.name
        response = problem(exc)
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            # RFC 9110 section 15.5.6: a 405 says which methods the resource does support.
            response.headers["Allow"] = ", ".join(sorted(err.valid_methods))
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        if ops.unreachable(err):
            return ops.database_away(err)
        log.exception("unhandled error on %s %s", request.method, request.path)
        exc = LoyaltyError("the server failed to handle this request; it has been logged")
        exc.status, exc.code, exc.title = 500, "internal_error", "Internal server error"
        return problem(exc)

    reference.init_app(app)

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})
