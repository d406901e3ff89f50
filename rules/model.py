"""Programme documents: validated into immutable values, dumped back unchanged.

A programme is a versioned set of rules with the moment it takes effect.
:func:`load_programme` checks a document against the catalogue and raises
:class:`RuleError` with the JSON path of the first bad field and why.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules.catalogue import CAPS, EVENTS, ROUNDING, TYPES, VARIABLES
from rules.conditions import (
    ID_RE,
    MAX_MONTHS,
    Condition,
    RuleError,
    dump_condition,
    get,
    integer,
    no_extra,
    non_negative,
    parse_condition,
    positive,
    text,
)
from rules.expiry import Expiry, dump_expiry, load_expiry
from rules.tiers import Ladder, Lifecycle, dump_ladder, dump_lifecycle, load_ladder, load_lifecycle

# \Z, not $: "$" also matches before a trailing newline, which let "2026.1\n" through.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
DEFAULT_TIMEZONE = "Asia/Shanghai"
#: A rule's reason is kept with every award it gives (point lots hold 200 characters).
MAX_REASON = 200


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

    doc = json.loads(resources.files("rules").joinpath("default_programme.json").read_text("utf-8"))
    ladder = load_ladder(doc["tiers"])
    return ladder, load_lifecycle(doc["lifecycle"], ladder)


@dataclass(frozen=True)
class Programme:
    version: str
    effective_from: dt.datetime
    rules: tuple[Rule, ...]
    #: when the points earned under it lapse, unless the member's tier says otherwise
    expiry: Expiry = field(default_factory=Expiry)
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

    #: values derived from the programme once and kept with it (its compiled form,
    #: :func:`rules.evaluate.compiled`); not part of its value
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def expiry_for(self, tier: str | None) -> Expiry:
        """The expiry policy for points a member of ``tier`` earns: the tier's own, else the programme's."""
        if tier is not None:
            override = self.ladder.expiry_overrides.get(tier)
            if override is not None:
                return override
        return self.expiry

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


# ---- loading -------------------------------------------------------------------------------------------------


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
    no_extra(doc, set(allowed), path)
    return Caps(**{k: non_negative(v, f"{path}.{k}") for k, v in doc.items() if v is not None})


def _action(doc: Any, path: str) -> Action:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    kind = get(doc, "kind", path, str)
    rounding = get(doc, "rounding", path, str, required=False, default="floor")
    if rounding not in ROUNDING:
        raise RuleError(f"{path}.rounding", f"must be one of {', '.join(ROUNDING)}")
    if kind == "per_amount":
        no_extra(doc, {"kind", "points", "per_fen", "rounding"}, path)
        return Action(
            kind,
            points=positive(doc.get("points"), f"{path}.points"),
            per_fen=positive(doc.get("per_fen"), f"{path}.per_fen"),
            rounding=rounding,
        )
    if kind == "fixed":
        no_extra(doc, {"kind", "points"}, path)
        return Action(kind, points=positive(doc.get("points"), f"{path}.points"))
    if kind == "multiplier":
        no_extra(doc, {"kind", "applies_to", "factor", "by_tier", "rounding"}, path)
        targets = get(doc, "applies_to", path, list)
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
            tiers = get(doc, "by_tier", path, dict)
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
    no_extra(doc, RULE_FIELDS, path)
    rule_id = get(doc, "id", path, str)
    if not ID_RE.match(rule_id):
        raise RuleError(f"{path}.id", "must be 1-64 lower-case letters, digits, - or _")
    event = get(doc, "event", path, str)
    if event not in EVENTS:
        raise RuleError(f"{path}.event", f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
    reason = get(doc, "reason", path, str)
    if not reason.strip():
        raise RuleError(f"{path}.reason", "must not be empty")
    text(reason, f"{path}.reason", MAX_REASON)
    funding = get(doc, "funding_source", path, str, required=False, default="bank")
    if not ID_RE.match(funding):
        raise RuleError(f"{path}.funding_source", "must be 1-64 lower-case letters, digits, - or _")
    group = get(doc, "group", path, str, required=False)
    if group is not None and not ID_RE.match(group):
        raise RuleError(f"{path}.group", "must be 1-64 lower-case letters, digits, - or _")
    priority = integer(get(doc, "priority", path, int, required=False, default=100), f"{path}.priority")
    return Rule(
        id=rule_id,
        event=event,
        reason=reason,
        action=_action(doc.get("action"), f"{path}.action"),
        conditions=parse_condition(doc.get("conditions", {"all": []}), f"{path}.conditions"),
        funding_source=funding,
        qualifying=get(doc, "qualifying", path, bool),
        priority=priority,
        group=group,
        caps=_caps(doc.get("caps"), f"{path}.caps", tuple(CAPS)),
        description=get(doc, "description", path, str, required=False, default=""),
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
    "expiry",
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
    no_extra(doc, PROGRAMME_FIELDS, "$")
    version = get(doc, "version", "$", str)
    if not VERSION_RE.match(version):
        raise RuleError("$.version", "must be 1-32 letters, digits, '.', '_' or '-'")
    timezone = get(doc, "timezone", "$", str, required=False, default=DEFAULT_TIMEZONE)
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a folder of the time zone database ("Asia"), which the tzdata
        # package (installed beside python-dateutil) reports as IsADirectoryError.
        raise RuleError("$.timezone", f"unknown time zone {timezone!r}") from None
    effective_from = _effective_from(doc.get("effective_from"), zone)
    expiry = _expiry(doc)
    raw_rules = get(doc, "rules", "$", list)
    rules = tuple(_rule(r, f"$.rules[{i}]") for i, r in enumerate(raw_rules))
    _check_whole(rules)
    ladder = load_ladder(doc["tiers"]) if doc.get("tiers") is not None else default_tiers()[0]
    lifecycle = load_lifecycle(doc["lifecycle"], ladder) if doc.get("lifecycle") is not None else default_tiers()[1]
    _check_tier_names(rules, ladder.codes)
    return Programme(
        ladder=ladder,
        lifecycle=lifecycle,
        version=version,
        effective_from=effective_from,
        expiry=expiry,
        rules=rules,
        timezone=timezone,
        caps=_caps(doc.get("caps"), "$.caps", ("per_day", "per_month")),
        description=get(doc, "description", "$", str, required=False, default=""),
    )


def _expiry(doc: dict[str, Any]) -> Expiry:
    """``expiry`` (a policy), or the older ``expiry_months: N``, which means ``rolling`` N months."""
    if "expiry" in doc and "expiry_months" in doc:
        raise RuleError("$.expiry_months", "give either expiry or expiry_months (rolling months), not both")
    if "expiry_months" in doc:
        return Expiry("rolling", months=positive(doc["expiry_months"], "$.expiry_months", MAX_MONTHS))
    if "expiry" not in doc:
        raise RuleError("$.expiry", "is required: {\"policy\": \"rolling\", \"months\": 24}, end_of_year or never")
    return load_expiry(doc["expiry"], "$.expiry")


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
        "expiry": dump_expiry(p.expiry),
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
            "conditions": dump_condition(r.conditions),
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
    doc["tiers"] = dump_ladder(p.ladder)
    doc["lifecycle"] = dump_lifecycle(p.lifecycle)
    return doc


assert set(TYPES) >= {v.type for v in VARIABLES.values()}
