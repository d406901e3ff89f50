"""Request schemas: marshmallow turns JSON into the plain commands services take."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import RAISE, Schema, fields, post_load, validate
from marshmallow import ValidationError as MarshmallowError

from loyalty.accrual.models import TRANSACTION_TYPES
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.errors import ValidationError
from loyalty.members.service import Enrolment

#: Largest amount accepted, in minor units (10^12 fen = 10 billion CNY).
MAX_AMOUNT = 10**12
#: How far in the future a timestamp may be, for clock skew between systems.
CLOCK_SKEW = dt.timedelta(minutes=5)
CURRENCIES = ("CNY",)

ID = validate.And(
    validate.Length(min=1, max=64),
    validate.Regexp(r"^[A-Za-z0-9._:\-]+$", error="may contain only letters, digits and . _ : -"),
)


class StrictInteger(fields.Integer):
    """An integer that refuses booleans, floats and numeric strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictString(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value


class Base(Schema):
    class Meta:
        unknown = RAISE


class EnrolmentSchema(Base):
    member_id = StrictString(required=True, validate=ID)
    birth_date = fields.Date(load_default=None, allow_none=True)
    enrolled_at = fields.AwareDateTime(load_default=None, allow_none=True)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Enrolment:
        return Enrolment(**data)


class TransactionSchema(Base):
    transaction_id = StrictString(required=True, validate=ID)
    member_id = StrictString(required=True, validate=ID)
    type = StrictString(required=True, validate=validate.OneOf(TRANSACTION_TYPES))
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))
    currency = StrictString(required=True, validate=validate.OneOf(CURRENCIES))
    occurred_at = fields.AwareDateTime(required=True)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    mcc = StrictString(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^\d{4}$", error="must be four digits")
    )
    merchant = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> TransactionCommand:
        data["occurred_at"] = data["occurred_at"].astimezone(dt.UTC)
        return TransactionCommand(**data)


class SimulatedTransactionSchema(Base):
    """A transaction to simulate: the fields rules can test, none of the bookkeeping."""

    type = StrictString(required=True, validate=validate.OneOf(TRANSACTION_TYPES))
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))
    currency = StrictString(load_default="CNY", validate=validate.OneOf(CURRENCIES))
    occurred_at = fields.AwareDateTime(load_default=None)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    mcc = StrictString(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^\d{4}$", error="must be four digits")
    )
    merchant = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))

    @post_load
    def utc(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["occurred_at"] is None:
            del data["occurred_at"]
        else:
            data["occurred_at"] = data["occurred_at"].astimezone(dt.UTC)
        return data


class ReversalSchema(Base):
    reversal_id = StrictString(required=True, validate=ID)
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))


class BatchSchema(Base):
    transactions = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=1000))


def load(schema: Schema, data: Any) -> Any:
    """Validate ``data``; a failure becomes a 422 naming every bad field."""
    if not isinstance(data, dict):
        raise ValidationError.one("body", "must be a JSON object")
    try:
        return schema.load(data)
    except MarshmallowError as exc:
        raise ValidationError(_flatten(exc.messages)) from None


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, path))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = list(messages)
    else:
        out[prefix or "body"] = [str(messages)]
    return out


def check_not_future(value: dt.datetime | None, field: str, now: dt.datetime) -> None:
    if value is not None and value > now + CLOCK_SKEW:
        raise ValidationError.one(field, "is more than 5 minutes in the future")


def load_transaction(data: Any, now: dt.datetime) -> TransactionCommand:
    cmd: TransactionCommand = load(TRANSACTION_SCHEMA, data)
    check_not_future(cmd.occurred_at, "occurred_at", now)
    return cmd


TRANSACTION_SCHEMA = TransactionSchema()
SIMULATED_TRANSACTION_SCHEMA = SimulatedTransactionSchema()
ENROLMENT_SCHEMA = EnrolmentSchema()
REVERSAL_SCHEMA = ReversalSchema()
BATCH_SCHEMA = BatchSchema()

__all__ = ["ReversalCommand", "load", "load_transaction", "check_not_future"]
