"""The tier ladder and lifecycle as programme data: validation, first-match qualification, explanations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules import RuleError, default_document, dump_programme, load_programme
from rules.tiers import describe, matches

LADDER = load_programme(default_document()).ladder


def doc_with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(default_document())
    for path, value in changes.items():
        target = doc
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        last = keys[-1]
        if value is DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return doc


DELETE = object()


def test_the_default_ladder_has_four_tiers_from_the_top_down():
    assert LADDER.codes == ("hnw", "potential", "mass", "basic")
    assert [LADDER.rank(c) for c in LADDER.codes] == [3, 2, 1, 0]
    assert LADDER.floor == "basic"
    assert LADDER.tiers[-1].criteria is None


def test_a_programme_round_trips_with_its_tiers_and_lifecycle():
    programme = load_programme(default_document())
    assert load_programme(dump_programme(programme)) == programme


def test_a_document_without_tiers_gets_the_default_ladder():
    doc = default_document()
    del doc["tiers"], doc["lifecycle"]
    assert load_programme(doc).ladder == LADDER


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        (
            {"tiers__levels__3__criteria": {"var": "aum", "op": "gte", "value": 1}},
            "$.tiers.levels[3].criteria",
            "floor",
        ),
        ({"tiers__levels__2__criteria": DELETE}, "$.tiers.levels[2].criteria", "is required"),
        (
            {"tiers__levels__0__criteria": {"var": "balance", "op": "gte", "value": 1}},
            "$.tiers.levels[0].criteria.var",
            "unknown variable",
        ),
        (
            {"tiers__levels__0__criteria": {"not": {"var": "aum", "op": "gte", "value": 1}}},
            "$.tiers.levels[0].criteria.not",
            "not allowed",
        ),
        (
            {"tiers__levels__0__criteria": {"var": "aum", "op": "multiple_of", "value": 10}},
            "$.tiers.levels[0].criteria.op",
            "unknown operator",
        ),
        (
            {"tiers__levels__0__criteria": {"var": "aum", "op": "gte", "value": "1000"}},
            "$.tiers.levels[0].criteria.value",
            "integer",
        ),
        ({"tiers__levels__0__criteria": {"any": []}}, "$.tiers.levels[0].criteria", "at least one metric"),
        ({"tiers__levels__1__code": "hnw"}, "$.tiers.levels[1].code", "duplicate tier"),
        ({"tiers__levels__1__code": "Potential"}, "$.tiers.levels[1].code", "lower-case"),
        ({"tiers__levels": []}, "$.tiers.levels", "at least the floor"),
        ({"tiers__qualifying_months": 0}, "$.tiers.qualifying_months", "positive"),
        ({"tiers__colour": "gold"}, "$.tiers.colour", "unknown field"),
        ({"lifecycle__churn_months": 3}, "$.lifecycle.churn_months", "longer than decline_months"),
        ({"lifecycle__maturity_tiers": ["gold"]}, "$.lifecycle.maturity_tiers[0]", "no tier 'gold'"),
        ({"rules__1__action__by_tier": {"gold": "2"}}, "$.rules[1].action.by_tier.gold", "no tier 'gold'"),
    ],
)
def test_a_bad_ladder_is_refused_with_the_path_of_the_fault(changes, path, message):
    with pytest.raises(RuleError) as err:
        load_programme(doc_with(**changes))
    assert err.value.path == path
    assert message in err.value.message


def metrics(**over: Any) -> dict[str, Any]:
    base = {
        "aum": 0,
        "profit_contribution": 0,
        "qualifying_points": 0,
        "transactions_90d": 0,
        "digital_share": None,
        "products_held": [],
        "product_count": 0,
        "age": None,
    }
    return {**base, **over}


@pytest.mark.parametrize(
    ("over", "tier", "reason"),
    [
        ({}, "basic", "the floor tier"),
        ({"aum": 200_000_000}, "hnw", "assets ≥ 2,000,000 CNY"),
        ({"profit_contribution": 5_000_000}, "hnw", "profit contribution ≥ 50,000 CNY"),
        (
            {"age": 30, "digital_share": 60, "qualifying_points": 12_000},
            "potential",
            "age 20 to 40 and digital share ≥ 60% and qualifying points ≥ 12,000",
        ),
        ({"age": 41, "digital_share": 60, "qualifying_points": 12_000}, "basic", "the floor tier"),
        ({"age": 40, "digital_share": 59, "aum": 20_000_000}, "mass", "assets ≥ 50,000 CNY"),
        (
            {"age": 20, "digital_share": 100, "aum": 20_000_000},
            "potential",
            "age 20 to 40 and digital share ≥ 60% and assets ≥ 200,000 CNY",
        ),
        ({"transactions_90d": 9, "product_count": 2}, "mass", "transactions in 90 days ≥ 9 and products ≥ 2"),
        ({"transactions_90d": 9, "product_count": 1}, "basic", "the floor tier"),
    ],
)
def test_each_criterion_of_the_default_tiers(over, tier, reason):
    assert LADDER.qualify(metrics(**over)) == (tier, reason)


def test_progress_shows_the_closest_way_to_the_next_tier():
    progress = LADDER.progress("mass", metrics(age=30, digital_share=80, qualifying_points=3_000, aum=2_000_000))
    assert progress["next_tier"] == "potential"
    assert progress["missing"] == "needs 9,000 more qualifying points or 180,000 CNY more assets"
    old = LADDER.progress("mass", metrics(age=55, digital_share=10, aum=2_000_000))
    assert old["missing"] == (
        "needs age 20 to 40 and digital share ≥ 60% and 12,000 more qualifying points"
        " or age 20 to 40 and digital share ≥ 60% and 180,000 CNY more assets"
    )
    assert LADDER.progress("hnw", metrics())["next_tier"] is None


def test_conditions_read_as_words():
    hnw = LADDER.tier("hnw")
    assert describe(hnw.criteria) == "assets ≥ 2,000,000 CNY or profit contribution ≥ 50,000 CNY"  # type: ignore[arg-type]


METRICS = st.fixed_dictionaries(
    {
        "aum": st.integers(0, 300_000_000),
        "profit_contribution": st.integers(-1_000_000, 6_000_000),
        "qualifying_points": st.integers(-100, 20_000),
        "transactions_90d": st.integers(0, 30),
        "digital_share": st.one_of(st.none(), st.integers(0, 100)),
        "products_held": st.lists(st.sampled_from(["deposit", "wealth", "fund", "loan"]), unique=True),
        "product_count": st.integers(0, 4),
        "age": st.one_of(st.none(), st.integers(0, 100)),
    }
)


@given(METRICS)
def test_the_first_tier_whose_criteria_match_wins(m):
    tier, _reason = LADDER.qualify(m)
    position = LADDER.codes.index(tier)
    for above in LADDER.tiers[:position]:
        assert not matches(above.criteria, m)  # type: ignore[arg-type]
    chosen = LADDER.tier(tier)
    assert chosen.criteria is None or matches(chosen.criteria, m)
    progress = LADDER.progress(tier, m)
    assert (progress["missing"] is None) == (progress["next_tier"] is None)
