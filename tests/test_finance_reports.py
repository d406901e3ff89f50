"""The trial balance and the roll-forward of outstanding points, read from the ledger."""

from __future__ import annotations

import csv
import datetime as dt
import io

import openpyxl
import pytest

from loyalty.jobs.runner import run_job
from tests.test_ledger import REDEEMED, WELCOME, Books


@pytest.fixture
def books(runtime):
    return Books(runtime)


def history(books: Books) -> dict[str, int]:
    """Two members' June 2026: welcome bonuses, a purchase, a redemption, a pending hold, a refund."""
    books.enrol("m1")
    books.buy("t1", 12_345, member_id="m1")  # 123 points
    books.hold("r1", 200, member_id="m1")
    books.capture("r1", member_id="m1")
    books.hold("r2", 50, member_id="m1")  # pending at the end of the month
    refund = books.refund("t1", "rf1", 6_000)
    books.enrol("m2")
    return {"reversed": refund.body["points_reversed"]}


def test_the_trial_balance_sums_to_zero_and_shows_the_held_points(client, books):
    figures = history(books)
    r = client.get("/v1/finance/trial-balance?as_of=2026-06-15")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report["total"] == 0
    balances = {a["account"]: a["balance"] for a in report["accounts"]}
    assert balances["holds"] == 50
    assert balances["member"] == books.balance("m1") + books.balance("m2")
    assert balances[REDEEMED] == 200
    assert balances["issued:bank"] == -(500 + 123 + 500) + figures["reversed"]  # a refund credits it back
    before = client.get("/v1/finance/trial-balance?as_of=2026-06-14").get_json()
    assert {a["account"]: a["balance"] for a in before["accounts"]}["member"] == 0


def test_the_rollforward_moves_from_opening_to_closing_and_ties_to_the_members(client, books):
    figures = history(books)
    report = client.get("/v1/finance/rollforward?from=2026-06-01&to=2026-06-30").get_json()
    reversed_ = figures["reversed"]
    assert report["opening"] == 0
    assert report["earned"] == {
        "total": 1_123,
        "by_funding_source": {"bank": 1_123},
        "by_rule": {"card-spend-base": 123, "welcome-bonus": 1_000},
    }
    assert report["redeemed"] == {"total": 200, "by_account": {REDEEMED: 200}}
    assert (report["expired"], report["reversed"], report["adjusted"]) == (0, reversed_, 0)
    closing = 1_123 - 200 - reversed_
    assert report["closing"] == closing
    # the pending hold's 50 points are still owed: in the closing figure, on no member's balance
    assert books.balance("m1") + books.balance("m2") == closing - 50
    assert report["tie_out"] == {
        "closing_from_postings": closing,
        "sum_of_member_balances": closing,
        "differences": [],
        "tied": True,
    }


def test_expiry_moves_points_out_in_the_month_it_happens(client, books, runtime, clock):
    history(books)
    expiry = books.lot_expiry(WELCOME, "m2")
    clock.now = expiry  # the ledger moves when the job runs: that is the expiry's posting date
    run_job(runtime, "expiry", expiry)
    month = expiry.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m")
    june = client.get("/v1/finance/rollforward?from=2026-06-01&to=2026-06-30").get_json()
    report = client.get(f"/v1/finance/rollforward?from={month}-01&to={month}-28").get_json()
    assert report["opening"] == june["closing"]
    assert report["expired"] > 0 and report["earned"]["total"] == 0
    assert report["closing"] == june["closing"] - report["expired"]
    assert report["tie_out"]["tied"] is True


def test_reports_come_as_csv_and_xlsx_with_the_same_figures(client, books):
    history(books)
    r = client.get("/v1/finance/trial-balance?as_of=2026-06-30&format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == ["account", "kind", "balance"] and rows[-1] == ["total", "", "0"]
    r = client.get("/v1/finance/rollforward?from=2026-06-01&to=2026-06-30&format=xlsx")
    assert r.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(r.get_data())).active
    lines = {row[0]: row[2] for row in sheet.iter_rows(min_row=2, values_only=True) if not row[1]}
    assert lines["opening"] == 0 and lines["earned"] == 1_123 and lines["redeemed"] == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/v1/finance/trial-balance", "as_of"),
        ("/v1/finance/trial-balance?as_of=2026-02-30", "as_of"),
        ("/v1/finance/trial-balance?as_of=2026-06-01&format=pdf", "format"),
        ("/v1/finance/rollforward?from=2026-06-01", "to"),
        ("/v1/finance/rollforward?from=2026-06-30&to=2026-06-01", "to"),
        ("/v1/finance/rollforward?from=June&to=2026-06-01", "from"),
    ],
)
def test_bad_dates_and_formats_are_refused_naming_the_parameter(client, query, field):
    r = client.get(query)
    assert r.status_code == 422 and r.get_json()["field"] == field


@pytest.mark.committed
def test_the_cli_gives_the_same_reports(database_url, books, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    history(books)
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url}
    command = [str(Path(sys.executable).with_name("loyalty")), "finance"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    result = run("rollforward", "--from", "2026-06-01", "--to", "2026-06-30")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tie_out"]["tied"] is True
    result = run("trial-balance", "--as-of", "2026-06-30", "--format", "csv")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "total,,0"
    workbook = tmp_path / "tb.xlsx"
    assert run("trial-balance", "--as-of", "2026-06-30", "--format", "xlsx", "-o", str(workbook)).returncode == 0
    sheet = openpyxl.load_workbook(workbook).active
    assert [c.value for c in sheet[1]] == ["account", "kind", "balance"]
    assert run("trial-balance", "--as-of", "2026-06-30", "--format", "xlsx").returncode == 2
