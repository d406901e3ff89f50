"""The member commands as the API and the monthly snapshot file give them, validated."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, post_load, validate, validates

from loyalty.members.profiles import CHANNELS, PRODUCTS, RISK_PROFILES, ProfileUpdate
from loyalty.members.service import Enrolment
from loyalty.validation import ID, Base, StrictDate, StrictInteger, StrictString, load


class EnrolmentSchema(Base):
    member_id = StrictString(required=True, validate=ID)
    birth_date = fields.Date(load_default=None, allow_none=True)
    enrolled_at = fields.AwareDateTime(load_default=None, allow_none=True)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Enrolment:
        return Enrolment(**data)


ENROLMENT_SCHEMA = EnrolmentSchema()


#: Largest assets or profit contribution accepted, in fen (10^15 fen = 10 trillion CNY).
MAX_PROFILE_AMOUNT = 10**15
MAX_PRODUCTS = 20
EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)


def no_identifying_numbers(value: str) -> None:
    if re.search(r"\d{7}", value):
        raise MarshmallowError("must not hold a phone, account or ID number (seven or more digits in a row)")


#: Occupation and region: short labels or codes, never a way in for personal data.
PROFILE_TEXT = validate.And(
    validate.Length(min=1, max=64),
    validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters"),
    validate.Regexp(r"\S", error="must not be blank"),
    no_identifying_numbers,
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
