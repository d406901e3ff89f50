"""Tiers and lifecycle stages, as data: the ladder a member climbs and the stages they pass through.

A ladder lists its tiers from the top down. Each tier but the last has
criteria over the member's *metrics* (value, behaviour, need); the last
tier is the floor and has none. A member qualifies for the first tier whose
criteria match. The same criteria are compiled to SQL for the quarterly
review (:mod:`loyalty.tiers.sql`), so both must mean exactly the same thing:
criteria are ``all``/``any`` groups of tests, without ``not``, and a test on
a missing value is false.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rules.catalogue import METRICS, TIER_OPERATORS
from rules.conditions import (
    ID_RE,
    MAX_DAYS,
    MAX_MONTHS,
    Condition,
    RuleError,
    dump_condition,
    get,
    no_extra,
    positive,
)
from rules.conditions import parse_condition as condition
from rules.expiry import Expiry, dump_expiry, load_expiry

#: Metrics measured in fen, shown in CNY in explanations.
MONEY = frozenset({"aum", "profit_contribution"})
LABELS = {
    "aum": "assets",
    "profit_contribution": "profit contribution",
    "qualifying_points": "qualifying points",
    "transactions_90d": "transactions in 90 days",
    "digital_share": "digital share",
    "products_held": "products held",
    "product_count": "products",
    "age": "age",
}

LIFECYCLE_STAGES = ("acquisition", "activation", "growth", "maturity", "decline", "win_back")


@dataclass(frozen=True)
class Tier:
    code: str
    name: str
    description: str = ""
    #: ``None`` for the floor tier, which everyone qualifies for
    criteria: Condition | None = None
    #: the expiry policy of points the tier's members earn, if not the programme's
    expiry: Expiry | None = None

    @property
    def alternatives(self) -> tuple[Condition, ...]:
        """The ways to qualify: the children of a top-level ``any``, else the criteria as a whole."""
        if self.criteria is None:
            return ()
        if self.criteria.kind == "any":
            return self.criteria.children
        return (self.criteria,)


@dataclass(frozen=True)
class Ladder:
    #: from the top tier down to the floor
    tiers: tuple[Tier, ...]
    #: months of qualifying points that count
    qualifying_months: int = 12
    #: days of transactions behind ``transactions_90d`` and ``digital_share``
    activity_days: int = 90
    digital_channels: tuple[str, ...] = ("app", "mini_program", "online", "wechat")

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(t.code for t in self.tiers)

    @cached_property
    def expiry_overrides(self) -> dict[str, Expiry]:
        """Tiers whose members' points follow their own expiry policy."""
        return {t.code: t.expiry for t in self.tiers if t.expiry is not None}

    @property
    def floor(self) -> str:
        return self.tiers[-1].code

    def rank(self, code: str | None) -> int:
        """0 for the floor, one more per step up; an unknown tier ranks as the floor."""
        for i, t in enumerate(self.tiers):
            if t.code == code:
                return len(self.tiers) - 1 - i
        return 0

    def at_rank(self, rank: int) -> Tier:
        return self.tiers[len(self.tiers) - 1 - max(0, min(rank, len(self.tiers) - 1))]

    def tier(self, code: str) -> Tier:
        for t in self.tiers:
            if t.code == code:
                return t
        raise KeyError(code)

    def qualify(self, metrics: Mapping[str, Any]) -> tuple[str, str]:
        """The first tier whose criteria the metrics meet, and which criterion they met."""
        for t in self.tiers:
            for alternative in t.alternatives:
                if matches(alternative, metrics):
                    return t.code, describe(alternative)
        return self.floor, "the floor tier"

    def progress(self, current: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """What the member needs for the tier above ``current``: each way to qualify, met or not, and the gap."""
        rank = self.rank(current)
        if rank >= len(self.tiers) - 1:
            return {"next_tier": None, "criteria": [], "missing": None}
        target = self.at_rank(rank + 1)
        criteria, gaps = [], []
        for alternative in target.alternatives:
            gap = shortfall(alternative, metrics)
            criteria.append({"criterion": describe(alternative), "met": not gap})
            if gap:
                gaps.append(" and ".join(gap))
        met = any(c["met"] for c in criteria)
        return {
            "next_tier": target.code,
            "criteria": criteria,
            "missing": None if met else "needs " + " or ".join(gaps),
        }


@dataclass(frozen=True)
class Lifecycle:
    """When a member is in which stage; see :func:`stage`."""

    activation_days: int = 90
    decline_months: int = 3
    churn_months: int = 6
    maturity_months: int = 12
    maturity_tiers: tuple[str, ...] = ("mass", "potential", "hnw")


@dataclass(frozen=True)
class StageBounds:
    """The instants a lifecycle decision compares against, for one as-of moment: the
    lifecycle's days and months counted back from it by the bank's calendar (the
    engine's :func:`loyalty.tiers.sql.stage_bounds` decides them)."""

    activation_since: dt.datetime
    decline_before: dt.datetime
    churn_before: dt.datetime
    maturity_before: dt.datetime


def stage(
    lifecycle: Lifecycle,
    *,
    first_transaction_at: dt.datetime | None,
    last_transaction_at: dt.datetime | None,
    tier: str,
    bounds: StageBounds,
) -> str:
    """The member's lifecycle stage at the moment ``bounds`` were taken for:

    - ``acquisition``: enrolled, no transaction yet;
    - ``win_back``: the last transaction is ``churn_months`` or more ago (churned);
    - ``decline``: the last transaction is ``decline_months`` or more ago;
    - ``activation``: the first transaction is less than ``activation_days`` ago;
    - ``maturity``: the first transaction is ``maturity_months`` or more ago and
      the tier is one of ``maturity_tiers``;
    - ``growth``: everyone else who is active.
    """
    if first_transaction_at is None or last_transaction_at is None:
        return "acquisition"
    b = bounds
    if last_transaction_at <= b.churn_before:
        return "win_back"
    if last_transaction_at <= b.decline_before:
        return "decline"
    if first_transaction_at > b.activation_since:
        return "activation"
    if first_transaction_at <= b.maturity_before and tier in lifecycle.maturity_tiers:
        return "maturity"
    return "growth"


# ---- criteria: evaluation and explanation ----------------------------------------------------------------------


def _test(c: Condition) -> Callable[[Any], bool]:
    value = c.value
    match c.op:
        case "equals":
            return lambda x: x == value
        case "not_equals":
            return lambda x: x != value
        case "in":
            return lambda x: x in value
        case "not_in":
            return lambda x: x not in value
        case "gt":
            return lambda x: x > value
        case "gte":
            return lambda x: x >= value
        case "lt":
            return lambda x: x < value
        case "lte":
            return lambda x: x <= value
        case "between":
            return lambda x: value[0] <= x <= value[1]
        case "contains":
            return lambda x: value in x
    raise AssertionError(f"operator {c.op} is not allowed in tier criteria")


def matches(c: Condition, metrics: Mapping[str, Any]) -> bool:
    if c.kind == "all":
        return all(matches(ch, metrics) for ch in c.children)
    if c.kind == "any":
        return any(matches(ch, metrics) for ch in c.children)
    x = metrics.get(c.var or "")
    return x is not None and _test(c)(x)


def _amount(var: str, value: Any) -> str:
    if var in MONEY:
        return f"{value // 100:,} CNY"
    if var == "digital_share":
        return f"{value}%"
    return f"{value:,}" if isinstance(value, int) else str(value)


SYMBOLS = {"equals": "=", "not_equals": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}


def describe(c: Condition) -> str:
    """A condition in words, e.g. ``assets ≥ 2,000,000 CNY``."""
    if c.kind in ("all", "any"):
        parts = [describe(ch) if ch.kind == "test" else f"({describe(ch)})" for ch in c.children]
        return (" and " if c.kind == "all" else " or ").join(parts) or "always"
    var, label = c.var or "", LABELS.get(c.var or "", c.var or "")
    if c.op in SYMBOLS:
        return f"{label} {SYMBOLS[c.op]} {_amount(var, c.value)}"
    if c.op == "between":
        return f"{label} {_amount(var, c.value[0])} to {_amount(var, c.value[1])}"
    if c.op in ("in", "not_in"):
        values = ", ".join(_amount(var, v) for v in c.value)
        return f"{label} {'in' if c.op == 'in' else 'not in'} {values}"
    return f"{label} include {c.value}"  # contains


def shortfall(c: Condition, metrics: Mapping[str, Any]) -> list[str]:
    """What is missing for ``c`` to hold: empty when it holds.

    For a threshold the gap is an amount ("12,000 more qualifying points");
    for anything else, the condition itself. ``any`` reports its closest
    alternative (fewest gaps)."""
    if matches(c, metrics):
        return []
    if c.kind == "all":
        return [gap for ch in c.children for gap in shortfall(ch, metrics)]
    if c.kind == "any":
        options = [shortfall(ch, metrics) for ch in c.children]
        return min(options, key=len) if options else []
    var, x = c.var or "", metrics.get(c.var or "")
    if c.op in ("gte", "gt") and isinstance(x, int) and not isinstance(x, bool) and var != "digital_share":
        gap = c.value - x + (1 if c.op == "gt" else 0)
        if var in MONEY:
            return [f"{-(-gap // 100):,} CNY more {LABELS[var]}"]
        return [f"{gap:,} more {LABELS.get(var, var)}"]
    return [describe(c)]


# ---- loading and dumping -----------------------------------------------------------------------------------------


def _tier(doc: Any, path: str, floor: bool) -> Tier:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    no_extra(doc, {"code", "name", "description", "criteria", "expiry"}, path)
    code = get(doc, "code", path, str)
    if not ID_RE.match(code):
        raise RuleError(f"{path}.code", "must be 1-64 lower-case letters, digits, - or _")
    criteria = None
    if floor:
        if doc.get("criteria") is not None:
            raise RuleError(f"{path}.criteria", "the last tier is the floor: everyone qualifies, so it has no criteria")
    else:
        criteria = condition(
            get(doc, "criteria", path, dict),
            f"{path}.criteria",
            variables=METRICS,
            operators=TIER_OPERATORS,
            groups=("all", "any"),
        )
        if criteria.kind != "test" and not criteria.children:
            raise RuleError(f"{path}.criteria", "must test at least one metric")
    return Tier(
        code=code,
        name=get(doc, "name", path, str),
        description=get(doc, "description", path, str, required=False, default=""),
        criteria=criteria,
        expiry=load_expiry(doc["expiry"], f"{path}.expiry") if doc.get("expiry") is not None else None,
    )


def load_ladder(doc: Any, path: str = "$.tiers") -> Ladder:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    no_extra(doc, {"levels", "qualifying_months", "activity_days", "digital_channels"}, path)
    levels = get(doc, "levels", path, list)
    if len(levels) < 1:
        raise RuleError(f"{path}.levels", "must list at least the floor tier")
    tiers = tuple(_tier(t, f"{path}.levels[{i}]", i == len(levels) - 1) for i, t in enumerate(levels))
    seen: set[str] = set()
    for i, t in enumerate(tiers):
        if t.code in seen:
            raise RuleError(f"{path}.levels[{i}].code", f"duplicate tier {t.code!r}")
        seen.add(t.code)
    channels = get(doc, "digital_channels", path, list, required=False, default=list(Ladder.digital_channels))
    if not all(isinstance(c, str) and c for c in channels):
        raise RuleError(f"{path}.digital_channels", "must be a list of channel names")
    return Ladder(
        tiers=tiers,
        qualifying_months=positive(doc.get("qualifying_months", 12), f"{path}.qualifying_months", MAX_MONTHS),
        activity_days=positive(doc.get("activity_days", 90), f"{path}.activity_days", MAX_DAYS),
        digital_channels=tuple(channels),
    )


def load_lifecycle(doc: Any, ladder: Ladder, path: str = "$.lifecycle") -> Lifecycle:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    fields_ = {"activation_days", "decline_months", "churn_months", "maturity_months", "maturity_tiers"}
    no_extra(doc, fields_, path)
    defaults = Lifecycle()
    numbers = {
        k: positive(doc.get(k, getattr(defaults, k)), f"{path}.{k}", MAX_DAYS if k.endswith("_days") else MAX_MONTHS)
        for k in sorted(fields_ - {"maturity_tiers"})
    }
    if numbers["churn_months"] <= numbers["decline_months"]:
        raise RuleError(f"{path}.churn_months", "must be longer than decline_months")
    tiers = get(doc, "maturity_tiers", path, list, required=False, default=list(defaults.maturity_tiers))
    for i, t in enumerate(tiers):
        if t not in ladder.codes:
            raise RuleError(f"{path}.maturity_tiers[{i}]", f"no tier {t!r} in the ladder")
    return Lifecycle(maturity_tiers=tuple(tiers), **numbers)


def dump_ladder(ladder: Ladder) -> dict[str, Any]:
    levels = []
    for t in ladder.tiers:
        level: dict[str, Any] = {"code": t.code, "name": t.name}
        if t.description:
            level["description"] = t.description
        if t.criteria is not None:
            level["criteria"] = dump_condition(t.criteria)
        if t.expiry is not None:
            level["expiry"] = dump_expiry(t.expiry)
        levels.append(level)
    return {
        "qualifying_months": ladder.qualifying_months,
        "activity_days": ladder.activity_days,
        "digital_channels": list(ladder.digital_channels),
        "levels": levels,
    }


def dump_lifecycle(lc: Lifecycle) -> dict[str, Any]:
    return {
        "activation_days": lc.activation_days,
        "decline_months": lc.decline_months,
        "churn_months": lc.churn_months,
        "maturity_months": lc.maturity_months,
        "maturity_tiers": list(lc.maturity_tiers),
    }
