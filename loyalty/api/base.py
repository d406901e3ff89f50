"""What every view of the API shares: the blueprint, authentication, request bodies,
idempotency keys, results as statuses and errors as problem+json."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, has_request_context, request
from sqlalchemy.engine import Connection
from werkzeug.exceptions import RequestEntityTooLarge

from loyalty import idempotency
from loyalty.auth.service import ApiKey
from loyalty.db import transaction
from loyalty.errors import (
    Forbidden,
    LoyaltyError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from loyalty.idempotency import Result, claim_key, request_hash
from loyalty.runtime import Runtime
from loyalty.validation import MAX_DEPTH, check_storable, json_number, nesting_depth, printable, text_fault

log = logging.getLogger(__name__)

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.url_value_preprocessor
def _no_nul_in_paths(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """No id, code or version holds NUL (no text column can store it): a path naming one is not found."""
    for name, value in (values or {}).items():
        if isinstance(value, str) and "\x00" in value:
            raise NotFound(f"no {name} with the NUL character (U+0000)", field=name)


PROBLEM_JSON = "application/problem+json"


def runtime() -> Runtime:
    return current_app.extensions["loyalty"]  # type: ignore[no-any-return]


def problem(err: LoyaltyError) -> Response:
    """``err`` as problem+json, carrying the request's id (``request_id``) as its ``X-Request-Id`` does."""
    body = err.problem()
    if has_request_context():
        g.problem_type = body["type"]
        if "request_id" in g:
            body["request_id"] = g.request_id
    return Response(encode(body), status=err.status, mimetype=PROBLEM_JSON)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(body), status=status, mimetype="application/json", headers=headers)


def encode(body: Any) -> bytes:
    """``body`` as UTF-8 JSON; text UTF-8 cannot encode (a lone surrogate echoed from a request)
    is written as a ``\\uXXXX`` escape rather than failing the answer."""
    text = json.dumps(body, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def json_body(*, storable: bool = True) -> Any:
    """The request's JSON body; refuses a wrong content type, an oversized body, text that is not
    UTF-8 JSON, nesting deeper than :data:`~loyalty.validation.MAX_DEPTH`, and, unless
    ``storable`` is false (the caller checks the parts itself), strings or numbers no database can
    store (:func:`~loyalty.validation.check_storable`)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json", field="Content-Type")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes", field="body"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}", field="body") from None
    # Measured before parsing: the parser recurses once per level.
    if nesting_depth(raw) > MAX_DEPTH:
        raise MalformedRequest(f"the body nests arrays and objects more than {MAX_DEPTH} deep", field="body")
    try:
        body = json.loads(text, parse_float=json_number)
    except ValueError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}", field="body") from None
    if storable:
        check_storable(body)
    if isinstance(body, dict) and isinstance(body.get("member_id"), str):
        g.body_member_id = body["member_id"]  # for the access log line (loyalty.api.ops), hashed there
    return body


@bp.before_request
def refuse_unstorable_parameters() -> None:
    """A path or query parameter holding a NUL (``%00``), which no query can carry to PostgreSQL:
    in the path it names nothing (404), in the query it is a bad parameter (422); named either way."""
    for name, value in (request.view_args or {}).items():
        fault = text_fault(value) if isinstance(value, str) else None
        if fault:
            raise NotFound(f"{name} {fault}; nothing has such a name", field=name)
    for name, value in request.args.items(multi=True):
        fault = text_fault(name) or text_fault(value)
        if fault:
            raise ValidationError.one(printable(name), fault)


def requires(*scopes: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Require an API key (``Authorization: Bearer <key>``) that has one of ``scopes``."""
    needed = " or ".join(repr(s) for s in scopes)

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            key = authenticated()
            if key is None:
                if not bearer_token():
                    raise Unauthorized("send an API key as 'Authorization: Bearer <key>'", field="Authorization")
                raise Unauthorized("the API key is unknown, expired or revoked", field="Authorization")
            if key.scopes.isdisjoint(scopes):
                raise Forbidden(f"this operation needs the {needed} scope", field="Authorization")
            g.api_key = key
            return view(*args, **kwargs)

        wrapper.required_scopes = frozenset(scopes)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticated() -> ApiKey | None:
    """The API key the request authenticates with, looked up once per request (the rate limiter
    asks before the view does)."""
    if "authenticated" not in g:
        token = bearer_token()
        g.authenticated = (
            current_app.extensions["loyalty_keys"].authenticate(token, runtime().now()) if token else None
        )
    return g.authenticated  # type: ignore[no-any-return]


def query_arg(name: str) -> str | None:
    """A query parameter, ``None`` when it is left out. One sent empty (``?status=``) is a 422
    naming it: an empty value is not taken to mean "absent", so a client's bug cannot widen a query."""
    raw = request.args.get(name)
    if raw == "":
        raise ValidationError.one(name, "must not be empty; leave the parameter out instead")
    if raw is not None and "\x00" in raw:
        raise ValidationError.one(name, "must not contain the NUL character (U+0000)")
    return raw


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; a bad one is a 422 naming it."""
    raw = query_arg(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw) or not low <= int(raw) <= high:
        raise ValidationError.one(name, f"must be an integer from {low} to {high}")
    return int(raw)


def cursor_arg(name: str, digits: int) -> int | None:
    """A keyset cursor: the ``next_cursor`` of a previous page, a positive integer of at most
    ``digits`` digits without leading zeros, exactly as ``openapi.yaml`` writes it."""
    raw = query_arg(name)
    if raw is None:
        return None
    if not re.fullmatch(rf"[1-9][0-9]{{0,{digits - 1}}}", raw):
        raise ValidationError.one(name, "is not a cursor this API returned; pass back a page's next_cursor")
    return int(raw)


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not re.fullmatch(r"[\x20-\x7e]{1,200}", key):
        raise ValidationError.one("Idempotency-Key", "must be 1 to 200 printable ASCII characters")
    return key


def key_scope() -> str:
    return f"request:{g.api_key.id}"


def request_digest(body: Any) -> str:
    return request_hash({"method": request.method, "path": request.path, "body": body})


def execute(
    operation: Callable[[Connection, dt.datetime], Result],
    body: Any,
    *,
    answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Response:
    """Run ``operation`` in one transaction, honouring an ``Idempotency-Key``.

    The key is claimed in the same transaction as the operation's writes and
    its response stored there too, so a retry either replays that response or,
    if the first attempt failed, runs again. ``answer`` adds to the response what
    the stored one leaves out (secrets such as voucher codes).
    """
    rt = runtime()
    key = idempotency_key()
    now = rt.now()
    with transaction(rt.engine) as conn:
        if key is not None:
            existing = claim_key(
                conn, key_scope(), key, request_digest(body), field="Idempotency-Key", member_id=None, now=now
            )
            if existing is not None:
                return replay(existing)
        result = operation(conn, now)
        if key is not None:
            idempotency.remember(conn, key_scope(), key, status_of(result), result.body)
    if answer is not None:
        result = Result(answer(result.body), created=result.created, replayed=result.replayed)
    return result_response(result)


def replay(record: Any) -> Response:
    return Response(
        record.response_body,
        status=record.status_code,
        mimetype="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def status_of(result: Result) -> int:
    """201 for an operation that made something, else 200."""
    return 201 if result.created else 200


def result_response(result: Result) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return json_response(result.body, status_of(result), headers)
