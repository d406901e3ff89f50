"""Conditions, and the checks every part of a programme document is loaded with.

A condition is a test of one variable (``var op value``) or a group of
conditions (``all``, ``any``, ``not``). Earning rules test the catalogue's
variables; tier criteria test the members' metrics. Every check raises
:class:`RuleError` with the JSON path of the bad field.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from rules.catalogue import OPERATORS, VARIABLES, Variable

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
#: The largest magnitude of any integer in a document: the largest figure a rule compares
#: (assets of 10^15 fen), far above any points, cap or count a programme needs, and well
#: inside the 64 bits every stored number has.
MAX_INTEGER = 10**15
#: The longest period a document may name, in months and in days (a hundred years), so
#: date arithmetic on it stays inside the calendar.
MAX_MONTHS = 1200
MAX_DAYS = 36_600
#: The longest text a document may hold (a description; a rule's reason is shorter).
MAX_TEXT = 1000


class RuleError(ValueError):
    """A programme document is invalid; ``path`` points at the bad field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Condition:
    """``var op value``, or a group: ``all``/``any`` of children, or ``not`` one child."""

    kind: str  # "test", "all", "any", "not"
    var: str | None = None
    op: str | None = None
    value: Any = None
    children: tuple[Condition, ...] = ()


def get(
    doc: dict[str, Any],
    key: str,
    path: str,
    kind: type | tuple[type, ...],
    *,
    required: bool = True,
    default: Any = None,
) -> Any:
    if key not in doc or doc[key] is None:
        if required:
            raise RuleError(f"{path}.{key}", "is required")
        return default
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise RuleError(f"{path}.{key}", f"must be {kind_name(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise RuleError(f"{path}.{key}", f"must be {kind_name(kinds)}")
    if isinstance(value, str):
        text(value, f"{path}.{key}")
    return value


def text(value: str, path: str, maximum: int = MAX_TEXT) -> str:
    if len(value) > maximum:
        raise RuleError(path, f"must be at most {maximum:,} characters")
    return value


def kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def no_extra(doc: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in doc:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown field; expected one of {', '.join(sorted(allowed))}")


def whole(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(path, "must be an integer")
    return value


def integer(value: Any, path: str, maximum: int = MAX_INTEGER) -> int:
    """An integer from ``-maximum`` to ``maximum``."""
    number = whole(value, path)
    if abs(number) > maximum:
        raise RuleError(path, f"must be from {-maximum:,} to {maximum:,}")
    return number


def non_negative(value: Any, path: str, maximum: int = MAX_INTEGER) -> int:
    number = whole(value, path)
    if number < 0:
        raise RuleError(path, "must not be negative")
    if number > maximum:
        raise RuleError(path, f"must be at most {maximum:,}")
    return number


def positive(value: Any, path: str, maximum: int = MAX_INTEGER) -> int:
    number = whole(value, path)
    if number <= 0:
        raise RuleError(path, "must be positive")
    if number > maximum:
        raise RuleError(path, f"must be at most {maximum:,}")
    return number


#: Text formats of the date-like types; they compare correctly as strings.
PATTERNS = {
    "date": (r"\d{4}-\d{2}-\d{2}", "must be a date YYYY-MM-DD"),
    "time": (r"([01]\d|2[0-3]):[0-5]\d", "must be a time HH:MM"),
    "month_day": (r"(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", "must be a month and day MM-DD"),
}


def typed_value(var_type: str, value: Any, path: str) -> Any:
    """Check a literal against a variable's type; dates and times stay strings (they compare as text)."""
    if var_type == "integer":
        integer(value, path)
    elif var_type == "boolean":
        if not isinstance(value, bool):
            raise RuleError(path, "must be true or false")
    elif var_type in ("string", "string_list"):
        if not isinstance(value, str):
            raise RuleError(path, "must be a string")
        text(value, path)
    elif var_type in PATTERNS:
        pattern, message = PATTERNS[var_type]
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise RuleError(path, message)
        if var_type == "date":
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise RuleError(path, f"{value} is not a calendar date") from None
    return value


def parse_condition(
    doc: Any,
    path: str,
    *,
    variables: Mapping[str, Variable] = VARIABLES,
    operators: Collection[str] = tuple(OPERATORS),
    groups: Collection[str] = ("all", "any", "not"),
) -> Condition:
    """A condition over ``variables`` using ``operators`` and group kinds ``groups``."""
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    inner: dict[str, Any] = {"variables": variables, "operators": operators, "groups": groups}
    present = [k for k in ("all", "any", "not") if k in doc]
    for key in present:
        if key not in groups:
            raise RuleError(f"{path}.{key}", f"{key!r} is not allowed here; use {' or '.join(groups)}")
    if present:
        if len(doc) != 1:
            raise RuleError(path, "a group has exactly one key: all, any or not")
        key = present[0]
        if key == "not":
            return Condition("not", children=(parse_condition(doc["not"], f"{path}.not", **inner),))
        if not isinstance(doc[key], list):
            raise RuleError(f"{path}.{key}", "must be a list of conditions")
        return Condition(
            key, children=tuple(parse_condition(c, f"{path}.{key}[{i}]", **inner) for i, c in enumerate(doc[key]))
        )
    no_extra(doc, {"var", "op", "value"}, path)
    var = get(doc, "var", path, str)
    if var not in variables:
        raise RuleError(f"{path}.var", f"unknown variable {var!r}")
    op = get(doc, "op", path, str)
    if op not in operators:
        raise RuleError(f"{path}.op", f"unknown operator {op!r}")
    vtype = variables[var].type
    operator = OPERATORS[op]
    if vtype not in operator.types:
        raise RuleError(f"{path}.op", f"{op!r} does not apply to {var!r}, a {vtype}")
    if "value" not in doc:
        raise RuleError(f"{path}.value", "is required")
    raw, vpath = doc["value"], f"{path}.value"
    if operator.value == "scalar":
        value: Any = typed_value(vtype, raw, vpath)
    elif operator.value == "list":
        if not isinstance(raw, list) or not raw:
            raise RuleError(vpath, "must be a non-empty list")
        value = tuple(typed_value(vtype, v, f"{vpath}[{i}]") for i, v in enumerate(raw))
    elif operator.value == "pair":
        if not isinstance(raw, list) or len(raw) != 2:
            raise RuleError(vpath, "must be a list [low, high]")
        low, high = (typed_value(vtype, v, f"{vpath}[{i}]") for i, v in enumerate(raw))
        if low > high:
            raise RuleError(vpath, "low must not be above high")
        value = (low, high)
    elif operator.value == "positive_integer":
        value = positive(raw, vpath)
    elif operator.value == "boolean":
        if not isinstance(raw, bool):
            raise RuleError(vpath, "must be true or false")
        value = raw
    else:  # "string"
        value = typed_value("string", raw, vpath)
    return Condition("test", var=var, op=op, value=value)


def dump_condition(c: Condition) -> dict[str, Any]:
    if c.kind == "test":
        value = list(c.value) if isinstance(c.value, tuple) else c.value
        return {"var": c.var, "op": c.op, "value": value}
    if c.kind == "not":
        return {"not": dump_condition(c.children[0])}
    return {c.kind: [dump_condition(ch) for ch in c.children]}
