"""Evaluating a programme: which rules match an event, and how many points each gives.

Order of work for one event:

1. every rule of the event whose conditions match computes its points
   (``per_amount`` or ``fixed``, rounded as the rule says, floor by default),
   then its caps: per transaction, then what is left of its per-day and
   per-month caps after what the member already earned from it;
2. in each exclusive ``group`` only the best rule stays (most points, then
   lowest priority number, then id);
3. multipliers add ``(factor - 1) x points`` of each surviving rule they apply
   to, rounded per rule; their own caps and groups apply the same way;
4. the programme's per-day and per-month caps trim the awards, in priority order.

All arithmetic is on integers and ``Decimal``; there is no float anywhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from rules.model import Caps, Condition, Programme, Rule

Facts = Mapping[str, Any]


@dataclass(frozen=True)
class Award:
    """Points one rule gives for one event, and why."""

    rule_id: str
    points: int
    funding_source: str
    qualifying: bool
    reason: str
    programme_version: str = ""


@dataclass(frozen=True)
class Usage:
    """Points the member has already earned in the event's local day and month, by rule."""

    day: Mapping[str, int] = field(default_factory=dict)
    month: Mapping[str, int] = field(default_factory=dict)

    @property
    def day_total(self) -> int:
        return sum(self.day.values())

    @property
    def month_total(self) -> int:
        return sum(self.month.values())


NO_USAGE = Usage()


@dataclass
class Step:
    """One rule's part in an evaluation, for explanations."""

    rule_id: str
    matched: bool
    points: int = 0
    note: str = ""


def local_facts(occurred_at: dt.datetime, zone: dt.tzinfo) -> dict[str, Any]:
    """The calendar variables of a moment, in the programme's time zone."""
    local = occurred_at.astimezone(zone)
    return {
        "local_date": f"{local.year:04d}-{local.month:02d}-{local.day:02d}",
        "month_day": f"{local.month:02d}-{local.day:02d}",
        "weekday": local.isoweekday(),
        "local_time": f"{local.hour:02d}:{local.minute:02d}",
    }


LOCAL_VARIABLES = frozenset({"local_date", "month_day", "weekday", "local_time"})


def _variables(c: Condition) -> set[str]:
    if c.kind == "test":
        return {c.var} if c.var else set()
    return set().union(*(_variables(ch) for ch in c.children)) if c.children else set()


def _compile(c: Condition) -> Callable[[Facts], bool]:
    if c.kind == "all":
        parts = [_compile(ch) for ch in c.children]
        return lambda f: all(p(f) for p in parts)
    if c.kind == "any":
        parts = [_compile(ch) for ch in c.children]
        return lambda f: any(p(f) for p in parts)
    if c.kind == "not":
        inner = _compile(c.children[0])
        return lambda f: not inner(f)
    var: str = c.var or ""
    value = c.value
    match c.op:
        case "equals":
            return lambda f: f.get(var) == value
        case "not_equals":
            return lambda f: f.get(var) is not None and f.get(var) != value
        case "in":
            members = frozenset(value)
            return lambda f: f.get(var) in members
        case "not_in":
            members = frozenset(value)
            return lambda f: f.get(var) is not None and f.get(var) not in members
        case "gt":
            return lambda f: (x := f.get(var)) is not None and x > value
        case "gte":
            return lambda f: (x := f.get(var)) is not None and x >= value
        case "lt":
            return lambda f: (x := f.get(var)) is not None and x < value
        case "lte":
            return lambda f: (x := f.get(var)) is not None and x <= value
        case "between":
            low, high = value
            return lambda f: (x := f.get(var)) is not None and low <= x <= high
        case "multiple_of":
            return lambda f: (x := f.get(var)) is not None and x > 0 and x % value == 0
        case "contains":
            return lambda f: value in (f.get(var) or ())
        case "is_null":
            return lambda f: (f.get(var) is None) is value
    raise AssertionError(f"operator {c.op} passed validation but has no implementation")


def _round(value: Decimal, rounding: str) -> int:
    mode = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceil": ROUND_CEILING}[rounding]
    return int(value.to_integral_value(rounding=mode))


