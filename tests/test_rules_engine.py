"""The rules engine without a database: operators, actions, caps, groups, traces, time zones,
and every rule of the default programme."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules import (
    Award,
    Programme,
    Step,
    Usage,
    default_document,
    default_programme,
    dump_programme,
    evaluate,
    load_programme,
    local_facts,
)
from rules.catalogue import OPERATORS

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = dt.UTC

# ---- helpers -------------------------------------------------------------------------------------------------


def cond(var: str, op: str, value: Any) -> dict[str, Any]:
    return {"var": var, "op": op, "value": value}


def fixed(points: int) -> dict[str, Any]:
    return {"kind": "fixed", "points": points}


def per_amount(points: int = 1, per_fen: int = 100, rounding: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"kind": "per_amount", "points": points, "per_fen": per_fen}
    if rounding is not None:
        action["rounding"] = rounding
    return action


def multiplier(
    *targets: str, factor: str | None = None, by_tier: dict[str, str] | None = None, rounding: str = "floor"
) -> dict[str, Any]:
    action: dict[str, Any] = {"kind": "multiplier", "applies_to": list(targets), "rounding": rounding}
    if factor is not None:
        action["factor"] = factor
    if by_tier is not None:
        action["by_tier"] = by_tier
    return action


def rule(
    rule_id: str,
    action: dict[str, Any],
    conditions: dict[str, Any] | None = None,
    *,
    event: str = "transaction",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": rule_id,
        "event": event,
        "reason": f"reason of {rule_id}",
        "action": action,
        "qualifying": True,
        **extra,
    }
    if conditions is not None:
        doc["conditions"] = conditions
    return doc


def programme(
    *rules: dict[str, Any],
    caps: dict[str, int] | None = None,
    timezone: str = "Asia/Shanghai",
    effective_from: str = "2026-01-01",
    version: str = "t1",
) -> Programme:
    doc: dict[str, Any] = {
        "version": version,
        "effective_from": effective_from,
        "timezone": timezone,
        "expiry_months": 24,
        "rules": list(rules),
    }
    if caps is not None:
        doc["caps"] = caps
    return load_programme(doc)


def local(text: str, zone: dt.tzinfo = SHANGHAI) -> dt.datetime:
    """An aware moment from a local wall-clock time in ``zone``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def points(awards: list[Award]) -> dict[str, int]:
    return {a.rule_id: a.points for a in awards}


