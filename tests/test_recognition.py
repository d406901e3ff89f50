"""Revenue recognition by cumulative catch-up: hand-computed cases, and the what-if endpoint."""

from __future__ import annotations

import datetime as dt

import pytest

from loyalty.errors import ValidationError
from loyalty.finance.recognition import PeriodFigures, recognise, to_date


def figures(*rows: tuple[str, int, int]) -> list[PeriodFigures]:
    return [PeriodFigures(label, redeemed, expected) for label, redeemed, expected in rows]


def table(allocated: int, *rows: tuple[str, int, int]) -> list[tuple[str, int, int, int]]:
    return [(r.label, r.to_date_fen, r.in_period_fen, r.deferred_fen) for r in recognise(allocated, figures(*rows))]


def test_a_steady_estimate_recognises_in_proportion_to_redemptions():
    # 10,000 fen allocated to 1,000 points of which 800 are expected to be redeemed
    assert table(10_000, ("2026-01", 200, 800), ("2026-02", 400, 800), ("2026-03", 800, 800)) == [
        ("2026-01", 2_500, 2_500, 7_500),
        ("2026-02", 5_000, 2_500, 5_000),
        ("2026-03", 10_000, 5_000, 0),
    ]


def test_a_raised_estimate_takes_revenue_back_in_the_period_it_changes():
    # 300 of 600 redeemed: half recognised; the estimate rises to 900: a third, so 1,667 fen come back
    assert table(10_000, ("Q1", 300, 600), ("Q2", 300, 900)) == [
        ("Q1", 5_000, 5_000, 5_000),
        ("Q2", 3_333, -1_667, 6_667),
    ]


def test_a_lowered_estimate_is_caught_up_at_once():
    assert table(9_000, ("Q1", 100, 900), ("Q2", 200, 400)) == [
        ("Q1", 1_000, 1_000, 8_000),
        ("Q2", 4_500, 3_500, 4_500),
    ]


def test_a_fully_redeemed_cohort_is_fully_recognised_and_stays_so():
    assert table(12_345, ("2026", 500, 500), ("2027", 500, 500)) == [
        ("2026", 12_345, 12_345, 0),
        ("2027", 12_345, 0, 0),
    ]


def test_cumulative_rounding_does_not_drift_where_rounding_each_period_would():
    # 100 fen over 3 equal redemptions: 33.33.., 66.66.., 100 -> 33, 67, 100 (periods 33, 34, 33)
    rows = recognise(100, figures(("a", 1, 3), ("b", 2, 3), ("c", 3, 3)))
    assert [r.to_date_fen for r in rows] == [33, 67, 100]
    assert [r.in_period_fen for r in rows] == [33, 34, 33]
    assert sum(r.in_period_fen for r in rows) == 100
    # rounding each period's own share instead (round(100/3) three times) would give 99


def test_half_a_fen_rounds_up():
    assert to_date(1, 1, 2) == 1
    assert to_date(3, 1, 2) == 2
    assert to_date(5, 0, 0) == 0


@pytest.mark.parametrize(
    ("allocated", "rows", "field"),
    [
        (100, [("a", 5, 4)], "periods.0.expected_total"),
        (100, [("a", 5, 10), ("b", 4, 10)], "periods.1.cumulative_redeemed"),
        (100, [("a", -1, 10)], "periods.0.cumulative_redeemed"),
        (-5, [("a", 1, 10)], "allocated_fen"),
    ],
)
def test_figures_that_cannot_be_are_refused_naming_the_field(allocated, rows, field):
    with pytest.raises(ValidationError) as err:
        recognise(allocated, figures(*rows))
    assert field in err.value.errors


# ---- the what-if endpoint -------------------------------------------------------------------------------------


def test_the_what_if_answers_each_period_with_the_report_arithmetic(client):
    body = {
        "allocated_fen": 10_000,
        "periods": [
            {"label": "2026-Q1", "cumulative_redeemed": 300, "expected_total": 600},
            {"label": "2026-Q2", "cumulative_redeemed": 300, "expected_total": 900},
        ],
    }
    r = client.post("/v1/finance/recognition/what-if", json=body)
    assert r.status_code == 200, r.get_json()
    assert [(p["label"], p["to_date_fen"], p["in_period_fen"], p["deferred_fen"]) for p in r.get_json()["periods"]] == [
        ("2026-Q1", 5_000, 5_000, 5_000),
        ("2026-Q2", 3_333, -1_667, 6_667),
    ]


