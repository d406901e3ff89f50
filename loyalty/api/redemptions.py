"""Redemptions, and the benefits a member can get.

Voucher codes are secrets (:mod:`loyalty.catalogue.codes`): a redemption's
answer shows them decrypted, but what is stored for an ``Idempotency-Key``
replay is the answer without them, and they are added from the pool each
time the answer is given. They are shown only to a key with the ``redeem``
scope, the channel acting for the member; a ``read`` key sees how many there
are (``voucher_count``) and ``voucher_codes: null``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Response, g
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.api.base import bp, execute, json_body, json_response, requires, runtime
from loyalty.db import transaction
from loyalty.errors import LoyaltyError
from loyalty.idempotency import Result
from loyalty.redemption import service
from loyalty.redemption.service import PHONE_NUMBER, RedemptionCommand
from loyalty.validation import ID, Base, StrictInteger, StrictString, load

#: Most units of a benefit one redemption may ask for.
MAX_QUANTITY = 10


class DeliverySchema(Base):
    phone_number = StrictString(
        validate=validate.Regexp(PHONE_NUMBER, error="must be a mainland China mobile number of 11 digits")
    )
    account_ref = StrictString(
        validate=validate.And(
            validate.Length(min=1, max=128),
            validate.Regexp(r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$", error="must be text without control characters"),
        )
    )


class DeliveryField(fields.Nested):
    """The ``delivery`` object; anything but an object is refused at the field itself."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, partial: Any = None, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, partial, **kwargs)


class RedemptionSchema(Base):
    redemption_id = StrictString(required=True, validate=ID)
    member_id = StrictString(required=True, validate=ID)
    benefit_code = StrictString(required=True, validate=ID)
    quantity = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_QUANTITY))
    delivery = DeliveryField(DeliverySchema, load_default=None, allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RedemptionCommand:
        data["delivery"] = data["delivery"] or None
        return RedemptionCommand(**data)


REDEMPTION_SCHEMA = RedemptionSchema()


def with_codes(response: Response, codes: list[str] | None) -> Response:
    """``response`` with the redemption's voucher codes added; ``None``: look them up (a stored answer)."""
    body = json.loads(response.get_data())
    if codes is None:
        rt = runtime()
        with transaction(rt.engine, readonly=True) as conn:
            codes = service.issued_codes(conn, rt.settings.secret_key, body)
    body["voucher_count"] = len(codes)
    body["voucher_codes"] = codes
    replayed = response.headers.get("Idempotent-Replayed")
    return json_response(body, response.status_code, {"Idempotent-Replayed": replayed} if replayed else None)


@bp.post("/redemptions")
@requires("redeem")
def post_redemption() -> Response:
    body = json_body()
    cmd: RedemptionCommand = load(REDEMPTION_SCHEMA, body)
    rt = runtime()
    revealed: list[list[str]] = []

    def operation(conn: Connection, now: dt.datetime) -> Result:
        done = service.redeem(
            conn,
            cmd,
            zone=rt.programmes.at(now).zone,
            now=now,
            deadline_seconds=rt.settings.fulfilment_deadline_seconds,
            secret_key=rt.settings.secret_key,
        )
        revealed.append(done.codes)
        return done.result

    def with_revealed(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "voucher_count": len(revealed[0]), "voucher_codes": revealed[0]}

    try:
        response = execute(operation, body, answer=with_revealed)
    except LoyaltyError as err:
        # The refusal rolled the request back; what was turned away is kept on its own.
        with transaction(rt.engine) as conn:
            service.record_refusal(conn, cmd, err.code, now=rt.now())
        raise
    # Not run: an Idempotency-Key's stored answer, which holds no codes; they are looked up.
    return response if revealed else with_codes(response, None)


@bp.get("/redemptions/<redemption_id>")
@requires("redeem", "read")
def get_redemption(redemption_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        member_id = service.find_redemption_member(conn, redemption_id)
        view = service.redemption_view(conn, member_id, redemption_id, now=rt.now())
        if "redeem" in g.api_key.scopes:
            codes = service.issued_codes(conn, rt.settings.secret_key, view)
            view["voucher_count"], view["voucher_codes"] = len(codes), codes
        else:
            # Codes go only to the channel acting for the member; a reader learns that they exist.
            view["voucher_count"], view["voucher_codes"] = service.issued_count(conn, view), None
    return json_response(view)


@bp.post("/redemptions/<redemption_id>/cancel")
@requires("redeem")
def cancel_redemption(redemption_id: str) -> Response:
    # A cancelled redemption's codes are back in the pool: it has none.
    return with_codes(execute(lambda conn, now: service.cancel(conn, redemption_id, now=now), None), [])


@bp.get("/members/<member_id>/benefits")
@requires("read")
def get_member_benefits(member_id: str) -> Response:
    rt = runtime()
    now = rt.now()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.member_benefits(conn, member_id, zone=rt.programmes.at(now).zone, now=now))
