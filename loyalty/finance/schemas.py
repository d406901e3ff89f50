"""Finance commands as the API gives them, validated."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, post_load, validate

from loyalty.finance.recognition import PeriodFigures
from loyalty.validation import Base, StrictInteger, StrictString

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