@pytest.mark.parametrize(
    ("periods", "field"),
    [
        ([{"label": "a", "cumulative_redeemed": 10, "expected_total": 5}], "periods.0.expected_total"),
        (
            [
                {"label": "a", "cumulative_redeemed": 10, "expected_total": 50},
                {"label": "b", "cumulative_redeemed": 9, "expected_total": 50},
            ],
            "periods.1.cumulative_redeemed",
        ),
        ([{"label": "a", "cumulative_redeemed": -1, "expected_total": 5}], "periods.0.cumulative_redeemed"),
        ([{"label": "a", "cumulative_redeemed": 1.5, "expected_total": 5}], "periods.0.cumulative_redeemed"),
        ([], "periods"),
    ],
)
def test_the_what_if_refuses_bad_figures_with_a_problem_naming_the_field(client, periods, field):
    r = client.post("/v1/finance/recognition/what-if", json={"allocated_fen": 100, "periods": periods})
    assert r.status_code == 422
    assert r.mimetype == "application/problem+json"
    assert r.get_json()["field"] == field


def test_the_what_if_needs_the_finance_scope(app, runtime):
    from tests.conftest import make_key

    key = make_key(runtime, "read")
    r = app.test_client().post(
        "/v1/finance/recognition/what-if",
        json={"allocated_fen": 1, "periods": [{"label": "a", "cumulative_redeemed": 0, "expected_total": 0}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403


# ---- the report over the ledger's cohorts ---------------------------------------------------------------------


def test_the_report_defers_what_older_cohorts_say_will_still_be_redeemed(client, runtime, clock):
    from tests.test_ledger import Books

    books = Books(runtime)
    client.post(
        "/v1/finance/settings",
        json={"kind": "allocated_value", "funding_source": "bank", "effective_from": "2026-01-01", "value": "1"},
    )
    clock.now = dt.datetime(2026, 5, 15, 10, tzinfo=dt.UTC)
    books.enrol("m1")  # May cohort: 500 points, 500 fen allocated
    books.hold("r1", 100, member_id="m1")
    books.capture("r1", member_id="m1")  # May cohort redeems 100 at age 0
    clock.now = dt.datetime(2026, 6, 15, 10, tzinfo=dt.UTC)
    books.hold("r2", 200, member_id="m1")
    books.capture("r2", member_id="m1")  # ... and 200 more at age 1: development factor 300 / 100 = 3
    books.enrol("m2")  # June cohort: 500 points
    books.hold("r3", 100, member_id="m2")
    books.capture("r3", member_id="m2")  # June cohort redeems 100 at age 0: expected ultimate 300

    may = client.get("/v1/finance/recognition?period=2026-05").get_json()
    assert [(c["cohort"], c["to_date_fen"], c["in_period_fen"]) for c in may["cohorts"]] == [("2026-05", 500, 500)]
    june = client.get("/v1/finance/recognition?period=2026-06").get_json()
    assert [
        (
            c["cohort"],
            c["allocated_fen"],
            c["cumulative_redeemed"],
            c["expected_total"],
            c["to_date_fen"],
            c["in_period_fen"],
            c["deferred_fen"],
        )
        for c in june["cohorts"]
    ] == [
        ("2026-05", 500, 300, 300, 500, 0, 0),
        ("2026-06", 500, 100, 300, 167, 167, 333),  # 500 x 100 / 300 = 166.67, half up
    ]
    assert june["total"] == {"allocated_fen": 1_000, "to_date_fen": 667, "in_period_fen": 167, "deferred_fen": 333}
    q2 = client.get("/v1/finance/recognition?period=2026-Q2").get_json()
    assert q2["total"]["in_period_fen"] == 667  # nothing was recognised before April


@pytest.mark.parametrize("period", ["", "2026-13", "2026-Q5", "June"])
def test_a_period_that_is_not_a_month_quarter_or_year_is_refused(client, period):
    r = client.get(f"/v1/finance/recognition?period={period}")
    assert r.status_code == 422 and r.get_json()["field"] == "period"