def notes(trace: list[Step]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for step in trace:
        out[step.rule_id].append(step.note)
    return dict(out)


class Ledger:
    """What a member has earned, by local day and local month of the programme: the Usage the caller feeds."""

    def __init__(self, zone: dt.tzinfo = SHANGHAI) -> None:
        self.zone = zone
        self.day: dict[str, Counter[str]] = defaultdict(Counter)
        self.month: dict[str, Counter[str]] = defaultdict(Counter)

    def _keys(self, moment: dt.datetime) -> tuple[str, str]:
        d = moment.astimezone(self.zone).date()
        return d.isoformat(), d.isoformat()[:7]

    def usage(self, moment: dt.datetime) -> Usage:
        day, month = self._keys(moment)
        return Usage(day=dict(self.day[day]), month=dict(self.month[month]))

    def record(self, moment: dt.datetime, awards: list[Award]) -> None:
        day, month = self._keys(moment)
        for a in awards:
            self.day[day][a.rule_id] += a.points
            self.month[month][a.rule_id] += a.points

    def run(self, p: Programme, event: str, facts: dict[str, Any], trace: list[Step] | None = None) -> dict[str, int]:
        moment = facts["occurred_at"]
        awards = evaluate(p, event, facts, self.usage(moment), trace)
        self.record(moment, awards)
        return points(awards)


NOON = utc("2026-06-15T04:00:00")  # 12:00 in Shanghai, an ordinary Monday


# ---- operators -----------------------------------------------------------------------------------------------

OPERATOR_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # equals: a missing or null value equals nothing
    (cond("tier", "equals", "hnw"), {"tier": "hnw"}, True),
    (cond("tier", "equals", "hnw"), {"tier": "mass"}, False),
    (cond("tier", "equals", "hnw"), {"tier": None}, False),
    (cond("tier", "equals", "hnw"), {}, False),
    (cond("first_of_type", "equals", False), {"first_of_type": False}, True),
    (cond("first_of_type", "equals", False), {"first_of_type": None}, False),
    (cond("amount", "equals", 0), {"amount": 0}, True),
    (cond("month_day", "equals", "11-11"), {"occurred_at": utc("2026-11-10T16:00:00")}, True),
    # not_equals: a null value is not "not equal" either
    (cond("tier", "not_equals", "hnw"), {"tier": "mass"}, True),
    (cond("tier", "not_equals", "hnw"), {"tier": "hnw"}, False),
    (cond("channel", "not_equals", "branch"), {"channel": None}, False),
    (cond("channel", "not_equals", "branch"), {}, False),
    # in / not_in
    (cond("tier", "in", ["mass", "hnw"]), {"tier": "mass"}, True),
    (cond("tier", "in", ["mass", "hnw"]), {"tier": "basic"}, False),
    (cond("tier", "in", ["mass", "hnw"]), {"tier": None}, False),
    (cond("weekday", "in", [6, 7]), {"occurred_at": utc("2026-11-14T02:00:00")}, True),  # Saturday in Shanghai
    (cond("weekday", "in", [6, 7]), {"occurred_at": utc("2026-11-13T02:00:00")}, False),  # Friday
    (cond("tier", "not_in", ["basic"]), {"tier": "mass"}, True),
    (cond("tier", "not_in", ["basic"]), {"tier": "basic"}, False),
    (cond("tier", "not_in", ["basic"]), {"tier": None}, False),
    (cond("mcc", "not_in", ["5411"]), {}, False),
    # gt / gte / lt / lte, on integers, nullable integers and the text-ordered calendar types
    (cond("amount", "gt", 10_000), {"amount": 10_001}, True),
    (cond("amount", "gt", 10_000), {"amount": 10_000}, False),
    (cond("amount", "gt", 10_000), {"amount": None}, False),
    (cond("amount", "gte", 10_000), {"amount": 10_000}, True),
    (cond("amount", "gte", 10_000), {"amount": 9_999}, False),
    (cond("amount", "gte", 0), {}, False),
    (cond("age", "lt", 18), {"age": 17}, True),
    (cond("age", "lt", 18), {"age": 18}, False),
    (cond("age", "lt", 18), {"age": None}, False),
    (cond("age", "lte", 18), {"age": 18}, True),
    (cond("age", "lte", 18), {"age": 19}, False),
    (cond("age", "lte", 18), {"age": None}, False),
    (cond("local_time", "gte", "18:00"), {"occurred_at": utc("2026-06-15T10:00:00")}, True),  # 18:00 local
    (cond("local_time", "gte", "18:00"), {"occurred_at": utc("2026-06-15T09:59:00")}, False),
    (cond("local_date", "lt", "2026-11-11"), {"occurred_at": utc("2026-11-10T15:59:00")}, True),
    (cond("local_date", "lt", "2026-11-11"), {"occurred_at": utc("2026-11-10T16:00:00")}, False),
    (cond("month_day", "gt", "11-10"), {"occurred_at": utc("2026-12-01T00:00:00")}, True),
    (cond("month_day", "lte", "02-28"), {"occurred_at": utc("2026-02-28T15:59:00")}, True),
    (cond("month_day", "lte", "02-28"), {"occurred_at": utc("2026-02-28T16:00:00")}, False),  # 03-01 local
    (cond("days_since_last_transaction", "gt", 90), {"days_since_last_transaction": None}, False),
    # between: both ends included
    (cond("amount", "between", [100, 200]), {"amount": 100}, True),
    (cond("amount", "between", [100, 200]), {"amount": 200}, True),
    (cond("amount", "between", [100, 200]), {"amount": 99}, False),
    (cond("amount", "between", [100, 200]), {"amount": 201}, False),
    (cond("days_since_last_transaction", "between", [0, 30]), {"days_since_last_transaction": None}, False),
    (cond("days_since_last_transaction", "between", [0, 30]), {"days_since_last_transaction": 0}, True),
    (cond("local_time", "between", ["22:00", "23:59"]), {"occurred_at": utc("2026-06-15T15:30:00")}, True),
    (cond("local_time", "between", ["22:00", "23:59"]), {"occurred_at": utc("2026-06-15T16:00:00")}, False),
    (cond("local_date", "between", ["2026-11-01", "2026-11-30"]), {"occurred_at": utc("2026-10-31T16:00:00")}, True),
    (cond("local_date", "between", ["2026-11-01", "2026-11-30"]), {"occurred_at": utc("2026-10-31T15:59:00")}, False),
    (cond("month_day", "between", ["11-01", "11-30"]), {"occurred_at": utc("2027-11-30T12:00:00")}, True),
    # multiple_of: positive multiples only
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": 10}, True),
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": 20}, True),
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": 15}, False),
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": 0}, False),
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": -10}, False),
    (cond("transactions_this_month", "multiple_of", 10), {"transactions_this_month": None}, False),
    # contains
    (cond("products_held", "contains", "wealth"), {"products_held": ["deposit", "wealth"]}, True),
    (cond("products_held", "contains", "wealth"), {"products_held": ["deposit"]}, False),
    (cond("products_held", "contains", "wealth"), {"products_held": []}, False),
    (cond("products_held", "contains", "wealth"), {"products_held": None}, False),
    (cond("products_held", "contains", "wealth"), {}, False),
    # is_null: a missing fact is null; zero and False are values
    (cond("days_since_last_transaction", "is_null", True), {"days_since_last_transaction": None}, True),
    (cond("days_since_last_transaction", "is_null", True), {}, True),
    (cond("days_since_last_transaction", "is_null", True), {"days_since_last_transaction": 0}, False),
    (cond("days_since_last_transaction", "is_null", False), {"days_since_last_transaction": 0}, True),
    (cond("days_since_last_transaction", "is_null", False), {"days_since_last_transaction": None}, False),
    (cond("birthday_month", "is_null", False), {"birthday_month": False}, True),
    (cond("channel", "is_null", False), {"channel": "app"}, True),
]


def matches(conditions: dict[str, Any], facts: dict[str, Any]) -> bool:
    p = programme(rule("r", fixed(7), conditions))
    facts = {"occurred_at": NOON, **facts}
    awards = evaluate(p, "transaction", facts)
    assert awards in ([], [Award("r", 7, "bank", True, "reason of r", "t1")])
    return bool(awards)


@pytest.mark.parametrize(
    ("condition", "facts", "expected"),
    [pytest.param(c, f, e, id=f"{c['var']}-{c['op']}-{i}") for i, (c, f, e) in enumerate(OPERATOR_CASES)],
)
def test_operator(condition: dict[str, Any], facts: dict[str, Any], expected: bool) -> None:
    assert matches({"all": [condition]}, facts) is expected
    # a bare test works as the whole condition too
    assert matches(condition, facts) is expected


def test_every_operator_is_tested_both_ways() -> None:
    seen: dict[str, set[bool]] = defaultdict(set)
    for c, _facts, expected in OPERATOR_CASES:
        seen[c["op"]].add(expected)
    assert set(seen) == set(OPERATORS)
    assert all(outcomes == {True, False} for outcomes in seen.values()), seen


# ---- all / any / not -----------------------------------------------------------------------------------------

NESTED = {
    "all": [
        cond("tier", "in", ["potential", "hnw"]),
        {"any": [cond("amount", "gte", 100_000), cond("products_held", "contains", "wealth")]},
        {"not": cond("channel", "equals", "branch")},
    ]
}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"tier": "hnw", "amount": 100_000, "channel": "app", "products_held": []}, True),
        ({"tier": "potential", "amount": 5_000, "channel": "app", "products_held": ["wealth"]}, True),
        # not(equals) of a null value is true: "not at the branch" holds when the channel is unknown
        ({"tier": "hnw", "amount": 100_000, "channel": None, "products_held": []}, True),
        ({"tier": "hnw", "amount": 100_000, "channel": "branch", "products_held": []}, False),
        ({"tier": "mass", "amount": 100_000, "channel": "app", "products_held": ["wealth"]}, False),
        ({"tier": "hnw", "amount": 5_000, "channel": "app", "products_held": ["deposit"]}, False),
        ({"tier": "hnw", "amount": None, "channel": "app", "products_held": None}, False),
    ],
)
def test_nested_all_any_not(facts: dict[str, Any], expected: bool) -> None:
    assert matches(NESTED, facts) is expected


