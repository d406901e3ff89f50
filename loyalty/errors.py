"""The service's error hierarchy. Each error maps to one RFC 7807 problem."""

from __future__ import annotations

from typing import Any


class LoyaltyError(Exception):
    """Base of every error the service raises on purpose.

    ``code`` is the machine-readable problem type; ``status`` the HTTP status
    an entry point should answer with.
    """

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


class ValidationError(LoyaltyError):
    """The request is well-formed JSON but a field is wrong.

    ``errors`` maps each bad field's dotted path to its messages.
    """

    status = 422
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        first = next(iter(errors))
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        super().__init__(detail, field=first, errors=[{"field": k, "messages": v} for k, v in errors.items()])

    @classmethod
    def one(cls, field: str, message: str) -> ValidationError:
        return cls({field: [message]})


class MalformedRequest(LoyaltyError):
    status = 400
    code = "malformed_request"
    title = "Malformed request"


class UnsupportedMediaType(LoyaltyError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class PayloadTooLarge(LoyaltyError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class Unauthorized(LoyaltyError):
    status = 401
    code = "unauthorized"
    title = "Missing or invalid API key"


class Forbidden(LoyaltyError):
    status = 403
    code = "forbidden"
    title = "API key lacks the required scope"


class NotFound(LoyaltyError):
    status = 404
    code = "not_found"
    title = "Not found"


class MemberNotFound(NotFound):
    """A member named in a path does not exist."""

    code = "member_not_found"
    title = "Unknown member"


class UnknownMember(LoyaltyError):
    """A member named in a request body does not exist."""

    status = 422
    code = "unknown_member"
    title = "Unknown member"


class IdempotencyConflict(LoyaltyError):
    """The same key was used before with a different request body."""

    status = 409
    code = "idempotency_conflict"
    title = "Key reused with a different request"


class Conflict(LoyaltyError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InsufficientPoints(LoyaltyError):
    status = 422
    code = "insufficient_points"
    title = "Not enough points"


class HoldNotPending(Conflict):
    code = "hold_not_pending"
    title = "Hold already captured or voided"


class RuleDocumentError(LoyaltyError):
    status = 422
    code = "invalid_rule_document"
    title = "Invalid rule document"


class PeriodClosed(Conflict):
    """An entry would carry a posting date inside a closed period."""

    code = "period_closed"
    title = "The period is closed"


class RequestLineTooLong(LoyaltyError):
    """The request line (method, path and query) is past the server's limit. The server answers
    it (``gunicorn.conf.py``) before the application sees the request."""

    status = 414
    code = "request_line_too_long"
    title = "Request line too long"


class RequestHeadersTooLarge(LoyaltyError):
    """A header, or the number of headers, is past the server's limits; answered by the server."""

    status = 431
    code = "request_headers_too_large"
    title = "Request headers too large"


class FourEyes(LoyaltyError):
    """The principal deciding a manual adjustment or a tier override request is the one who requested it."""

    status = 403
    code = "four_eyes"
    title = "A second person must decide"


class AdjustmentNotPending(Conflict):
    """A manual adjustment was already approved or rejected."""

    code = "adjustment_not_pending"
    title = "Adjustment already decided"


class OverrideRequestNotPending(Conflict):
    """A tier override request was already approved or rejected."""

    code = "override_request_not_pending"
    title = "Override request already decided"


class DatabaseUnavailable(LoyaltyError):
    """The database cannot be reached now (down, restarting, a connection cut): nothing was
    written; the same request may be sent again (with ``Retry-After``)."""

    status = 503
    code = "database_unavailable"
    title = "Database unavailable"


class NotReady(LoyaltyError):
    """The database answers, but its schema is not the one this release needs (``/readyz``)."""

    status = 503
    code = "not_ready"
    title = "Not ready"


class RateLimited(LoyaltyError):
    """The API key sent more requests of this class than its limit allows (``Retry-After``)."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"
