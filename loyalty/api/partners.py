"""Partners' callbacks: ``POST /v1/partners/{partner}/callbacks``.

No API key: a callback is authenticated by its signature, made with the
partner's secret (see :mod:`loyalty.fulfilment.protocol`), and checked over
the raw body before anything else is read.
"""

from __future__ import annotations

from flask import Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from loyalty.api.base import bp, json_body, json_response, runtime
from loyalty.db import transaction
from loyalty.errors import NotFound, PayloadTooLarge, Unauthorized
from loyalty.fulfilment import callbacks, protocol


class PartnerNotFound(NotFound):
    code = "partner_not_found"
    title = "Unknown partner"


class BadSignature(Unauthorized):
    code = "bad_signature"
    title = "Missing or invalid partner signature"


@bp.post("/partners/<partner>/callbacks")
def partner_callback(partner: str) -> Response:
    rt = runtime()
    if partner not in rt.settings.partners:
        raise PartnerNotFound(f"no partner {partner!r}", field="partner")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes", field="body"
        ) from None
    refused = protocol.check_signature(
        rt.settings.partner_secret_for(partner),
        request.headers.get(protocol.PARTNER_TIMESTAMP),
        request.headers.get(protocol.PARTNER_SIGNATURE),
        raw,
        rt.now().timestamp(),
    )
    if refused is not None:
        raise BadSignature(refused, field=protocol.PARTNER_SIGNATURE)
    callback = callbacks.parse(json_body())
    with transaction(rt.engine) as conn:
        result = callbacks.apply(conn, partner, callback, now=rt.now())
    return json_response(result)