def test_empty_all_matches_everything_and_empty_any_nothing() -> None:
    assert matches({"all": []}, {})
    assert not matches({"any": []}, {"tier": "hnw"})
    assert matches({"not": {"any": []}}, {})
    p = programme(rule("always", fixed(3)))  # no conditions at all
    assert points(evaluate(p, "transaction", {})) == {"always": 3}


def test_not_not_and_not_equals_differ_on_null() -> None:
    twice = {"not": {"not": cond("tier", "equals", "hnw")}}
    assert matches(twice, {"tier": "hnw"})
    assert not matches(twice, {"tier": "mass"})
    # `not equals` and `not_equals` agree on values but not on null
    assert matches({"not": cond("channel", "equals", "branch")}, {"channel": None})
    assert not matches(cond("channel", "not_equals", "branch"), {"channel": None})
    assert matches({"not": cond("channel", "equals", "branch")}, {"channel": "app"})
    assert matches(cond("channel", "not_equals", "branch"), {"channel": "app"})


def test_deep_any_of_alls() -> None:
    c = {
        "any": [
            {"all": [cond("type", "equals", "card_purchase"), cond("mcc", "in", ["5411", "5812"])]},
            {"all": [cond("type", "equals", "bill_payment"), {"not": cond("amount", "lt", 50_000)}]},
        ]
    }
    assert matches(c, {"type": "card_purchase", "mcc": "5812"})
    assert not matches(c, {"type": "card_purchase", "mcc": "4111"})
    assert matches(c, {"type": "bill_payment", "amount": 50_000})
    assert not matches(c, {"type": "bill_payment", "amount": 49_999})
    assert not matches(c, {"type": "transfer", "mcc": "5411", "amount": 10**7})


def test_events_only_see_their_rules() -> None:
    p = programme(rule("txn", fixed(1)), rule("bday", fixed(2), event="birthday"))
    assert points(evaluate(p, "transaction", {})) == {"txn": 1}
    assert points(evaluate(p, "birthday", {})) == {"bday": 2}
    assert evaluate(p, "profile_completed", {}) == []


# ---- actions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pts", "per_fen", "rounding", "amount", "expected"),
    [
        (1, 100, "floor", 12_345, 123),
        (1, 100, "half_up", 12_345, 123),
        (1, 100, "ceil", 12_345, 124),
        (1, 100, "floor", 12_350, 123),
        (1, 100, "half_up", 12_350, 124),
        (1, 100, "ceil", 12_350, 124),
        (1, 100, "floor", 12_300, 123),
        (1, 100, "half_up", 12_300, 123),
        (1, 100, "ceil", 12_300, 123),
        (3, 1_000, "floor", 1_500, 4),
        (3, 1_000, "half_up", 1_500, 5),
        (3, 1_000, "ceil", 1_500, 5),
        (3, 1_000, "half_up", 1_499, 4),
        (1, 100, "ceil", 1, 1),
        (1, 100, "floor", 99, 0),
        (1, 100, "half_up", 49, 0),
        (1, 100, "half_up", 50, 1),
        (2, 1, "floor", 7, 14),
        (1, 100, None, 12_399, 123),  # floor unless the rule says otherwise
    ],
)
def test_per_amount_rounding(pts: int, per_fen: int, rounding: str | None, amount: int, expected: int) -> None:
    p = programme(rule("spend", per_amount(pts, per_fen, rounding)))
    assert p.rules[0].action.rounding == (rounding or "floor")
    awards = evaluate(p, "transaction", {"amount": amount})
    assert points(awards) == ({"spend": expected} if expected else {})


@pytest.mark.parametrize("rounding", ["floor", "half_up", "ceil"])
@pytest.mark.parametrize("amount", [0, None, -12_345, "missing"])
def test_per_amount_without_a_positive_amount_gives_nothing(rounding: str, amount: Any) -> None:
    p = programme(rule("spend", per_amount(1, 100, rounding)))
    facts = {} if amount == "missing" else {"amount": amount}
    assert evaluate(p, "transaction", facts) == []


def test_fixed_ignores_the_amount() -> None:
    p = programme(rule("bonus", fixed(250)))
    for amount in (None, 0, 1, 10**9):
        assert points(evaluate(p, "transaction", {"amount": amount})) == {"bonus": 250}


@pytest.mark.parametrize(("rounding", "extra"), [("floor", 61), ("half_up", 62), ("ceil", 62)])
def test_multiplier_factor_and_its_rounding(rounding: str, extra: int) -> None:
    p = programme(
        rule("base", per_amount(), priority=10),
        rule("boost", multiplier("base", factor="1.5", rounding=rounding), priority=50),
    )
    assert points(evaluate(p, "transaction", {"amount": 12_300})) == {"base": 123, "boost": extra}


def test_multiplier_of_two_doubles_and_of_one_adds_nothing() -> None:
    p = programme(
        rule("base", per_amount()),
        rule("double", multiplier("base", factor="2")),
    )
    assert points(evaluate(p, "transaction", {"amount": 12_345})) == {"base": 123, "double": 123}
    p = programme(rule("base", per_amount()), rule("same", multiplier("base", factor="1")))
    assert points(evaluate(p, "transaction", {"amount": 12_345})) == {"base": 123}


@pytest.mark.parametrize(
    ("tier", "extra"),
    [("mass", 20), ("potential", 50), ("hnw", 100), ("basic", None), (None, None), ("unknown", None)],
)
def test_multiplier_by_tier(tier: str | None, extra: int | None) -> None:
    p = programme(
        rule("base", per_amount()),
        rule("tiers", multiplier("base", by_tier={"mass": "1.2", "potential": "1.5", "hnw": "2"})),
    )
    trace: list[Step] = []
    got = points(evaluate(p, "transaction", {"amount": 10_000, "tier": tier}, trace=trace))
    if extra is None:
        assert got == {"base": 100}
        assert notes(trace)["tiers"] == [f"no factor for tier {tier!r}"]
    else:
        assert got == {"base": 100, "tiers": extra}


