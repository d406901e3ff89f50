"""Validation shared by every edge that takes input (the API, the batch files): marshmallow
fields that refuse what JSON would coerce, and :func:`load`, which turns a failure into a
:class:`~loyalty.errors.ValidationError` naming every bad field.

Each domain package keeps the schemas of its own commands (``accrual.schemas``,
``members.schemas``); entry points use them, never the reverse.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from marshmallow import ValidationError as MarshmallowError

from loyalty.errors import ValidationError

#: How far in the future a timestamp may be, for clock skew between systems.
CLOCK_SKEW = dt.timedelta(minutes=5)

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


class StrictDate(fields.Date):
    """A calendar date written ``YYYY-MM-DD``, and no other ISO 8601 form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.date:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


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
