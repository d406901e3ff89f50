"""Programme documents: validated into immutable values, dumped back unchanged.

A programme is a versioned set of rules with the moment it takes effect.
:func:`load_programme` checks a document against the catalogue and raises
:class:`RuleError` with the JSON path of the first bad field and why.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules.catalogue import CAPS, EVENTS, OPERATORS, ROUNDING, TYPES, VARIABLES, Variable

if TYPE_CHECKING:
    from rules.evaluate import Compiled
    from rules.tiers import Ladder, Lifecycle

# \Z, not $: "$" also matches before a trailing newline, which let "2026.1\n" through.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
DEFAULT_TIMEZONE = "Asia/Shanghai"


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


@dataclass(frozen=True)
class Action:
    kind: str  # "per_amount", "fixed", "multiplier"
    points: int = 0
    per_fen: int = 0
    rounding: str = "floor"
    applies_to: tuple[str, ...] = ()
    factor: Decimal | None = None
    by_tier: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True)
class Caps:
    per_transaction: int | None = None
    per_day: int | None = None
    per_month: int | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    event: str
    reason: str
    action: Action
    conditions: Condition = field(default_factory=lambda: Condition("all"))
    funding_source: str = "bank"
    qualifying: bool = True
    priority: int = 100
    group: str | None = None
    caps: Caps = field(default_factory=Caps)
    description: str = ""


@functools.cache
def default_tiers() -> tuple[Ladder, Lifecycle]:
    """The shipped ladder and lifecycle, for documents that do not define their own."""
    import json
    from importlib import resources

    from rules.tiers import load_ladder, load_lifecycle

    doc = json.loads(resources.files("rules").joinpath("default_programme.json").read_text("utf-8"))
    ladder = load_ladder(doc["tiers"])
    return ladder, load_lifecycle(doc["lifecycle"], ladder)


@dataclass(frozen=True)
class Programme:
    version: str
    effective_from: dt.datetime
    expiry_months: int
    rules: tuple[Rule, ...]
    timezone: str = DEFAULT_TIMEZONE
    caps: Caps = field(default_factory=Caps)
    description: str = ""
    #: the tier ladder and lifecycle stages in force with this version
    ladder: Ladder = field(default_factory=lambda: default_tiers()[0])
    lifecycle: Lifecycle = field(default_factory=lambda: default_tiers()[1])

    @property
    def funding_sources(self) -> set[str]:
        return {r.funding_source for r in self.rules}

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def compiled(self) -> Compiled:
        """The programme with its conditions compiled; made once, on first use."""
        from rules.evaluate import Compiled

        return Compiled(self)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


# ---- loading -------------------------------------------------------------------------------------------------


def _get(
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
        raise RuleError(f"{path}.{key}", f"must be {_kind_name(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise RuleError(f"{path}.{key}", f"must be {_kind_name(kinds)}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _no_extra(doc: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in doc:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown field; expected one of {', '.join(sorted(allowed))}")


def _non_negative(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(path, "must be an integer")
    if value < 0:
        raise RuleError(path, "must not be negative")
    return value


def _positive(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(path, "must be an integer")
    if value <= 0:
        raise RuleError(path, "must be positive")
    return value


def _decimal(value: Any, path: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise RuleError(path, 'must be a decimal written as a string, e.g. "1.5" (floats are inexact)')
    if not isinstance(value, (str, int)):
        raise RuleError(path, "must be a decimal string")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RuleError(path, f"{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise RuleError(path, "must be finite")
    if number <= 0:
        raise RuleError(path, "must be greater than 0")
    if number < 1:
        raise RuleError(path, "must be at least 1 (a multiplier adds points; it never takes them away)")
    if number > 100:
        raise RuleError(path, "must be at most 100")
    return number


def _caps(doc: Any, path: str, allowed: tuple[str, ...]) -> Caps:
    if doc is None:
        return Caps()
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    _no_extra(doc, set(allowed), path)
    return Caps(**{k: _non_negative(v, f"{path}.{k}") for k, v in doc.items() if v is not None})


#: Text formats of the date-like types; they compare correctly as strings.
PATTERNS = {
    "date": (r"\d{4}-\d{2}-\d{2}", "must be a date YYYY-MM-DD"),
    "time": (r"([01]\d|2[0-3]):[0-5]\d", "must be a time HH:MM"),
    "month_day": (r"(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", "must be a month and day MM-DD"),
}


def _typed_value(var_type: str, value: Any, path: str) -> Any:
    """Check a literal against a variable's type; dates and times stay strings (they compare as text)."""
    if var_type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuleError(path, "must be an integer")
    elif var_type == "boolean":
        if not isinstance(value, bool):
            raise RuleError(path, "must be true or false")
    elif var_type in ("string", "string_list"):
        if not isinstance(value, str):
            raise RuleError(path, "must be a string")
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


