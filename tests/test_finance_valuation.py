"""Valuation settings, the liability and breakage."""

from __future__ import annotations

from decimal import Decimal

import pytest

from loyalty.finance.breakage import estimate
from tests.test_finance_reports import history
from tests.test_ledger import Books


@pytest.fixture
def books(runtime):
    return Books(runtime)


def setting(kind: str, value: str, source: str = "bank", date: str = "2026-06-01") -> dict[str, str]:
    return {"kind": kind, "funding_source": source, "effective_from": date, "value": value}


# ---- settings ---------------------------------------------------------------------------------------------------


def test_a_setting_is_versioned_by_date_replaced_on_the_same_date_and_audited(client):
    r = client.post("/v1/finance/settings", json=setting("point_value", "0.5"))
    assert r.status_code == 201 and r.get_json()["value"] == "0.5"
    assert client.post("/v1/finance/settings", json=setting("point_value", "0.6")).status_code == 200
    assert client.post("/v1/finance/settings", json=setting("point_value", "0.7", date="2027-01-01")).status_code == 201
    listed = client.get("/v1/finance/settings").get_json()["settings"]
    assert [(s["effective_from"], s["value"]) for s in listed] == [("2026-06-01", "0.6"), ("2027-01-01", "0.7")]
    audit = client.get("/v1/audit?object_type=valuation_setting").get_json()
    lines = audit["entries"]
    assert sorted(line["action"] for line in lines) == ["replace", "set", "set"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (setting("point_value", 0.5), "value"),  # type: ignore[arg-type]
        (setting("point_value", "-1"), "value"),
        (setting("point_value", "0.1234567"), "value"),
        (setting("redemption_rate", "1.2"), "value"),
        (setting("point_value", "abc"), "value"),
        (setting("discount", "1"), "kind"),
        (setting("point_value", "1", source="Bank!"), "funding_source"),
        (setting("point_value", "1", date="2026-13-01"), "effective_from"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_field_and_nothing_is_stored(client, body, field):
    r = client.post("/v1/finance/settings", json=body)
    assert r.status_code == 422 and r.get_json()["field"] == field
    assert client.get("/v1/finance/settings").get_json()["settings"] == []


# ---- the liability ----------------------------------------------------------------------------------------------


def test_the_liability_values_outstanding_points_with_the_inputs_in_force(client, books):
    figures = history(books)
    outstanding = 1_123 - 200 - figures["reversed"]  # the pending hold's 50 points are still owed
    report = client.get("/v1/finance/liability?as_of=2026-06-30").get_json()
    (bank,) = report["by_funding_source"]
    # no settings yet: a point is worth LOYALTY_POINT_VALUE_FEN (1 fen), the rate is the breakage estimate
    rate = Decimal(200) / Decimal(1_123)
    assert (bank["points"], bank["point_value_from"], bank["redemption_rate_from"]) == (
        outstanding,
        "LOYALTY_POINT_VALUE_FEN",
        "breakage estimate",
    )
    assert Decimal(bank["redemption_rate"]) == rate.quantize(Decimal("0.000001"))
    assert report["tie_out"] == {
        "points_in_lots_less_debt": outstanding,
        "outstanding_from_postings": outstanding,
        "tied": True,
    }
    assert report["by_tier"] == [{"tier": "basic", "points": outstanding, "liability_fen": bank["liability_fen"]}]

    client.post("/v1/finance/settings", json=setting("point_value", "0.5"))
    client.post("/v1/finance/settings", json=setting("redemption_rate", "0.8"))
    client.post("/v1/finance/settings", json=setting("redemption_rate", "0.1", date="2026-07-01"))
    (bank,) = client.get("/v1/finance/liability?as_of=2026-06-30").get_json()["by_funding_source"]
    assert (bank["point_value_fen"], bank["redemption_rate"], bank["redemption_rate_from"]) == (
        "0.5",
        "0.8",
        "valuation setting",
    )
    expected = (Decimal(outstanding) * Decimal("0.4")).quantize(Decimal(1), rounding="ROUND_HALF_UP")
    assert bank["liability_fen"] == int(expected)
    before = client.get("/v1/finance/liability?as_of=2026-06-14").get_json()
    assert before["total"] == {"points": 0, "liability_fen": 0}


def test_the_liability_as_csv_lists_each_cell_with_its_inputs(client, books):
    history(books)
    client.post("/v1/finance/settings", json=setting("point_value", "2"))
    client.post("/v1/finance/settings", json=setting("redemption_rate", "1"))
    text = client.get("/v1/finance/liability?as_of=2026-06-30&format=csv").get_data(as_text=True)
    lines = text.splitlines()
    assert lines[0] == "tier,funding_source,points,point_value_fen,redemption_rate,liability_fen"
    tier, source, points, value, rate, fen = lines[1].split(",")
    assert (tier, source, value, rate) == ("basic", "bank", "2", "1") and int(fen) == 2 * int(points)


# ---- breakage -----------------------------------------------------------------------------------------------------


def test_each_cohort_accounts_for_every_point_it_issued(client, books):
    figures = history(books)
    report = client.get("/v1/finance/breakage?as_of=2026-06-30").get_json()
    (june,) = report["cohorts"]
    assert june["cohort"] == "2026-06"
    assert (june["issued"], june["redeemed"], june["reversed"], june["expired"]) == (1_123, 200, figures["reversed"], 0)
    assert june["outstanding"] == 1_123 - 200 - figures["reversed"]
    assert june["cumulative_redeemed_by_age"] == [200]


def test_the_chain_ladder_carries_young_cohorts_forward_by_older_ones_development():
    rows = [
        {"issued": 1_000, "age_months": 2, "cumulative_redeemed_by_age": [100, 300, 400]},
        {"issued": 1_000, "age_months": 1, "cumulative_redeemed_by_age": [200, 400]},
        {"issued": 500, "age_months": 0, "cumulative_redeemed_by_age": [100]},
    ]
    factors, rate, ultimates = estimate(rows)
    # age 0 -> 1: (300 + 400) / (100 + 200); age 1 -> 2: 400 / 300
    assert factors == [Decimal("2.333333"), Decimal("1.333333")]
    assert ultimates == [400, 533, 311]  # 400; 400 x 1.333333; 100 x 2.333333 x 1.333333
    assert rate == (Decimal(400 + 533 + 311) / Decimal(2_500)).quantize(Decimal("0.000001"))


def test_no_points_no_estimate():
    assert estimate([]) == ([], None, [])


@pytest.mark.committed
def test_the_cli_gives_the_liability_and_breakage(database_url, books):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    history(books)
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url}
    loyalty = str(Path(sys.executable).with_name("loyalty"))
    result = subprocess.run(
        [loyalty, "finance", "liability", "--as-of", "2026-06-30"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tie_out"]["tied"] is True
    result = subprocess.run(
        [loyalty, "finance", "breakage", "--as-of", "2026-06-30", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.splitlines()[1].startswith("2026-06,1123,200,")