def _per_amount(amount: int, points: int, per: int, rounding: str) -> int:
    if amount <= 0:
        return 0
    if rounding == "floor":
        return amount * points // per
    if rounding == "ceil":
        return -(-amount * points // per)
    return (2 * amount * points + per) // (2 * per)


def _capped(rule: Rule, points: int, usage: Usage) -> tuple[int, str]:
    caps: Caps = rule.caps
    note = ""
    if caps.per_transaction is not None and points > caps.per_transaction:
        points, note = caps.per_transaction, f"capped at {caps.per_transaction} per transaction"
    if caps.per_day is not None:
        left = max(0, caps.per_day - usage.day.get(rule.id, 0))
        if points > left:
            points, note = left, f"capped by {caps.per_day} per day ({left} left)"
    if caps.per_month is not None:
        left = max(0, caps.per_month - usage.month.get(rule.id, 0))
        if points > left:
            points, note = left, f"capped by {caps.per_month} per month ({left} left)"
    return points, note


class Compiled:
    """A programme with its conditions compiled, ready to evaluate many events."""

    def __init__(self, programme: Programme) -> None:
        self.programme = programme
        self.zone = programme.zone
        self.rules = {r.id: r for r in programme.rules}
        self.by_event: dict[str, list[tuple[Rule, Callable[[Facts], bool]]]] = {}
        ordered = sorted(programme.rules, key=lambda r: (r.priority, r.id))
        for rule in ordered:
            self.by_event.setdefault(rule.event, []).append((rule, _compile(rule.conditions)))
        used = set().union(*(_variables(r.conditions) for r in programme.rules)) if programme.rules else set()
        self.needs_local = bool(used & LOCAL_VARIABLES)
        #: whether evaluations need the member's per-day and per-month usage (for caps)
        self.needs_usage = any(
            c.per_day is not None or c.per_month is not None
            for c in (programme.caps, *(r.caps for r in programme.rules))
        )

    def facts(self, facts: Facts) -> Facts:
        """``facts`` with the calendar variables added, when the programme uses them."""
        occurred_at = facts.get("occurred_at")
        if isinstance(occurred_at, dt.datetime) and occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        if not self.needs_local or not isinstance(occurred_at, dt.datetime):
            return facts
        return {**facts, **local_facts(occurred_at, self.zone)}

    def evaluate(
        self, event: str, facts: Facts, usage: Usage | None = None, trace: list[Step] | None = None
    ) -> list[Award]:
        usage = usage or NO_USAGE
        f = self.facts(facts)
        earned: dict[str, int] = {}
        multipliers: list[Rule] = []
        for rule, matches in self.by_event.get(event, ()):
            if not matches(f):
                if trace is not None:
                    trace.append(Step(rule.id, False, note="conditions not met"))
                continue
            if rule.action.kind == "multiplier":
                multipliers.append(rule)
                continue
            a = rule.action
            raw = (
                a.points
                if a.kind == "fixed"
                else _per_amount(int(f.get("amount") or 0), a.points, a.per_fen, a.rounding)
            )
            points, note = _capped(rule, raw, usage)
            earned[rule.id] = points
            if trace is not None:
                trace.append(Step(rule.id, True, points, note))
        self._exclusive(earned, trace)
        extra: dict[str, int] = {}
        for rule in multipliers:
            a = rule.action
            factor = a.factor if a.factor is not None else dict(a.by_tier).get(str(f.get("tier")))
            if factor is None:
                if trace is not None:
                    trace.append(Step(rule.id, True, 0, f"no factor for tier {f.get('tier')!r}"))
                continue
            raw = sum(_round(Decimal(earned[t]) * (factor - 1), a.rounding) for t in a.applies_to if earned.get(t))
            points, note = _capped(rule, raw, usage)
            extra[rule.id] = points
            if trace is not None:
                trace.append(Step(rule.id, True, points, note or f"{factor}x"))
        self._exclusive(extra, trace)
        earned.update(extra)
        return self._programme_caps(earned, usage, trace)

    def _exclusive(self, points: dict[str, int], trace: list[Step] | None) -> None:
        best: dict[str, str] = {}
        for rule_id in list(points):
            rule = self.rules[rule_id]
            if rule.group is None:
                continue
            current = best.get(rule.group)
            if current is None:
                best[rule.group] = rule_id
                continue
            other = self.rules[current]
            if (points[rule_id], -rule.priority) > (points[current], -other.priority):
                loser, best[rule.group] = current, rule_id
            else:
                loser = rule_id
            del points[loser]
            if trace is not None:
                trace.append(Step(loser, True, 0, f"a better rule of exclusive group {rule.group!r} applies"))

    def _programme_caps(self, points: dict[str, int], usage: Usage, trace: list[Step] | None) -> list[Award]:
        caps = self.programme.caps
        day_left = None if caps.per_day is None else max(0, caps.per_day - usage.day_total)
        month_left = None if caps.per_month is None else max(0, caps.per_month - usage.month_total)
        awards = []
        version = self.programme.version
        kept: dict[str, int] = {}
        for rule_id in sorted(points, key=lambda r: (self.rules[r].priority, r)):
            n = points[rule_id]
            for left in (day_left, month_left):
                if left is not None and n > left:
                    if trace is not None:
                        trace.append(Step(rule_id, True, left, "trimmed by the programme's daily or monthly cap"))
                    n = left
            if n <= 0:
                continue
            if day_left is not None:
                day_left -= n
            if month_left is not None:
                month_left -= n
            kept[rule_id] = n
        for rule_id in sorted(kept):  # a stable order for answers and replays
            rule = self.rules[rule_id]
            awards.append(Award(rule_id, kept[rule_id], rule.funding_source, rule.qualifying, rule.reason, version))
        return awards


def evaluate(
    programme: Programme, event: str, facts: Facts, usage: Usage | None = None, trace: list[Step] | None = None
) -> list[Award]:
    """The awards ``programme`` gives for ``event``; zero-point awards are dropped."""
    return compiled(programme).evaluate(event, facts, usage, trace)


def compiled(programme: Programme) -> Compiled:
    """The programme with its conditions compiled; made once, on first use, and kept with it."""
    made: Compiled | None = programme.memo.get("compiled")
    if made is None:
        made = programme.memo["compiled"] = Compiled(programme)
    return made