def _condition(
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
            return Condition("not", children=(_condition(doc["not"], f"{path}.not", **inner),))
        if not isinstance(doc[key], list):
            raise RuleError(f"{path}.{key}", "must be a list of conditions")
        return Condition(
            key, children=tuple(_condition(c, f"{path}.{key}[{i}]", **inner) for i, c in enumerate(doc[key]))
        )
    _no_extra(doc, {"var", "op", "value"}, path)
    var = _get(doc, "var", path, str)
    if var not in variables:
        raise RuleError(f"{path}.var", f"unknown variable {var!r}")
    op = _get(doc, "op", path, str)
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
        value: Any = _typed_value(vtype, raw, vpath)
    elif operator.value == "list":
        if not isinstance(raw, list) or not raw:
            raise RuleError(vpath, "must be a non-empty list")
        value = tuple(_typed_value(vtype, v, f"{vpath}[{i}]") for i, v in enumerate(raw))
    elif operator.value == "pair":
        if not isinstance(raw, list) or len(raw) != 2:
            raise RuleError(vpath, "must be a list [low, high]")
        low, high = (_typed_value(vtype, v, f"{vpath}[{i}]") for i, v in enumerate(raw))
        if low > high:
            raise RuleError(vpath, "low must not be above high")
        value = (low, high)
    elif operator.value == "positive_integer":
        value = _positive(raw, vpath)
    elif operator.value == "boolean":
        if not isinstance(raw, bool):
            raise RuleError(vpath, "must be true or false")
        value = raw
    else:  # "string"
        value = _typed_value("string", raw, vpath)
    return Condition("test", var=var, op=op, value=value)


def _action(doc: Any, path: str) -> Action:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    kind = _get(doc, "kind", path, str)
    rounding = _get(doc, "rounding", path, str, required=False, default="floor")
    if rounding not in ROUNDING:
        raise RuleError(f"{path}.rounding", f"must be one of {', '.join(ROUNDING)}")
    if kind == "per_amount":
        _no_extra(doc, {"kind", "points", "per_fen", "rounding"}, path)
        return Action(
            kind,
            points=_positive(doc.get("points"), f"{path}.points"),
            per_fen=_positive(doc.get("per_fen"), f"{path}.per_fen"),
            rounding=rounding,
        )
    if kind == "fixed":
        _no_extra(doc, {"kind", "points"}, path)
        return Action(kind, points=_positive(doc.get("points"), f"{path}.points"))
    if kind == "multiplier":
        _no_extra(doc, {"kind", "applies_to", "factor", "by_tier", "rounding"}, path)
        targets = _get(doc, "applies_to", path, list)
        if not targets or not all(isinstance(t, str) for t in targets):
            raise RuleError(f"{path}.applies_to", "must be a non-empty list of rule ids")
        for j, target in enumerate(targets):
            if target in targets[:j]:  # it would be multiplied twice
                raise RuleError(f"{path}.applies_to[{j}]", f"{target!r} is listed twice")
        has_factor, has_tiers = doc.get("factor") is not None, doc.get("by_tier") is not None
        if has_factor == has_tiers:
            raise RuleError(path, "a multiplier needs exactly one of factor and by_tier")
        factor = _decimal(doc["factor"], f"{path}.factor") if has_factor else None
        by_tier: tuple[tuple[str, Decimal], ...] = ()
        if has_tiers:
            tiers = _get(doc, "by_tier", path, dict)
            if not tiers:
                raise RuleError(f"{path}.by_tier", "must name at least one tier")
            by_tier = tuple(sorted((str(k), _decimal(v, f"{path}.by_tier.{k}")) for k, v in tiers.items()))
        return Action(kind, applies_to=tuple(targets), factor=factor, by_tier=by_tier, rounding=rounding)
    raise RuleError(f"{path}.kind", f"unknown action {kind!r}; expected per_amount, fixed or multiplier")


RULE_FIELDS = {
    "id",
    "event",
    "reason",
    "action",
    "conditions",
    "funding_source",
    "qualifying",
    "priority",
    "group",
    "caps",
    "description",
}


def _rule(doc: Any, path: str) -> Rule:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    _no_extra(doc, RULE_FIELDS, path)
    rule_id = _get(doc, "id", path, str)
    if not ID_RE.match(rule_id):
        raise RuleError(f"{path}.id", "must be 1-64 lower-case letters, digits, - or _")
    event = _get(doc, "event", path, str)
    if event not in EVENTS:
        raise RuleError(f"{path}.event", f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
    reason = _get(doc, "reason", path, str)
    if not reason.strip():
        raise RuleError(f"{path}.reason", "must not be empty")
    funding = _get(doc, "funding_source", path, str, required=False, default="bank")
    if not ID_RE.match(funding):
        raise RuleError(f"{path}.funding_source", "must be 1-64 lower-case letters, digits, - or _")
    group = _get(doc, "group", path, str, required=False)
    if group is not None and not ID_RE.match(group):
        raise RuleError(f"{path}.group", "must be 1-64 lower-case letters, digits, - or _")
    priority = _get(doc, "priority", path, int, required=False, default=100)
    return Rule(
        id=rule_id,
        event=event,
        reason=reason,
        action=_action(doc.get("action"), f"{path}.action"),
        conditions=_condition(doc.get("conditions", {"all": []}), f"{path}.conditions"),
        funding_source=funding,
        qualifying=_get(doc, "qualifying", path, bool),
        priority=priority,
        group=group,
        caps=_caps(doc.get("caps"), f"{path}.caps", tuple(CAPS)),
        description=_get(doc, "description", path, str, required=False, default=""),
    )


def _effective_from(value: Any, zone: ZoneInfo) -> dt.datetime:
    if not isinstance(value, str):
        raise RuleError("$.effective_from", "must be an ISO date or date-time string")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), zone).astimezone(dt.UTC)
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RuleError("$.effective_from", f"{value!r} is not an ISO date or date-time") from None
    if moment.tzinfo is None:
        raise RuleError("$.effective_from", "a date-time needs an offset, e.g. 2026-11-01T00:00:00+08:00")
    return moment.astimezone(dt.UTC)


