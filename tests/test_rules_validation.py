"""Programme documents the validator must refuse, with the JSON path of the bad field; and the catalogue export."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from rules import RuleError, default_document, export_catalogue, load_programme
from rules.catalogue import OPERATORS, VARIABLES


def base() -> dict[str, Any]:
    """A small valid programme: an earning rule, a multiplier on it, a birthday rule."""
    return {
        "version": "2026.2",
        "effective_from": "2026-11-01",
        "timezone": "Asia/Shanghai",
        "expiry_months": 24,
        "caps": {"per_day": 30_000, "per_month": 150_000},
        "rules": [
            {
                "id": "spend",
                "event": "transaction",
                "reason": "1 point per CNY",
                "priority": 10,
                "conditions": {"all": [{"var": "type", "op": "equals", "value": "card_purchase"}]},
                "action": {"kind": "per_amount", "points": 1, "per_fen": 100, "rounding": "floor"},
                "qualifying": True,
                "caps": {"per_transaction": 20_000},
            },
            {
                "id": "boost",
                "event": "transaction",
                "reason": "tier boost",
                "priority": 50,
                "action": {"kind": "multiplier", "applies_to": ["spend"], "by_tier": {"hnw": "2"}},
                "qualifying": False,
            },
            {
                "id": "gift",
                "event": "birthday",
                "reason": "birthday gift",
                "action": {"kind": "fixed", "points": 100},
                "qualifying": False,
            },
        ],
    }


def test_the_base_document_and_the_default_one_are_valid() -> None:
    p = load_programme(base())
    assert [r.id for r in p.rules] == ["spend", "boost", "gift"]
    assert len(load_programme(default_document()).rules) == 10


def refuse(change: Callable[[dict[str, Any]], Any]) -> RuleError:
    """Apply ``change`` to a fresh valid document and return the error loading it raises."""
    doc = base()
    change(doc)
    with pytest.raises(RuleError) as info:
        load_programme(doc)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.message
    assert str(err) == f"{err.path}: {err.message}"
    return err


def with_condition(condition: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["rules"][0]["conditions"] = {"all": [condition]}

    return change


def set_at(*keys: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return change


def delete_at(*keys: str | int) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return change


COND = "$.rules[0].conditions.all[0]"


def c(var: str, op: str, value: Any) -> dict[str, Any]:
    return {"var": var, "op": op, "value": value}


# ---- conditions ----------------------------------------------------------------------------------------------

CONDITION_CASES = [
    # unknown variable / operator
    (c("colour", "equals", "red"), f"{COND}.var", "unknown variable 'colour'"),
    (c("amount", "approximately", 100), f"{COND}.op", "unknown operator 'approximately'"),
    ({"var": 7, "op": "equals", "value": 1}, f"{COND}.var", "must be a string"),
    ({"op": "equals", "value": 1}, f"{COND}.var", "is required"),
    ({"var": "amount", "value": 1}, f"{COND}.op", "is required"),
    ({"var": "amount", "op": "gt"}, f"{COND}.value", "is required"),
    ({"var": "amount", "op": "gt", "value": 1, "values": [2]}, f"{COND}.values", "unknown field"),
    # operator not applicable to the variable's type
    (c("tier", "contains", "hnw"), f"{COND}.op", "'contains' does not apply to 'tier', a string"),
    (c("first_of_type", "gt", True), f"{COND}.op", "'gt' does not apply to 'first_of_type', a boolean"),
    (c("first_of_type", "between", [False, True]), f"{COND}.op", "does not apply"),
    (c("tier", "multiple_of", 2), f"{COND}.op", "'multiple_of' does not apply to 'tier', a string"),
    (c("local_date", "multiple_of", 2), f"{COND}.op", "does not apply"),
    (c("products_held", "equals", "wealth"), f"{COND}.op", "does not apply to 'products_held', a string_list"),
    (c("products_held", "in", ["wealth"]), f"{COND}.op", "does not apply"),
    (c("products_held", "gt", "a"), f"{COND}.op", "does not apply"),
    # wrong value types
    (c("amount", "gt", "100"), f"{COND}.value", "must be an integer"),
    (c("amount", "gt", 1.5), f"{COND}.value", "must be an integer"),
    (c("amount", "gt", True), f"{COND}.value", "must be an integer"),
    (c("amount", "equals", None), f"{COND}.value", "must be an integer"),
    (c("tier", "equals", 1), f"{COND}.value", "must be a string"),
    (c("first_of_type", "equals", "yes"), f"{COND}.value", "must be true or false"),
    (c("first_of_type", "equals", 1), f"{COND}.value", "must be true or false"),
    (c("local_date", "equals", "2026/11/11"), f"{COND}.value", "must be a date YYYY-MM-DD"),
    (c("local_date", "equals", "2026-11-1"), f"{COND}.value", "must be a date YYYY-MM-DD"),
    (c("local_date", "gte", "2026-13-01"), f"{COND}.value", "2026-13-01 is not a calendar date"),
    (c("local_date", "gte", "2026-02-30"), f"{COND}.value", "is not a calendar date"),
    (c("local_date", "gte", 20261111), f"{COND}.value", "must be a date YYYY-MM-DD"),
    (c("local_time", "gte", "24:00"), f"{COND}.value", "must be a time HH:MM"),
    (c("local_time", "gte", "9:00"), f"{COND}.value", "must be a time HH:MM"),
    (c("local_time", "gte", "09:60"), f"{COND}.value", "must be a time HH:MM"),
    (c("local_time", "gte", "09:00:00"), f"{COND}.value", "must be a time HH:MM"),
    (c("month_day", "equals", "11-32"), f"{COND}.value", "must be a month and day MM-DD"),
    (c("month_day", "equals", "13-01"), f"{COND}.value", "must be a month and day MM-DD"),
    (c("month_day", "equals", "1111"), f"{COND}.value", "must be a month and day MM-DD"),
    (c("month_day", "equals", "2026-11-11"), f"{COND}.value", "must be a month and day MM-DD"),
    (c("weekday", "equals", "monday"), f"{COND}.value", "must be an integer"),
    # lists and pairs
    (c("tier", "in", "hnw"), f"{COND}.value", "must be a non-empty list"),
    (c("tier", "in", []), f"{COND}.value", "must be a non-empty list"),
    (c("tier", "not_in", ["hnw", 3]), f"{COND}.value[1]", "must be a string"),
    (c("local_time", "in", ["10:00", "10:5"]), f"{COND}.value[1]", "must be a time HH:MM"),
    (c("amount", "between", [1, 2, 3]), f"{COND}.value", "must be a list [low, high]"),
    (c("amount", "between", 5), f"{COND}.value", "must be a list [low, high]"),
    (c("amount", "between", [1, "2"]), f"{COND}.value[1]", "must be an integer"),
    (c("amount", "between", [200, 100]), f"{COND}.value", "low must not be above high"),
    (c("month_day", "between", ["12-20", "01-10"]), f"{COND}.value", "low must not be above high"),
    (c("transactions_this_month", "multiple_of", 0), f"{COND}.value", "must be positive"),
    (c("transactions_this_month", "multiple_of", -10), f"{COND}.value", "must be positive"),
    (c("transactions_this_month", "multiple_of", "10"), f"{COND}.value", "must be an integer"),
    (c("products_held", "contains", 1), f"{COND}.value", "must be a string"),
    (c("products_held", "contains", ["wealth"]), f"{COND}.value", "must be a string"),
    (c("age", "is_null", "yes"), f"{COND}.value", "must be true or false"),
    (c("age", "is_null", 0), f"{COND}.value", "must be true or false"),
    # groups
    ("amount > 5", COND, "must be an object"),
    ({"all": [], "any": []}, COND, "a group has exactly one key"),
    ({"all": [], "var": "tier"}, COND, "a group has exactly one key"),
    ({"any": {"var": "tier"}}, f"{COND}.any", "must be a list of conditions"),
    ({"not": [c("tier", "equals", "hnw")]}, f"{COND}.not", "must be an object"),
    ({"not": {"any": [c("tier", "equals", "hnw"), c("age", "gt", "x")]}}, f"{COND}.not.any[1].value", "integer"),
    ({"all": [{"any": [{"not": c("tyre", "equals", "x")}]}]}, f"{COND}.all[0].any[0].not.var", "unknown variable"),
]


@pytest.mark.parametrize(
    ("condition", "path", "message"),
    [pytest.param(cond, path, msg, id=f"{i}-{msg[:30]}") for i, (cond, path, msg) in enumerate(CONDITION_CASES)],
)
def test_bad_condition(condition: Any, path: str, message: str) -> None:
    err = refuse(with_condition(condition))
    assert err.path == path
    assert message in err.message


def test_conditions_must_be_an_object() -> None:
    err = refuse(set_at("rules", 0, "conditions", value=[c("tier", "equals", "hnw")]))
    assert (err.path, err.message) == ("$.rules[0].conditions", "must be an object")


def test_every_operator_refuses_a_variable_it_does_not_apply_to() -> None:
    for name, operator in OPERATORS.items():
        wrong = [v for v in VARIABLES.values() if v.type not in operator.types]
        if name == "is_null":
            assert not wrong  # is_null applies to every type
            continue
        assert wrong, name
        err = refuse(with_condition(c(wrong[0].name, name, 1)))
        assert err.path == f"{COND}.op"
        assert "does not apply" in err.message


# ---- actions -------------------------------------------------------------------------------------------------

A0, A1 = "$.rules[0].action", "$.rules[1].action"


def spend(**fields: Any) -> dict[str, Any]:
    return {"kind": "per_amount", "points": 1, "per_fen": 100, **fields}


def mult(*targets: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "multiplier", "applies_to": list(targets or ["spend"]), **fields}


ACTION_CASES = [
    # the earning rule's action: $.rules[0].action
    (0, spend(points=0), A0 + ".points", "must be positive"),
    (0, spend(per_fen=-1), A0 + ".per_fen", "must be positive"),
    (0, {"kind": "per_amount", "points": 1}, A0 + ".per_fen", "must be an integer"),
    (0, spend(points="1"), A0 + ".points", "must be an integer"),
    (0, spend(rounding="round"), A0 + ".rounding", "must be one of floor, half_up, ceil"),
    (0, spend(factor="2"), A0 + ".factor", "unknown field"),
    (0, {"kind": "fixed", "points": -5}, A0 + ".points", "must be positive"),
    (0, {"kind": "fixed", "points": 5, "per_fen": 1}, A0 + ".per_fen", "unknown field"),
    (0, {"kind": "bonus", "points": 5}, A0 + ".kind", "unknown action 'bonus'"),
    (0, {"points": 5}, A0 + ".kind", "is required"),
    (0, "fixed", A0, "must be an object"),
    # the multiplier: $.rules[1].action
    (1, mult(factor="0"), A1 + ".factor", "must be greater than 0"),
    (1, mult(factor=0), A1 + ".factor", "must be greater than 0"),
    (1, mult(factor="-2"), A1 + ".factor", "must be greater than 0"),
    (1, mult(factor="0.5"), A1 + ".factor", "must be at least 1"),
    (1, mult(factor="0.99"), A1 + ".factor", "must be at least 1"),
    (1, mult(factor=1.5), A1 + ".factor", "floats are inexact"),
    (1, mult(factor=2.0), A1 + ".factor", "floats are inexact"),
    (1, mult(factor=True), A1 + ".factor", "decimal"),
    (1, mult(factor=["2"]), A1 + ".factor", "must be a decimal string"),
    (1, mult(factor="double"), A1 + ".factor", "'double' is not a decimal number"),
    (1, mult(factor="NaN"), A1 + ".factor", "must be finite"),
    (1, mult(factor="Infinity"), A1 + ".factor", "must be finite"),
    (1, mult(factor="101"), A1 + ".factor", "must be at most 100"),
    (1, mult(by_tier={"hnw": "2", "mass": "0"}), A1 + ".by_tier.mass", "must be greater than 0"),
    (1, mult(by_tier={"mass": 1.2}), A1 + ".by_tier.mass", "floats are inexact"),
    (1, mult(by_tier={"mass": "0.8"}), A1 + ".by_tier.mass", "must be at least 1"),
    (1, mult(by_tier={}), A1 + ".by_tier", "must name at least one tier"),
    (1, mult(by_tier=["hnw"]), A1 + ".by_tier", "must be an object"),
    (1, mult(factor="2", by_tier={"hnw": "2"}), A1, "exactly one of factor and by_tier"),
    (1, mult(), A1, "exactly one of factor and by_tier"),
    (1, {"kind": "multiplier", "applies_to": [], "factor": "2"}, A1 + ".applies_to", "non-empty list"),
    (1, {"kind": "multiplier", "applies_to": [1], "factor": "2"}, A1 + ".applies_to", "rule ids"),
    (1, {"kind": "multiplier", "applies_to": "spend", "factor": "2"}, A1 + ".applies_to", "must be a list"),
    (1, {"kind": "multiplier", "factor": "2"}, A1 + ".applies_to", "is required"),
    (1, mult(factor="2", points=1), A1 + ".points", "unknown field"),
    # multiplier targets
    (1, mult("spend", "spend", factor="2"), A1 + ".applies_to[1]", "'spend' is listed twice"),
    (1, mult("spend", "nope", factor="2"), A1 + ".applies_to[1]", "no rule 'nope' in this programme"),
    (1, mult("boost", factor="2"), A1 + ".applies_to[0]", "'boost' is a multiplier"),
    (1, mult("gift", factor="2"), A1 + ".applies_to[0]", "'gift' responds to 'birthday', this rule to 'transaction'"),
]


@pytest.mark.parametrize(
    ("index", "action", "path", "message"),
    [pytest.param(i, a, p, m, id=f"{n}-{m[:30]}") for n, (i, a, p, m) in enumerate(ACTION_CASES)],
)
def test_bad_action(index: int, action: Any, path: str, message: str) -> None:
    err = refuse(set_at("rules", index, "action", value=action))
    assert err.path == path
    assert message in err.message


def test_multiplier_on_another_multiplier_refused_wherever_it_is_listed() -> None:
    def add_second_multiplier(doc: dict[str, Any]) -> None:
        doc["rules"].insert(
            0,
            {
                "id": "meta",
                "event": "transaction",
                "reason": "multiplies a multiplier",
                "action": {"kind": "multiplier", "applies_to": ["spend", "boost"], "factor": "2"},
                "qualifying": False,
            },
        )

    err = refuse(add_second_multiplier)
    assert err.path == "$.rules[0].action.applies_to[1]"
    assert "'boost' is a multiplier" in err.message


def test_multiplier_factor_at_bounds_accepted() -> None:
    for factor in ("1", "1.0", "100", 2, "1.25"):
        doc = base()
        doc["rules"][1]["action"] = {"kind": "multiplier", "applies_to": ["spend"], "factor": factor}
        assert str(load_programme(doc).rules[1].action.factor) == str(factor)


# ---- rules ---------------------------------------------------------------------------------------------------

RULE_CASES = [
    (delete_at("rules", 0, "id"), "$.rules[0].id", "is required"),
    (set_at("rules", 0, "id", value="Card Spend"), "$.rules[0].id", "lower-case letters"),
    (set_at("rules", 0, "id", value="-spend"), "$.rules[0].id", "lower-case letters"),
    (set_at("rules", 0, "id", value="x" * 65), "$.rules[0].id", "1-64"),
    (set_at("rules", 2, "id", value="gift\n"), "$.rules[2].id", "lower-case letters"),
    (set_at("rules", 2, "id", value="spend"), "$.rules[2].id", "duplicate rule id 'spend'"),
    (set_at("rules", 0, "event", value="login"), "$.rules[0].event", "unknown event 'login'"),
    (delete_at("rules", 0, "event"), "$.rules[0].event", "is required"),
    (set_at("rules", 0, "reason", value="  "), "$.rules[0].reason", "must not be empty"),
    (delete_at("rules", 0, "reason"), "$.rules[0].reason", "is required"),
    (delete_at("rules", 0, "qualifying"), "$.rules[0].qualifying", "is required"),
    (set_at("rules", 0, "qualifying", value="yes"), "$.rules[0].qualifying", "must be a boolean"),
    (set_at("rules", 0, "priority", value="10"), "$.rules[0].priority", "must be an integer"),
    (set_at("rules", 0, "priority", value=True), "$.rules[0].priority", "not a boolean"),
    (set_at("rules", 0, "priority", value=1.0), "$.rules[0].priority", "must be an integer"),
    (set_at("rules", 0, "funding_source", value="Partner X"), "$.rules[0].funding_source", "lower-case"),
    (set_at("rules", 0, "funding_source", value="bank\n"), "$.rules[0].funding_source", "lower-case"),
    (set_at("rules", 0, "group", value="Big Group"), "$.rules[0].group", "lower-case"),
    (set_at("rules", 0, "group", value="g\n"), "$.rules[0].group", "lower-case"),
    (set_at("rules", 0, "colour", value="red"), "$.rules[0].colour", "unknown field"),
    (set_at("rules", 0, value="spend"), "$.rules[0]", "must be an object"),
    (delete_at("rules", 0, "action"), "$.rules[0].action", "must be an object"),
    # caps
    (set_at("rules", 0, "caps", "per_day", value=-1), "$.rules[0].caps.per_day", "must not be negative"),
    (set_at("rules", 0, "caps", "per_transaction", value=-100), "$.rules[0].caps.per_transaction", "negative"),
    (set_at("rules", 0, "caps", "per_month", value="100"), "$.rules[0].caps.per_month", "must be an integer"),
    (set_at("rules", 0, "caps", "per_month", value=1.5), "$.rules[0].caps.per_month", "must be an integer"),
    (set_at("rules", 0, "caps", "per_month", value=True), "$.rules[0].caps.per_month", "must be an integer"),
    (set_at("rules", 0, "caps", "per_week", value=10), "$.rules[0].caps.per_week", "unknown field"),
    (set_at("rules", 0, "caps", value=100), "$.rules[0].caps", "must be an object"),
    (set_at("caps", "per_day", value=-1), "$.caps.per_day", "must not be negative"),
    (set_at("caps", "per_month", value=-150_000), "$.caps.per_month", "must not be negative"),
    (set_at("caps", "per_transaction", value=100), "$.caps.per_transaction", "unknown field"),
    (set_at("caps", value=[1]), "$.caps", "must be an object"),
]


@pytest.mark.parametrize(("change", "path", "message"), [pytest.param(ch, p, m, id=p) for ch, p, m in RULE_CASES])
def test_bad_rule(change: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    err = refuse(change)
    assert err.path == path
    assert message in err.message


#: Numbers and texts past what the engine carries: a 64-bit column, the calendar, a lot's reason.
BOUND_CASES = [
    (set_at("expiry_months", value=1201), "$.expiry_months", "at most 1,200"),
    (set_at("expiry_months", value=10**30), "$.expiry_months", "at most 1,200"),
    (set_at("rules", 0, "action", "points", value=10**15 + 1), "$.rules[0].action.points", "at most 1,000,000,000"),
    (set_at("rules", 0, "caps", "per_day", value=2**64), "$.rules[0].caps.per_day", "at most"),
    (set_at("caps", "per_month", value=2**64), "$.caps.per_month", "at most"),
    (set_at("rules", 0, "priority", value=-(2**63) - 1), "$.rules[0].priority", "from -1,000,000,000,000,000 to"),
    (
        set_at("rules", 0, "conditions", "all", 0, value={"var": "amount", "op": "gte", "value": 2**64}),
        f"{COND}.value",
        "from -1,000,000,000,000,000",
    ),
    (set_at("rules", 0, "reason", value="x" * 201), "$.rules[0].reason", "at most 200 characters"),
    (set_at("rules", 0, "description", value="x" * 1001), "$.rules[0].description", "at most 1,000 characters"),
    (set_at("description", value="x" * 1001), "$.description", "at most 1,000 characters"),
    (set_at("lifecycle", value={"decline_months": 3, "churn_months": 1201}), "$.lifecycle.churn_months", "1,200"),
    (set_at("lifecycle", value={"activation_days": 36_601}), "$.lifecycle.activation_days", "at most 36,600"),
]


@pytest.mark.parametrize(("change", "path", "message"), [pytest.param(ch, p, m, id=p) for ch, p, m in BOUND_CASES])
def test_numbers_and_texts_past_what_the_engine_carries_are_refused(
    change: Callable[[dict[str, Any]], None], path: str, message: str
) -> None:
    err = refuse(change)
    assert err.path == path
    assert message in err.message


def test_numbers_and_texts_at_the_bounds_load() -> None:
    doc = base()
    doc["expiry_months"] = 1200
    doc["rules"][0]["reason"] = "x" * 200
    doc["rules"][0]["action"]["points"] = 10**15
    doc["rules"][0]["priority"] = -(10**15)
    doc["description"] = "x" * 1000
    p = load_programme(doc)
    assert (p.expiry.months, p.rules[0].reason, p.rules[0].action.points) == (1200, "x" * 200, 10**15)


def test_caps_of_zero_are_allowed() -> None:
    doc = base()
    doc["rules"][0]["caps"] = {"per_transaction": 0, "per_day": 0, "per_month": 0}
    doc["caps"] = {"per_day": 0}
    p = load_programme(doc)
    assert p.rules[0].caps.per_day == 0
    assert p.caps.per_day == 0
    assert p.caps.per_month is None


# ---- exclusive groups ----------------------------------------------------------------------------------------


def test_group_members_with_the_same_priority_cannot_be_ordered() -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["rules"][0].update(group="g", priority=10)
        doc["rules"].append({**copy.deepcopy(doc["rules"][0]), "id": "spend-2"})

    err = refuse(change)
    assert err.path == "$.rules[3].priority"
    assert "'spend' and 'spend-2' of exclusive group 'g' share priority 10" in err.message


def test_same_priority_outside_a_group_or_in_different_groups_is_fine() -> None:
    doc = base()
    doc["rules"].append({**copy.deepcopy(doc["rules"][0]), "id": "spend-2"})  # both priority 10, no group
    assert len(load_programme(doc).rules) == 4
    doc["rules"][0]["group"] = "a"
    doc["rules"][3]["group"] = "b"
    assert {r.group for r in load_programme(doc).rules} == {"a", "b", None}


def test_group_mixing_events() -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["rules"][0]["group"] = "g"
        doc["rules"][2].update(group="g", priority=20)

    err = refuse(change)
    assert err.path == "$.rules[2].group"
    assert "group 'g' mixes events 'transaction' and 'birthday'" in err.message


def test_group_mixing_multipliers_and_earning_rules() -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["rules"][0]["group"] = "g"
        doc["rules"][1]["group"] = "g"

    err = refuse(change)
    assert err.path == "$.rules[1].group"
    assert "mixes multipliers with earning rules" in err.message


# ---- the programme -------------------------------------------------------------------------------------------

PROGRAMME_CASES = [
    (set_at("version", value=""), "$.version", "1-32 letters"),
    (set_at("version", value="2026 1"), "$.version", "1-32 letters"),
    (set_at("version", value="v/1"), "$.version", "1-32 letters"),
    (set_at("version", value=".hidden"), "$.version", "1-32 letters"),
    (set_at("version", value="v" * 33), "$.version", "1-32 letters"),
    (set_at("version", value="2026.1\n"), "$.version", "1-32 letters"),
    (set_at("version", value="版本1"), "$.version", "1-32 letters"),
    (set_at("version", value=2026), "$.version", "must be a string"),
    (delete_at("version"), "$.version", "is required"),
    (set_at("timezone", value="Mars/Olympus_Mons"), "$.timezone", "unknown time zone 'Mars/Olympus_Mons'"),
    (set_at("timezone", value="Asia"), "$.timezone", "unknown time zone"),
    (set_at("timezone", value=""), "$.timezone", "unknown time zone"),
    (set_at("timezone", value="../../etc/passwd"), "$.timezone", "unknown time zone"),
    (set_at("timezone", value="+08:00"), "$.timezone", "unknown time zone"),
    (set_at("timezone", value=8), "$.timezone", "must be a string"),
    (set_at("effective_from", value="2026-11-01T00:00:00"), "$.effective_from", "needs an offset"),
    (set_at("effective_from", value="2026-11-01 08:00"), "$.effective_from", "needs an offset"),
    (set_at("effective_from", value="2026-02-30"), "$.effective_from", "not an ISO date"),
    (set_at("effective_from", value="1 Nov 2026"), "$.effective_from", "not an ISO date"),
    (set_at("effective_from", value=20261101), "$.effective_from", "must be an ISO date"),
    (delete_at("effective_from"), "$.effective_from", "must be an ISO date"),
    (set_at("expiry_months", value=0), "$.expiry_months", "must be positive"),
    (delete_at("expiry_months"), "$.expiry", "is required"),
    (set_at("rules", value={}), "$.rules", "must be a list"),
    (delete_at("rules"), "$.rules", "is required"),
    (set_at("description", value=5), "$.description", "must be a string"),
    (set_at("author", value="me"), "$.author", "unknown field"),
]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [pytest.param(ch, p, m, id=f"{i}-{p}") for i, (ch, p, m) in enumerate(PROGRAMME_CASES)],
)
def test_bad_programme(change: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    err = refuse(change)
    assert err.path == path
    assert message in err.message


@pytest.mark.parametrize("doc", [None, [], "programme", 1])
def test_a_programme_must_be_an_object(doc: Any) -> None:
    with pytest.raises(RuleError) as info:
        load_programme(doc)
    assert info.value.path == "$"


def test_the_first_error_is_reported() -> None:
    doc = base()
    doc["rules"][0]["conditions"] = {"all": [c("tier", "equals", 1), c("colour", "equals", "red")]}
    doc["rules"][2]["event"] = "login"
    with pytest.raises(RuleError) as info:
        load_programme(doc)
    assert info.value.path == f"{COND}.value"


def test_loading_does_not_change_the_document() -> None:
    doc = base()
    before = copy.deepcopy(doc)
    load_programme(doc)
    assert doc == before


# ---- the catalogue -------------------------------------------------------------------------------------------


def test_export_is_json_and_lists_everything() -> None:
    exported = export_catalogue()
    again = json.loads(json.dumps(exported, ensure_ascii=False))
    assert again == exported
    assert [v["name"] for v in exported["variables"]] == list(VARIABLES)
    assert (
        {o["name"] for o in exported["operators"]}
        == {
            "equals",
            "not_equals",
            "in",
            "not_in",
            "gt",
            "gte",
            "lt",
            "lte",
            "between",
            "multiple_of",
            "contains",
            "is_null",
        }
        == set(OPERATORS)
    )
    assert {
        "type",
        "amount",
        "currency",
        "channel",
        "mcc",
        "merchant",
        "local_date",
        "month_day",
        "weekday",
        "local_time",
        "tier",
        "age",
        "birthday_month",
        "enrolled_days",
        "transactions_this_month",
        "first_of_type",
        "days_since_last_transaction",
        "products_held",
    } == set(VARIABLES)
    for v in exported["variables"]:
        assert set(v) == {"name", "type", "source", "nullable", "description"}
        assert v["type"] in {"string", "integer", "boolean", "date", "time", "month_day", "string_list"}
        assert v["source"] in {"transaction", "member"}
        assert v["description"]
    for o in exported["operators"]:
        assert o["types"] and set(o["types"]) <= {v["type"] for v in exported["variables"]}
    assert set(exported["events"]) == {"transaction", "account_opened", "birthday", "profile_completed"}
    assert set(exported["actions"]) == {"per_amount", "fixed", "multiplier"}
    assert exported["rounding"] == ["floor", "half_up", "ceil"]
    assert set(exported["caps"]) == {"per_transaction", "per_day", "per_month"}
    assert next(v for v in exported["variables"] if v["name"] == "days_since_last_transaction")["nullable"] is True


def test_every_exported_operator_and_variable_is_accepted_somewhere() -> None:
    """The editor may offer any exported (variable, operator) pair the types allow: each one loads."""
    samples = {
        "string": "x",
        "integer": 1,
        "boolean": True,
        "date": "2026-11-11",
        "time": "10:00",
        "month_day": "11-11",
        "string_list": "x",
    }
    exported = export_catalogue()
    loaded = 0
    for o in exported["operators"]:
        for v in exported["variables"]:
            if v["type"] not in o["types"]:
                continue
            sample = samples[v["type"]]
            value = {
                "scalar": sample,
                "list": [sample],
                "pair": [sample, sample],
                "positive_integer": 10,
                "string": "x",
                "boolean": True,
            }[o["value"]]
            doc = base()
            doc["rules"][0]["conditions"] = {"all": [c(v["name"], o["name"], value)]}
            assert load_programme(doc).rules[0].conditions.children[0].op == o["name"]
            loaded += 1
    assert loaded > len(exported["operators"])