def test_multiplier_rounds_per_target() -> None:
    rules_ = [rule("a", fixed(5)), rule("b", fixed(5)), rule("c", fixed(5), cond("tier", "equals", "hnw"))]
    floor = programme(*rules_, rule("m", multiplier("a", "b", "c", factor="1.5")))
    ceil = programme(*rules_, rule("m", multiplier("a", "b", "c", factor="1.5", rounding="ceil")))
    # 2.5 + 2.5 rounded each, not 5 rounded once; "c" did not match so adds nothing
    assert points(evaluate(floor, "transaction", {}))["m"] == 4
    assert points(evaluate(ceil, "transaction", {}))["m"] == 6
    assert points(evaluate(ceil, "transaction", {"tier": "hnw"}))["m"] == 9


def test_multiplier_needs_its_own_conditions_and_a_target_that_earned() -> None:
    p = programme(
        rule("card", per_amount(), cond("type", "equals", "card_purchase")),
        rule("weekend", multiplier("card", factor="3"), cond("weekday", "in", [6, 7])),
    )
    saturday, friday = utc("2026-11-14T04:00:00"), utc("2026-11-13T04:00:00")
    assert points(evaluate(p, "transaction", {"type": "card_purchase", "amount": 500, "occurred_at": saturday})) == {
        "card": 5,
        "weekend": 10,
    }
    assert points(evaluate(p, "transaction", {"type": "card_purchase", "amount": 500, "occurred_at": friday})) == {
        "card": 5
    }
    assert evaluate(p, "transaction", {"type": "transfer", "amount": 500, "occurred_at": saturday}) == []


def test_multiplier_works_on_capped_points() -> None:
    p = programme(
        rule("base", per_amount(), caps={"per_transaction": 50}),
        rule("double", multiplier("base", factor="2")),
    )
    assert points(evaluate(p, "transaction", {"amount": 1_000_000})) == {"base": 50, "double": 50}


# ---- caps ----------------------------------------------------------------------------------------------------


def test_rule_caps_across_a_sequence_of_transactions() -> None:
    p = programme(rule("spend", per_amount(), caps={"per_transaction": 500, "per_day": 800, "per_month": 2000}))
    ledger = Ledger()
    sequence = [
        # (local time, amount in fen, expected points, note in the trace)
        ("2026-06-01T10:00", 100_000, 500, "capped at 500 per transaction"),
        ("2026-06-01T12:00", 100_000, 300, "capped by 800 per day (300 left)"),
        ("2026-06-01T23:59", 100_000, 0, "capped by 800 per day (0 left)"),
        # local midnight, still 1 June in UTC: a new day for the caps
        ("2026-06-02T00:00", 10_000, 100, ""),
        ("2026-06-02T01:00", 100_000, 500, "capped at 500 per transaction"),
        ("2026-06-02T20:00", 100_000, 200, "capped by 800 per day (200 left)"),
        ("2026-06-03T09:00", 100_000, 400, "capped by 2000 per month (400 left)"),
        ("2026-06-04T09:00", 100_000, 0, "capped by 2000 per month (0 left)"),
        ("2026-06-30T23:59", 100, 0, "capped by 2000 per month (0 left)"),
        ("2026-07-01T00:30", 100_000, 500, "capped at 500 per transaction"),
    ]
    for when, amount, expected, note in sequence:
        trace: list[Step] = []
        got = ledger.run(p, "transaction", {"amount": amount, "occurred_at": local(when)}, trace)
        assert got == ({"spend": expected} if expected else {}), when
        assert notes(trace)["spend"] == [note], when
    assert ledger.day["2026-06-01"]["spend"] == 800
    assert ledger.day["2026-06-02"]["spend"] == 800
    assert ledger.month["2026-06"]["spend"] == 2000
    assert ledger.month["2026-07"]["spend"] == 500


@pytest.mark.parametrize(
    ("caps", "usage", "note"),
    [
        ({"per_transaction": 100}, Usage(), "capped at 100 per transaction"),
        ({"per_day": 150}, Usage(day={"r": 50}), "capped by 150 per day (100 left)"),
        ({"per_month": 1100}, Usage(month={"r": 1000}), "capped by 1100 per month (100 left)"),
    ],
)
def test_caps_at_their_boundary(caps: dict[str, int], usage: Usage, note: str) -> None:
    exact = programme(rule("r", fixed(100), caps=caps))
    over = programme(rule("r", fixed(101), caps=caps))
    trace: list[Step] = []
    assert points(evaluate(exact, "transaction", {}, usage, trace)) == {"r": 100}
    assert notes(trace) == {"r": [""]}  # reaching a cap exactly is not being capped
    trace.clear()
    assert points(evaluate(over, "transaction", {}, usage, trace)) == {"r": 100}
    assert notes(trace) == {"r": [note]}


def test_caps_of_zero_and_usage_beyond_the_cap() -> None:
    p = programme(rule("never", fixed(10), caps={"per_day": 0}), rule("once", fixed(10), caps={"per_month": 10}))
    assert points(evaluate(p, "transaction", {})) == {"once": 10}
    # usage already above a cap (the cap was lowered) leaves nothing, never a negative award
    assert evaluate(p, "transaction", {}, Usage(month={"once": 25})) == []


def test_multiplier_caps() -> None:
    p = programme(
        rule("base", per_amount()),
        rule("promo", multiplier("base", factor="3"), caps={"per_transaction": 150, "per_day": 200}),
    )
    ledger = Ledger()
    facts = {"amount": 10_000, "occurred_at": local("2026-06-01T10:00")}
    assert ledger.run(p, "transaction", facts) == {"base": 100, "promo": 150}
    assert ledger.run(p, "transaction", facts) == {"base": 100, "promo": 50}
    assert ledger.run(p, "transaction", facts) == {"base": 100}