PROGRAMME_FIELDS = {
    "version",
    "effective_from",
    "timezone",
    "expiry_months",
    "caps",
    "rules",
    "description",
    "tiers",
    "lifecycle",
}


def load_programme(doc: Any) -> Programme:
    """Validate a programme document and return it as a :class:`Programme`."""
    if not isinstance(doc, dict):
        raise RuleError("$", "a programme must be an object")
    _no_extra(doc, PROGRAMME_FIELDS, "$")
    version = _get(doc, "version", "$", str)
    if not VERSION_RE.match(version):
        raise RuleError("$.version", "must be 1-32 letters, digits, '.', '_' or '-'")
    timezone = _get(doc, "timezone", "$", str, required=False, default=DEFAULT_TIMEZONE)
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleError("$.timezone", f"unknown time zone {timezone!r}") from None
    effective_from = _effective_from(doc.get("effective_from"), zone)
    expiry_months = _positive(doc.get("expiry_months"), "$.expiry_months")
    raw_rules = _get(doc, "rules", "$", list)
    rules = tuple(_rule(r, f"$.rules[{i}]") for i, r in enumerate(raw_rules))
    _check_whole(rules)
    from rules.tiers import load_ladder, load_lifecycle

    ladder = load_ladder(doc["tiers"]) if doc.get("tiers") is not None else default_tiers()[0]
    lifecycle = load_lifecycle(doc["lifecycle"], ladder) if doc.get("lifecycle") is not None else default_tiers()[1]
    _check_tier_names(rules, ladder.codes)
    return Programme(
        ladder=ladder,
        lifecycle=lifecycle,
        version=version,
        effective_from=effective_from,
        expiry_months=expiry_months,
        rules=rules,
        timezone=timezone,
        caps=_caps(doc.get("caps"), "$.caps", ("per_day", "per_month")),
        description=_get(doc, "description", "$", str, required=False, default=""),
    )


def _check_tier_names(rules: tuple[Rule, ...], tiers: tuple[str, ...]) -> None:
    """Rules may only name tiers the ladder has."""
    for i, r in enumerate(rules):
        for code, _factor in r.action.by_tier:
            if code not in tiers:
                raise RuleError(f"$.rules[{i}].action.by_tier.{code}", f"no tier {code!r} in the ladder")


