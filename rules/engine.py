"""Rules as data: validate a programme document, evaluate it against facts."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

EVENTS = ("transaction", "account_opened")

#: Operators a condition may use, by name.
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda a, b: a == b,
    "not_equals": lambda a, b: a != b,
    "in": lambda a, b: a in b,
    "gte": lambda a, b: a is not None and a >= b,
    "lte": lambda a, b: a is not None and a <= b,
    "between": lambda a, b: a is not None and b[0] <= a <= b[1],
}

#: Facts a condition may test, with the event that supplies them.
VARIABLES = {
    "type": "transaction type (card_purchase, transfer, wealth_purchase, bill_payment, loan_repayment)",
    "amount": "transaction amount in fen",
    "currency": "ISO currency code",
    "channel": "channel the transaction came through",
    "mcc": "merchant category code",
    "merchant": "merchant name",
}


class RuleError(ValueError):
    """A programme document is invalid; ``path`` points at the bad field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Award:
    """Points one rule gives for one event, and why."""

    rule_id: str
    points: int
    funding_source: str
    qualifying: bool
    reason: str


@dataclass(frozen=True)
class Rule:
    id: str
    event: str
    conditions: Mapping[str, Any]
    action: Mapping[str, Any]
    funding_source: str
    qualifying: bool
    reason: str


@dataclass(frozen=True)
class Programme:
    version: str
    effective_from: dt.date
    expiry_months: int
    rules: tuple[Rule, ...]

    @property
    def funding_sources(self) -> set[str]:
        return {r.funding_source for r in self.rules}


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in doc:
        raise RuleError(f"{path}.{key}", "is required")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RuleError(f"{path}.{key}", f"must be {getattr(kind, '__name__', kind)}")
    return value


def _check_conditions(node: Any, path: str) -> None:
    if not isinstance(node, Mapping):
        raise RuleError(path, "must be an object")
    if "all" in node or "any" in node:
        key = "all" if "all" in node else "any"
        if not isinstance(node[key], list):
            raise RuleError(f"{path}.{key}", "must be a list")
        for i, child in enumerate(node[key]):
            _check_conditions(child, f"{path}.{key}[{i}]")
        return
    var = _require(node, "var", str, path)
    if var not in VARIABLES:
        raise RuleError(f"{path}.var", f"unknown variable {var!r}")
    op = _require(node, "op", str, path)
    if op not in OPERATORS:
        raise RuleError(f"{path}.op", f"unknown operator {op!r}")
    if "value" not in node:
        raise RuleError(f"{path}.value", "is required")


def _check_action(action: Any, path: str) -> None:
    if not isinstance(action, Mapping):
        raise RuleError(path, "must be an object")
    kind = _require(action, "kind", str, path)
    if kind == "per_amount":
        if _require(action, "points", int, path) <= 0:
            raise RuleError(f"{path}.points", "must be positive")
        if _require(action, "per_fen", int, path) <= 0:
            raise RuleError(f"{path}.per_fen", "must be positive")
    elif kind == "fixed":
        if _require(action, "points", int, path) <= 0:
            raise RuleError(f"{path}.points", "must be positive")
    else:
        raise RuleError(f"{path}.kind", f"unknown action {kind!r}")


def load_programme(doc: Mapping[str, Any]) -> Programme:
    """Validate a programme document and return it as a :class:`Programme`."""
    version = _require(doc, "version", str, "$")
    try:
        effective_from = dt.date.fromisoformat(_require(doc, "effective_from", str, "$"))
    except ValueError:
        raise RuleError("$.effective_from", "must be an ISO date") from None
    expiry_months = _require(doc, "expiry_months", int, "$")
    if expiry_months <= 0:
        raise RuleError("$.expiry_months", "must be positive")
    rules = []
    seen: set[str] = set()
    for i, raw in enumerate(_require(doc, "rules", list, "$")):
        path = f"$.rules[{i}]"
        if not isinstance(raw, Mapping):
            raise RuleError(path, "must be an object")
        rule_id = _require(raw, "id", str, path)
        if rule_id in seen:
            raise RuleError(f"{path}.id", f"duplicate rule id {rule_id!r}")
        seen.add(rule_id)
        event = _require(raw, "event", str, path)
        if event not in EVENTS:
            raise RuleError(f"{path}.event", f"unknown event {event!r}")
        _check_conditions(raw.get("conditions", {"all": []}), f"{path}.conditions")
        _check_action(raw.get("action"), f"{path}.action")
        rules.append(
            Rule(
                id=rule_id,
                event=event,
                conditions=raw.get("conditions", {"all": []}),
                action=raw["action"],
                funding_source=_require(raw, "funding_source", str, path),
                qualifying=_require(raw, "qualifying", bool, path),
                reason=_require(raw, "reason", str, path),
            )
        )
    return Programme(version, effective_from, expiry_months, tuple(rules))


def default_programme() -> Programme:
    """The programme shipped with the engine, from the bank's description."""
    text = resources.files("rules").joinpath("default_programme.json").read_text("utf-8")
    return load_programme(json.loads(text))


def _matches(node: Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    if "all" in node:
        return all(_matches(child, facts) for child in node["all"])
    if "any" in node:
        return any(_matches(child, facts) for child in node["any"])
    return OPERATORS[node["op"]](facts.get(node["var"]), node["value"])


def _points(action: Mapping[str, Any], facts: Mapping[str, Any]) -> int:
    if action["kind"] == "fixed":
        return int(action["points"])
    # Integer arithmetic, rounded down per award.
    return int(facts["amount"]) * int(action["points"]) // int(action["per_fen"])


def evaluate(programme: Programme, event: str, facts: Mapping[str, Any]) -> list[Award]:
    """The awards ``programme`` gives for ``event`` with ``facts``; zero-point awards are dropped."""
    awards = []
    for rule in programme.rules:
        if rule.event != event or not _matches(rule.conditions, facts):
            continue
        points = _points(rule.action, facts)
        if points > 0:
            awards.append(Award(rule.id, points, rule.funding_source, rule.qualifying, rule.reason))
    return awards
