"""Finance commands as the API gives them, validated."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, post_load, validate

from loyalty.finance.models import SETTING_KINDS
from loyalty.finance.recognition import PeriodFigures
from loyalty.validation import Base, StrictDate, StrictInteger, StrictString

#: Largest amount of money or points a finance figure may hold (10^15 fen = 10 trillion CNY).
MAX_FIGURE = 10**15


class PeriodFiguresSchema(Base):
    label = StrictString(required=True, validate=validate.Length(min=1, max=32))
    cumulative_redeemed = StrictInteger(required=True, validate=validate.Range(min=0, max=MAX_FIGURE))
    expected_total = StrictInteger(required=True, validate=validate.Range(min=0, max=MAX_FIGURE))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> PeriodFigures:
        return PeriodFigures(**data)


class WhatIfSchema(Base):
    allocated_fen = StrictInteger(required=True, validate=validate.Range(min=0, max=MAX_FIGURE))
    periods = fields.List(fields.Nested(PeriodFiguresSchema), required=True, validate=validate.Length(min=1, max=240))


WHAT_IF_SCHEMA = WhatIfSchema()


class SettingSchema(Base):
    kind = StrictString(required=True, validate=validate.OneOf(SETTING_KINDS))
    funding_source = StrictString(
        required=True,
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9_-]{0,63}$", error="must be a funding source as rules name it"),
    )
    effective_from = StrictDate(required=True)
    #: checked by :func:`loyalty.finance.settings.parse_value`, which knows the kind's range
    value = fields.Raw(required=True)


SETTING_SCHEMA = SettingSchema()


class ReopenSchema(Base):
    reason = StrictString(required=True, validate=validate.Length(min=1, max=500))


REOPEN_SCHEMA = ReopenSchema()