def _check_whole(rules: tuple[Rule, ...]) -> None:
    """Checks across rules: unique ids, multiplier targets, orderable exclusive groups."""
    index = {}
    for i, r in enumerate(rules):
        if r.id in index:
            raise RuleError(f"$.rules[{i}].id", f"duplicate rule id {r.id!r}")
        index[r.id] = i
    for i, r in enumerate(rules):
        if r.action.kind != "multiplier":
            continue
        for j, target in enumerate(r.action.applies_to):
            where = f"$.rules[{i}].action.applies_to[{j}]"
            if target not in index:
                raise RuleError(where, f"no rule {target!r} in this programme")
            t = rules[index[target]]
            if t.action.kind == "multiplier":
                raise RuleError(where, f"{target!r} is a multiplier; multipliers apply to earning rules only")
            if t.event != r.event:
                raise RuleError(where, f"{target!r} responds to {t.event!r}, this rule to {r.event!r}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rules):
        if r.group is not None:
            groups.setdefault(r.group, []).append(i)
    for name, members in groups.items():
        first = rules[members[0]]
        seen: dict[int, int] = {}
        for i in members:
            r = rules[i]
            if r.event != first.event:
                raise RuleError(f"$.rules[{i}].group", f"group {name!r} mixes events {first.event!r} and {r.event!r}")
            if (r.action.kind == "multiplier") != (first.action.kind == "multiplier"):
                raise RuleError(f"$.rules[{i}].group", f"group {name!r} mixes multipliers with earning rules")
            if r.priority in seen:
                raise RuleError(
                    f"$.rules[{i}].priority",
                    f"rules {rules[seen[r.priority]].id!r} and {r.id!r} of exclusive group {name!r} share priority "
                    f"{r.priority}, so a tie between them cannot be ordered",
                )
            seen[r.priority] = i


# ---- dumping -------------------------------------------------------------------------------------------------


def _dump_condition(c: Condition) -> dict[str, Any]:
    if c.kind == "test":
        value = list(c.value) if isinstance(c.value, tuple) else c.value
        return {"var": c.var, "op": c.op, "value": value}
    if c.kind == "not":
        return {"not": _dump_condition(c.children[0])}
    return {c.kind: [_dump_condition(ch) for ch in c.children]}


def _dump_caps(caps: Caps) -> dict[str, int] | None:
    out = {k: getattr(caps, k) for k in ("per_transaction", "per_day", "per_month") if getattr(caps, k) is not None}
    return out or None


def _dump_action(a: Action) -> dict[str, Any]:
    if a.kind == "per_amount":
        return {"kind": a.kind, "points": a.points, "per_fen": a.per_fen, "rounding": a.rounding}
    if a.kind == "fixed":
        return {"kind": a.kind, "points": a.points}
    out: dict[str, Any] = {"kind": a.kind, "applies_to": list(a.applies_to), "rounding": a.rounding}
    if a.factor is not None:
        out["factor"] = str(a.factor)
    else:
        out["by_tier"] = {t: str(f) for t, f in a.by_tier}
    return out


def dump_programme(p: Programme) -> dict[str, Any]:
    """The programme as a document that :func:`load_programme` turns back into an equal programme."""
    doc: dict[str, Any] = {
        "version": p.version,
        "effective_from": p.effective_from.isoformat().replace("+00:00", "Z"),
        "timezone": p.timezone,
        "expiry_months": p.expiry_months,
    }
    if p.description:
        doc["description"] = p.description
    if caps := _dump_caps(p.caps):
        doc["caps"] = caps
    rules = []
    for r in p.rules:
        rule: dict[str, Any] = {
            "id": r.id,
            "event": r.event,
            "reason": r.reason,
            "priority": r.priority,
            "conditions": _dump_condition(r.conditions),
            "action": _dump_action(r.action),
            "funding_source": r.funding_source,
            "qualifying": r.qualifying,
        }
        if r.group is not None:
            rule["group"] = r.group
        if r.description:
            rule["description"] = r.description
        if caps := _dump_caps(r.caps):
            rule["caps"] = caps
        rules.append(rule)
    doc["rules"] = rules
    from rules.tiers import dump_ladder, dump_lifecycle

    doc["tiers"] = dump_ladder(p.ladder)
    doc["lifecycle"] = dump_lifecycle(p.lifecycle)
    return doc


assert set(TYPES) >= {v.type for v in VARIABLES.values()}