def test_programme_caps_per_day_and_per_month() -> None:
    p = programme(
        rule("a", fixed(600), priority=10),
        rule("b", fixed(600), priority=20),
        rule("gift", fixed(50), event="birthday", priority=5),
        caps={"per_day": 1000, "per_month": 1500},
    )
    ledger = Ledger()
    trace: list[Step] = []
    day1 = {"occurred_at": local("2026-06-01T10:00")}
    assert ledger.run(p, "transaction", day1, trace) == {"a": 600, "b": 400}
    assert notes(trace)["b"] == ["", "trimmed by the programme's daily or monthly cap"]
    assert ledger.run(p, "transaction", day1) == {}
    assert ledger.run(p, "birthday", day1) == {}  # the programme caps count every event
    assert ledger.run(p, "transaction", {"occurred_at": local("2026-06-02T10:00")}) == {"a": 500}
    assert ledger.run(p, "birthday", {"occurred_at": local("2026-06-03T10:00")}) == {}
    assert ledger.run(p, "transaction", {"occurred_at": local("2026-07-01T00:00")}) == {"a": 600, "b": 400}
    assert sum(ledger.month["2026-06"].values()) == 1500


def test_programme_caps_count_usage_of_rules_it_does_not_have() -> None:
    p = programme(rule("a", fixed(600)), caps={"per_day": 1000})
    # points earned today under an earlier programme version still count towards the daily total
    assert points(evaluate(p, "transaction", {}, Usage(day={"old-rule": 900}))) == {"a": 100}
    assert evaluate(p, "transaction", {}, Usage(day={"old-rule": 1000})) == []


def test_programme_caps_trim_in_priority_order() -> None:
    p = programme(
        rule("z-first", fixed(700), priority=1),
        rule("a-second", fixed(700), priority=2),
        caps={"per_day": 1000},
    )
    assert points(evaluate(p, "transaction", {})) == {"z-first": 700, "a-second": 300}


# ---- exclusive groups ----------------------------------------------------------------------------------------


def test_only_the_best_rule_of_a_group_applies() -> None:
    p = programme(
        rule("card", per_amount(), priority=50, group="welcome"),
        rule("flat", fixed(200), priority=10, group="welcome"),
        rule("other", fixed(1)),
    )
    trace: list[Step] = []
    assert points(evaluate(p, "transaction", {"amount": 50_000}, trace=trace)) == {"card": 500, "other": 1}
    assert notes(trace)["flat"] == ["", "a better rule of exclusive group 'welcome' applies"]
    assert points(evaluate(p, "transaction", {"amount": 10_000})) == {"flat": 200, "other": 1}
    # a tie on points goes to the lower priority number
    assert points(evaluate(p, "transaction", {"amount": 20_000})) == {"flat": 200, "other": 1}


def test_group_ties_broken_by_priority_not_by_id_or_order() -> None:
    members = [
        rule("a-big", fixed(300), priority=20, group="g"),
        rule("small", fixed(100), priority=30, group="g"),
        rule("z-big", fixed(300), priority=10, group="g"),
    ]
    for ordering in (members, members[::-1], [members[1], members[2], members[0]]):
        trace: list[Step] = []
        assert points(evaluate(programme(*ordering), "transaction", {}, trace=trace)) == {"z-big": 300}
        excluded = {s.rule_id for s in trace if "exclusive group 'g'" in s.note}
        assert excluded == {"a-big", "small"}


def test_group_compares_points_after_caps() -> None:
    p = programme(
        rule("big", fixed(1000), priority=10, group="g", caps={"per_day": 1000}),
        rule("small", fixed(300), priority=20, group="g"),
    )
    assert points(evaluate(p, "transaction", {})) == {"big": 1000}
    assert points(evaluate(p, "transaction", {}, Usage(day={"big": 1000}))) == {"small": 300}


def test_group_member_that_does_not_match_leaves_the_others() -> None:
    p = programme(
        rule("vip", fixed(1000), cond("tier", "equals", "hnw"), priority=10, group="g"),
        rule("everyone", fixed(10), priority=20, group="g"),
    )
    assert points(evaluate(p, "transaction", {"tier": "hnw"})) == {"vip": 1000}
    assert points(evaluate(p, "transaction", {"tier": "mass"})) == {"everyone": 10}


def test_a_multiplier_does_not_multiply_a_group_loser() -> None:
    p = programme(
        rule("card", per_amount(), priority=50, group="g"),
        rule("flat", fixed(200), priority=10, group="g"),
        rule("double-card", multiplier("card", factor="2")),
    )
    assert points(evaluate(p, "transaction", {"amount": 10_000})) == {"flat": 200}
    assert points(evaluate(p, "transaction", {"amount": 30_000})) == {"card": 300, "double-card": 300}


def test_exclusive_group_of_multipliers() -> None:
    p = programme(
        rule("base", per_amount()),
        rule("x2", multiplier("base", factor="2"), priority=10, group="promo"),
        rule("x3", multiplier("base", factor="3"), cond("tier", "equals", "hnw"), priority=20, group="promo"),
    )
    assert points(evaluate(p, "transaction", {"amount": 10_000, "tier": "hnw"})) == {"base": 100, "x3": 200}
    assert points(evaluate(p, "transaction", {"amount": 10_000, "tier": "mass"})) == {"base": 100, "x2": 100}


# ---- awards and traces ---------------------------------------------------------------------------------------


