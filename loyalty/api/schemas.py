"""Request schemas: marshmallow turns JSON into the plain commands services take."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, fields, post_load, validate, validates
from marshmallow import ValidationError as MarshmallowError

from loyalty.accrual.models import TRANSACTION_TYPES
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.errors import ValidationError
from loyalty.members.profiles import CHANNELS, PRODUCTS, RISK_PROFILES, ProfileUpdate
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


#: Largest assets or profit contribution accepted, in fen (10^15 fen = 10 trillion CNY).
MAX_PROFILE_AMOUNT = 10**15
MAX_PRODUCTS = 20
EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)


class StrictDate(fields.Date):
    """A calendar date written ``YYYY-MM-DD``, and no other ISO 8601 form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.date:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def _no_identifying_numbers(value: str) -> None:
    if re.search(r"\d{7}", value):
        raise MarshmallowError("must not hold a phone, account or ID number (seven or more digits in a row)")


#: Occupation and region: short labels or codes, never a way in for personal data.
PROFILE_TEXT = validate.And(
    validate.Length(min=1, max=64),
    validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters"),
    validate.Regexp(r"\S", error="must not be blank"),
    _no_identifying_numbers,
)


def _known_products(value: list[str]) -> None:
    unknown = [p for p in value if p not in PRODUCTS]
    if unknown:
        raise MarshmallowError(
            f"unknown product {', '.join(repr(p) for p in unknown)}; products are {', '.join(PRODUCTS)}"
        )
    repeated = sorted(p for p, n in Counter(value).items() if n > 1)
    if repeated:
        raise MarshmallowError(f"lists {', '.join(repr(p) for p in repeated)} more than once")


class ProfileSchema(Base):
    """A profile update: every field optional; ``null`` clears a field.

    ``today`` is the programme's local date: neither date may be after it."""

    aum = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=MAX_PROFILE_AMOUNT))
    profit_contribution = StrictInteger(
        allow_none=True, validate=validate.Range(min=-MAX_PROFILE_AMOUNT, max=MAX_PROFILE_AMOUNT)
    )
    products_held = fields.List(
        StrictString(), allow_none=True, validate=[validate.Length(max=MAX_PRODUCTS), _known_products]
    )
    birth_date = StrictDate(allow_none=True, validate=validate.Range(min=EARLIEST_BIRTH_DATE))
    occupation = StrictString(allow_none=True, validate=PROFILE_TEXT)
    region = StrictString(allow_none=True, validate=PROFILE_TEXT)
    preferred_channel = StrictString(allow_none=True, validate=validate.OneOf(CHANNELS))
    risk_profile = StrictString(allow_none=True, validate=validate.OneOf(RISK_PROFILES))
    as_of = StrictDate()

    def __init__(self, *, today: dt.date, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.today = today

    @validates("as_of", "birth_date")
    def not_after_today(self, value: dt.date | None, **_: Any) -> None:
        if value is not None and value > self.today:
            raise MarshmallowError(f"is after today ({self.today.isoformat()})")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ProfileUpdate:
        as_of = data.pop("as_of", None)
        if data.get("products_held") is not None:
            data["products_held"] = tuple(sorted(data["products_held"]))
        return ProfileUpdate(changes=data, as_of=as_of)


def load_profile(data: Any, today: dt.date) -> ProfileUpdate:
    """Validate a profile update; ``today`` is the programme's local date."""
    cmd: ProfileUpdate = load(_profile_schema(today), data)
    return cmd


@lru_cache(maxsize=4)
def _profile_schema(today: dt.date) -> ProfileSchema:
    return ProfileSchema(today=today)


__all__ = ["ReversalCommand", "load", "load_transaction", "load_profile", "check_not_future"]
