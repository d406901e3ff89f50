"""Validation shared by every edge that takes input (the API, the batch files): marshmallow
fields that refuse what JSON would coerce, and :func:`load`, which turns a failure into a
:class:`~loyalty.errors.ValidationError` naming every bad field; and the checks every JSON
body passes first, whatever it is for: :func:`nesting_depth` before it is parsed,
:func:`check_storable` after.

Each domain package keeps the schemas of its own commands (``accrual.schemas``,
``members.schemas``); entry points use them, never the reverse.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from decimal import Decimal
from itertools import accumulate
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


def json_number(literal: str) -> int | float:
    """A JSON number written with a fraction or an exponent (``json.loads``' ``parse_float``).

    JSON Schema counts ``5.0`` and ``5e2`` as integers, and so does the API: they become
    ``int``, read exactly (``Decimal``, not through a float). Any other stays a float, which
    every integer field refuses."""
    exact = Decimal(literal)
    # Past 10**18 no field takes it: it stays a float rather than becoming an int of any size.
    if exact.is_finite() and exact.adjusted() < 18 and exact == exact.to_integral_value():
        return int(exact)
    return float(literal)


class StrictInteger(fields.Integer):
    """An integer that refuses booleans, floats and numeric strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictString(fields.String):
    """A string, never a number or a boolean; without NUL, which no text column can store."""

    default_error_messages = {"nul": "must not contain the NUL character (U+0000)"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if "\x00" in value:
            raise self.make_error("nul")
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


#: How deep a request body may nest arrays and objects. The deepest request the API takes is a
#: programme document (11 levels in the default programme); this leaves room for condition
#: groups nested ten deep, and refuses a hostile body before a parser recurses into it.
MAX_DEPTH = 32
#: Most fields named in one refusal of a body's text, so a hostile body cannot make a huge answer.
MAX_NAMED = 20

# A JSON string, or an unterminated one to the end of the text; possessive, so never backtracking.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_OPEN_CLOSE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nesting_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, measured without parsing it.

    Strings are cut out, brackets become +1 and -1, and the deepest running sum is
    the depth: linear, and without recursion however deep the text goes."""
    steps = _STRING.sub(b"", raw).translate(_OPEN_CLOSE, _NOT_BRACKET)
    return max(accumulate(memoryview(steps).cast("b"), initial=0))


def check_storable(data: Any) -> None:
    """Refuse what no database column can hold, naming each place (``transactions[2].merchant``).

    A JSON string may escape a lone UTF-16 surrogate (``"\\ud800"``), which UTF-8 cannot encode,
    or a NUL (``"\\u0000"``), which PostgreSQL's text cannot hold; a number may be too large for
    a float (``1e400``, read as infinity) or be ``NaN``. Keys are checked as well as values, in
    document order, up to :data:`MAX_NAMED` places; the walk keeps one iterator per level, so it
    needs no recursion and no copy of a long list."""
    fault = _value_fault(data)
    if fault:
        raise ValidationError.one("body", fault)
    if not isinstance(data, (dict, list)):
        return
    errors: dict[str, list[str]] = {}
    stack = [("", _children(data))]
    while stack and len(errors) < MAX_NAMED:
        path, children = stack[-1]
        for step, value in children:
            key_fault = text_fault(step) if isinstance(step, str) else None
            if key_fault:
                errors.setdefault(_name(path, step), []).append(f"the field's name {key_fault}")
            if isinstance(value, (dict, list)):
                stack.append((_name(path, step), _children(value)))
                break
            fault = _value_fault(value)
            if fault:
                errors.setdefault(_name(path, step), []).append(fault)
            if len(errors) >= MAX_NAMED:
                break
        else:
            stack.pop()
    if errors:
        raise ValidationError(dict(list(errors.items())[:MAX_NAMED]))


def _children(node: dict[str, Any] | list[Any]) -> Iterator[tuple[str | int, Any]]:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


def _name(path: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{path}[{step}]"
    return f"{path}.{printable(step)}" if path else printable(step)


def _value_fault(value: Any) -> str | None:
    if isinstance(value, str):
        return text_fault(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    return None


def text_fault(text: str) -> str | None:
    """Why ``text`` cannot be stored, or ``None``."""
    if "\x00" in text:
        return "holds a NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"holds a lone UTF-16 surrogate ({printable(text[exc.start])}), which is not a character"
    return None


def printable(text: str) -> str:
    """``text`` with NULs and lone surrogates written as ``\\uXXXX`` escapes, so it can be shown."""
    if text.isascii() and "\x00" not in text:
        return text
    return "".join(f"\\u{ord(c):04x}" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def check_not_future(value: dt.datetime | None, field: str, now: dt.datetime) -> None:
    if value is not None and value > now + CLOCK_SKEW:
        raise ValidationError.one(field, "is more than 5 minutes in the future")