def test_awards_sorted_by_rule_id_and_carry_the_rule() -> None:
    p = programme(
        rule("zeta", fixed(1), priority=1, funding_source="partner-x", qualifying=False, reason="Zeta reason"),
        rule("alpha", fixed(2), priority=99),
        rule("mid", fixed(3), priority=50, funding_source="merchant_7"),
        version="2026.11-promo",
    )
    awards = evaluate(p, "transaction", {})
    assert awards == [
        Award("alpha", 2, "bank", True, "reason of alpha", "2026.11-promo"),
        Award("mid", 3, "merchant_7", True, "reason of mid", "2026.11-promo"),
        Award("zeta", 1, "partner-x", False, "Zeta reason", "2026.11-promo"),
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        awards[0].points = 5  # type: ignore[misc]


def test_trace_explains_every_rule() -> None:
    p = programme(
        rule("base", per_amount(), priority=10, caps={"per_transaction": 1000}),
        rule("transfer", fixed(300), cond("type", "equals", "transfer"), priority=20),
        rule("tiers", multiplier("base", by_tier={"hnw": "1.5"}), priority=30),
        rule("late", fixed(100), priority=40, group="g"),
        rule("early", fixed(100), priority=35, group="g"),
        caps={"per_day": 2000},
    )
    trace: list[Step] = []
    awards = evaluate(p, "transaction", {"type": "card_purchase", "amount": 500_000, "tier": "hnw"}, trace=trace)
    assert points(awards) == {"base": 1000, "early": 100, "tiers": 500}
    assert [(s.rule_id, s.matched, s.points, s.note) for s in trace] == [
        ("base", True, 1000, "capped at 1000 per transaction"),
        ("transfer", False, 0, "conditions not met"),
        ("early", True, 100, ""),
        ("late", True, 100, ""),
        ("late", True, 0, "a better rule of exclusive group 'g' applies"),
        ("tiers", True, 500, "1.5x"),
    ]
    trace.clear()
    usage = Usage(day={"base": 1500})
    awards = evaluate(p, "transaction", {"type": "card_purchase", "amount": 500_000, "tier": "hnw"}, usage, trace)
    assert points(awards) == {"base": 500}
    assert ("early", True, 0, "trimmed by the programme's daily or monthly cap") in [
        (s.rule_id, s.matched, s.points, s.note) for s in trace
    ]


def test_evaluation_without_a_trace_gives_the_same_awards() -> None:
    p = default_programme()
    facts = {"type": "card_purchase", "amount": 88_888, "tier": "hnw", "occurred_at": utc("2026-11-10T17:00:00")}
    trace: list[Step] = []
    assert evaluate(p, "transaction", facts) == evaluate(p, "transaction", facts, None, trace)
    assert trace


# ---- time zone -----------------------------------------------------------------------------------------------


def test_local_facts_in_the_programme_zone() -> None:
    moment = utc("2026-11-10T17:00:00")
    assert local_facts(moment, SHANGHAI) == {
        "local_date": "2026-11-11",
        "month_day": "11-11",
        "weekday": 3,
        "local_time": "01:00",
    }
    assert local_facts(moment, UTC) == {
        "local_date": "2026-11-10",
        "month_day": "11-10",
        "weekday": 2,
        "local_time": "17:00",
    }
    # across a daylight-saving change: 07:30Z on 8 March 2026 is 03:30 in New York (EDT, not 02:30 EST)
    assert local_facts(utc("2026-03-08T07:30:00"), ZoneInfo("America/New_York"))["local_time"] == "03:30"


@pytest.mark.parametrize(
    ("timezone", "moment", "expected"),
    [
        ("Asia/Shanghai", "2026-11-10T17:00:00", True),
        ("Asia/Shanghai", "2026-11-10T16:00:00", True),
        ("Asia/Shanghai", "2026-11-10T15:59:59", False),
        ("Asia/Shanghai", "2026-11-11T17:00:00", False),
        ("UTC", "2026-11-10T17:00:00", False),
        ("UTC", "2026-11-11T17:00:00", True),
        ("America/New_York", "2026-11-12T04:59:00", True),
        ("America/New_York", "2026-11-12T05:00:00", False),
    ],
)
def test_calendar_facts_use_the_programme_zone(timezone: str, moment: str, expected: bool) -> None:
    p = programme(rule("d11", fixed(11), cond("month_day", "equals", "11-11")), timezone=timezone)
    assert bool(evaluate(p, "transaction", {"occurred_at": utc(moment)})) is expected


def test_calendar_facts_derived_from_any_offset() -> None:
    p = programme(rule("d11", fixed(11), cond("local_date", "equals", "2026-11-11")))
    same_moment = dt.datetime(2026, 11, 10, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert points(evaluate(p, "transaction", {"occurred_at": same_moment})) == {"d11": 11}


@pytest.mark.parametrize(
    ("timezone", "effective_from", "expected_utc"),
    [
        ("Asia/Shanghai", "2026-11-01", "2026-10-31T16:00:00"),
        ("UTC", "2026-11-01", "2026-11-01T00:00:00"),
        ("America/New_York", "2026-11-01", "2026-11-01T04:00:00"),  # midnight is still EDT on that day
        ("America/New_York", "2026-12-01", "2026-12-01T05:00:00"),
        ("Asia/Shanghai", "2026-11-01T00:00:00+08:00", "2026-10-31T16:00:00"),
        ("Asia/Shanghai", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00"),
        ("UTC", "2026-11-01T09:30:00+05:30", "2026-11-01T04:00:00"),
    ],
)
def test_effective_from(timezone: str, effective_from: str, expected_utc: str) -> None:
    p = programme(rule("r", fixed(1)), timezone=timezone, effective_from=effective_from)
    assert p.effective_from == utc(expected_utc)
    assert p.effective_from.utcoffset() == dt.timedelta(0)
    assert dump_programme(p)["effective_from"] == expected_utc + "Z"


# ---- the default programme -----------------------------------------------------------------------------------

DEFAULT_RULES = {
    "card-spend-base",
    "tier-multiplier",
    "double-11",
    "first-wealth-purchase",
    "first-transfer",
    "potential-growth",
    "welcome-bonus",
    "birthday-gift-hnw",
    "birthday-gift-potential",
    "profile-completed",
}


@pytest.fixture(scope="module")
def default() -> Programme:
    return default_programme()


def txn(
    type_: str = "card_purchase",
    amount: int = 10_000,
    tier: str = "basic",
    occurred_at: dt.datetime = NOON,
    **member: Any,
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "type": type_,
        "amount": amount,
        "currency": "CNY",
        "channel": "app",
        "mcc": "5411",
        "tier": tier,
        "age": 35,
        "birthday_month": False,
        "enrolled_days": 400,
        "transactions_this_month": 3,
        "first_of_type": False,
        "days_since_last_transaction": 2,
        "products_held": ["deposit"],
        "occurred_at": occurred_at,
    }
    facts.update(member)
    return facts


def test_default_programme_shape(default: Programme) -> None:
    assert {r.id for r in default.rules} == DEFAULT_RULES  # a new rule needs tests here
    assert default.version == "2026.1"
    assert default.timezone == "Asia/Shanghai"
    assert default.effective_from == utc("2019-12-31T16:00:00")
    assert (default.caps.per_day, default.caps.per_month) == (30_000, 150_000)
    assert load_programme(dump_programme(default)) == default
    assert load_programme(default_document()) == default


@pytest.mark.parametrize(("amount", "expected"), [(12_399, 123), (100, 1), (99, 0), (1_000_000, 10_000)])
def test_default_base_one_point_per_cny_floor(default: Programme, amount: int, expected: int) -> None:
    awards = evaluate(default, "transaction", txn(amount=amount))
    assert points(awards) == ({"card-spend-base": expected} if expected else {})
    if awards:
        assert awards[0] == Award(
            "card-spend-base",
            expected,
            "bank",
            True,
            "1 point per 1 CNY of card spend (消费1元积1分)",
            "2026.1",
        )


@pytest.mark.parametrize("type_", ["transfer", "wealth_purchase", "bill_payment", "loan_repayment"])
def test_default_base_only_on_card_spend(default: Programme, type_: str) -> None:
    assert evaluate(default, "transaction", txn(type_, 1_000_000, "hnw")) == []


def test_default_welcome_bonus(default: Programme) -> None:
    awards = evaluate(default, "account_opened", {"tier": "basic", "occurred_at": NOON})
    assert [(a.rule_id, a.points, a.qualifying, a.funding_source) for a in awards] == [
        ("welcome-bonus", 500, False, "bank")
    ]
    assert evaluate(default, "account_opened", {}) == awards  # no condition at all


@pytest.mark.parametrize(
    ("type_", "first", "expected"),
    [
        ("wealth_purchase", True, {"first-wealth-purchase": 1000}),
        ("wealth_purchase", False, {}),
        ("wealth_purchase", None, {}),
        ("transfer", True, {"first-transfer": 300}),
        ("transfer", False, {}),
        ("bill_payment", True, {}),
        ("card_purchase", True, {"card-spend-base": 100}),
    ],
)
def test_default_first_of_type_bonuses(
    default: Programme, type_: str, first: bool | None, expected: dict[str, int]
) -> None:
    awards = evaluate(default, "transaction", txn(type_, 10_000, first_of_type=first))
    assert points(awards) == expected
    assert all(not a.qualifying for a in awards if a.rule_id.startswith("first-"))


@pytest.mark.parametrize(
    ("tier", "count", "expected"),
    [
        ("potential", 10, 200),
        ("potential", 20, 200),
        ("potential", 9, 0),
        ("potential", 11, 0),
        ("potential", 1, 0),
        ("mass", 10, 0),
        ("hnw", 20, 0),
        ("basic", 10, 0),
    ],
)
def test_default_potential_growth(default: Programme, tier: str, count: int, expected: int) -> None:
    got = points(evaluate(default, "transaction", txn("bill_payment", 5_000, tier, transactions_this_month=count)))
    assert got == ({"potential-growth": expected} if expected else {})


def test_default_potential_growth_monthly_cap(default: Programme) -> None:
    ledger = Ledger()
    earned: list[tuple[int, int]] = []
    for n in range(1, 42):
        when = local("2026-06-01T08:00") + dt.timedelta(hours=16 * n)  # spread over the month
        assert when.astimezone(SHANGHAI).month == 6
        got = ledger.run(
            default, "transaction", txn("bill_payment", 5_000, "potential", when, transactions_this_month=n)
        )
        if got:
            earned.append((n, got["potential-growth"]))
    assert earned == [(10, 200), (20, 200), (30, 200)]  # the 40th is over the 600 monthly cap
    assert ledger.month["2026-06"]["potential-growth"] == 600
    july = local("2026-07-10T08:00")
    assert ledger.run(
        default, "transaction", txn("bill_payment", 5_000, "potential", july, transactions_this_month=10)
    ) == {"potential-growth": 200}


def test_default_growth_is_not_multiplied(default: Programme) -> None:
    got = points(
        evaluate(default, "transaction", txn("card_purchase", 10_000, "potential", transactions_this_month=10))
    )
    assert got == {"card-spend-base": 100, "potential-growth": 200, "tier-multiplier": 50}


@pytest.mark.parametrize(
    ("tier", "amount", "extra"),
    [
        ("mass", 10_000, 20),
        ("potential", 10_000, 50),
        ("hnw", 10_000, 100),
        ("basic", 10_000, 0),
        ("mass", 12_345, 24),  # 123 x 0.2 = 24.6, floored
        ("potential", 12_345, 61),  # 61.5, floored
        ("hnw", 12_345, 123),
    ],
)
def test_default_tier_multipliers(default: Programme, tier: str, amount: int, extra: int) -> None:
    trace: list[Step] = []
    got = points(evaluate(default, "transaction", txn("card_purchase", amount, tier), trace=trace))
    base = amount // 100
    assert got == ({"card-spend-base": base, "tier-multiplier": extra} if extra else {"card-spend-base": base})
    if not extra:
        assert notes(trace)["tier-multiplier"] == ["no factor for tier 'basic'"]


def test_default_tier_multiplier_only_on_card_spend(default: Programme) -> None:
    got = points(evaluate(default, "transaction", txn("transfer", 10_000, "hnw", first_of_type=True)))
    assert got == {"first-transfer": 300}


@pytest.mark.parametrize(
    ("moment", "double"),
    [
        ("2026-11-10T17:00:00", True),  # 01:00 on 11-11 in Shanghai, still 11-10 in UTC
        ("2026-11-10T16:00:00", True),  # local midnight
        ("2026-11-11T15:59:00", True),  # 23:59 local
        ("2026-11-10T15:59:00", False),  # 23:59 on 11-10 local
        ("2026-11-11T17:00:00", False),  # 11-11 in UTC but 11-12 in Shanghai
        ("2027-11-11T04:00:00", True),  # every year
        ("2026-12-11T04:00:00", False),
        ("2026-01-11T04:00:00", False),
    ],
)
def test_default_double_11(default: Programme, moment: str, double: bool) -> None:
    got = points(evaluate(default, "transaction", txn("card_purchase", 10_000, "basic", utc(moment))))
    assert got == ({"card-spend-base": 100, "double-11": 100} if double else {"card-spend-base": 100})


def test_default_double_11_with_tier_and_only_card_spend(default: Programme) -> None:
    eleven = utc("2026-11-11T04:00:00")
    got = points(evaluate(default, "transaction", txn("card_purchase", 10_000, "hnw", eleven)))
    assert got == {"card-spend-base": 100, "double-11": 100, "tier-multiplier": 100}
    assert evaluate(default, "transaction", txn("bill_payment", 10_000, "hnw", eleven)) == []


def test_default_double_11_daily_cap(default: Programme) -> None:
    ledger = Ledger()
    eleven = local("2026-11-11T09:00")
    trace: list[Step] = []
    got = ledger.run(default, "transaction", txn("card_purchase", 1_500_000, "basic", eleven), trace)
    assert got == {"card-spend-base": 15_000, "double-11": 10_000}
    assert notes(trace)["double-11"] == ["capped by 10000 per day (10000 left)"]
    got = ledger.run(default, "transaction", txn("card_purchase", 500_000, "basic", eleven + dt.timedelta(hours=1)))
    assert got == {"card-spend-base": 5_000}  # the promotion's day is used up; the base still earns
    assert ledger.day["2026-11-11"]["double-11"] == 10_000


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("hnw", {"birthday-gift-hnw": 2000}),
        ("potential", {"birthday-gift-potential": 500}),
        ("mass", {}),
        ("basic", {}),
        (None, {}),
    ],
)
def test_default_birthday_gifts(default: Programme, tier: str | None, expected: dict[str, int]) -> None:
    trace: list[Step] = []
    got = points(evaluate(default, "birthday", {"tier": tier, "occurred_at": NOON}, trace=trace))
    assert got == expected
    if tier == "hnw":  # both gifts match; the exclusive group keeps the bigger one
        assert "a better rule of exclusive group 'birthday-gift' applies" in notes(trace)["birthday-gift-potential"]


def test_default_profile_completed(default: Programme) -> None:
    awards = evaluate(default, "profile_completed", {"tier": "basic", "occurred_at": NOON})
    assert [(a.rule_id, a.points, a.qualifying) for a in awards] == [("profile-completed", 100, False)]


def test_default_daily_caps(default: Programme) -> None:
    ledger = Ledger()
    day = local("2026-06-15T09:00")
    trace: list[Step] = []
    # 30,000 CNY: the base is capped at 20,000 per transaction, the hnw doubling then hits the 30,000 daily cap
    got = ledger.run(default, "transaction", txn("card_purchase", 3_000_000, "hnw", day), trace)
    assert got == {"card-spend-base": 20_000, "tier-multiplier": 10_000}
    assert notes(trace)["card-spend-base"] == ["capped at 20000 per transaction"]
    assert "trimmed by the programme's daily or monthly cap" in notes(trace)["tier-multiplier"]
    later = day + dt.timedelta(hours=3)
    assert ledger.run(default, "transaction", txn("card_purchase", 100_000, "hnw", later)) == {}
    assert ledger.run(default, "transaction", txn("wealth_purchase", 100_000, "hnw", later, first_of_type=True)) == {}
    assert sum(ledger.day["2026-06-15"].values()) == 30_000
    # the next local day starts afresh
    assert ledger.run(default, "transaction", txn("card_purchase", 100_000, "hnw", local("2026-06-16T00:00"))) == {
        "card-spend-base": 1000,
        "tier-multiplier": 1000,
    }


def test_default_base_daily_cap_below_the_programme_cap(default: Programme) -> None:
    ledger = Ledger()
    day = local("2026-06-15T09:00")
    for _ in range(3):
        ledger.run(default, "transaction", txn("card_purchase", 900_000, "basic", day))
    assert ledger.day["2026-06-15"]["card-spend-base"] == 20_000  # 9000 + 9000 + 2000
    got = ledger.run(default, "transaction", txn("transfer", 100, "basic", day, first_of_type=True))
    assert got == {"first-transfer": 300}  # the rule cap is spent, the programme's is not


def test_default_monthly_caps(default: Programme) -> None:
    ledger = Ledger()
    # a mass member spending 30,000 CNY every day: 20,000 base + 4,000 tier points a day until the
    # base's 100,000 monthly cap is reached on the fifth day
    for d in range(1, 7):
        ledger.run(default, "transaction", txn("card_purchase", 3_000_000, "mass", local(f"2026-06-0{d}T10:00")))
    assert ledger.month["2026-06"] == {"card-spend-base": 100_000, "tier-multiplier": 20_000}
    # an hnw member reaches the programme's 150,000 monthly cap in five days
    ledger = Ledger()
    for d in range(1, 6):
        got = ledger.run(default, "transaction", txn("card_purchase", 3_000_000, "hnw", local(f"2026-06-0{d}T10:00")))
        assert got == {"card-spend-base": 20_000, "tier-multiplier": 10_000}
    assert sum(ledger.month["2026-06"].values()) == 150_000
    for event, facts in [
        ("account_opened", {"occurred_at": local("2026-06-20T10:00")}),
        ("profile_completed", {"occurred_at": local("2026-06-20T10:00")}),
        ("birthday", {"tier": "hnw", "occurred_at": local("2026-06-21T10:00")}),
        ("transaction", txn("transfer", 100, "hnw", local("2026-06-22T10:00"), first_of_type=True)),
    ]:
        assert ledger.run(default, event, facts) == {}, event
    assert ledger.run(default, "profile_completed", {"occurred_at": local("2026-07-01T00:00")}) == {
        "profile-completed": 100
    }


def test_default_programme_monthly_cap_trims_partially(default: Programme) -> None:
    usage = Usage(day={}, month={"card-spend-base": 100_000, "tier-multiplier": 49_900})
    got = points(evaluate(default, "transaction", txn("transfer", 100, "hnw", first_of_type=True), usage))
    assert got == {"first-transfer": 100}
