"""Period close: frozen reports, no posting inside a closed month, late transactions in the open one."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.errors import PeriodClosed
from loyalty.finance.models import frozen_reports
from tests.conftest import make_key
from tests.helpers import txn
from tests.test_finance_reports import history
from tests.test_ledger import Books

SHANGHAI = ZoneInfo("Asia/Shanghai")
JULY_1 = dt.datetime(2026, 7, 1, tzinfo=SHANGHAI)


@pytest.fixture
def books(runtime):
    return Books(runtime)


def test_a_month_closes_only_after_it_has_ended_and_only_once(client, books, clock):
    history(books)
    clock.now = JULY_1 + dt.timedelta(minutes=5)
    r = client.post("/v1/finance/periods/2026-06/close")
    assert r.status_code == 409 and r.get_json()["type"] == "/problems/period_not_closable"
    clock.now = JULY_1 + dt.timedelta(minutes=11)
    r = client.post("/v1/finance/periods/2026-06/close")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["tied"] is True
    assert client.post("/v1/finance/periods/2026-06/close").status_code == 409
    assert client.get("/v1/finance/periods").get_json()["closed"][0]["period"] == "2026-06"
    for bad in ("2026-6", "2026-13", "2026-Q2", "2026"):
        r = client.post(f"/v1/finance/periods/{bad}/close")
        assert r.status_code == 422 and r.get_json()["field"] == "period"


def test_a_late_transaction_lands_in_the_open_period_and_the_closed_reports_stay_as_stored(client, books, clock):
    history(books)
    june_report = client.get("/v1/finance/rollforward?from=2026-06-01&to=2026-06-30").get_json()
    clock.now = JULY_1 + dt.timedelta(hours=1)
    assert client.post("/v1/finance/periods/2026-06/close").status_code == 201
    # a card purchase of 29 June reaches the engine on 1 July
    occurred = dt.datetime(2026, 6, 29, 12, tzinfo=SHANGHAI)
    r = client.post("/v1/transactions", json=txn("late", "m2", 30_000, occurred_at=occurred.isoformat()))
    assert r.status_code == 201
    entry = client.get("/v1/members/m2/entries").get_json()["entries"][0]
    assert entry["occurred_at"] == "2026-06-29T04:00:00Z" and entry["posted_at"].startswith("2026-06-30T17:00")
    assert client.get("/v1/finance/rollforward?from=2026-06-01&to=2026-06-30").get_json() == june_report
    july = client.get("/v1/finance/rollforward?from=2026-07-01&to=2026-07-31").get_json()
    assert july["opening"] == june_report["closing"] and july["earned"]["total"] == 300
    assert july["tie_out"]["tied"] is True
    # the breakage cohort is the month it was earned in, June
    june_cohort = client.get("/v1/finance/breakage?as_of=2026-07-31").get_json()["cohorts"][0]
    assert (june_cohort["cohort"], june_cohort["issued"]) == ("2026-06", 1_123 + 300)


def test_no_entry_may_be_posted_inside_a_closed_month(client, books, clock):
    history(books)
    clock.now = JULY_1 + dt.timedelta(hours=1)
    assert client.post("/v1/finance/periods/2026-06/close").status_code == 201
    clock.now = dt.datetime(2026, 6, 30, 23, tzinfo=SHANGHAI)  # a clock that went back into June
    r = client.post("/v1/transactions", json=txn("backdated", "m2", 10_000, occurred_at=clock.now.isoformat()))
    assert r.status_code == 409 and r.get_json()["type"] == "/problems/period_closed"
    with pytest.raises(PeriodClosed):
        books.hold("r9", 10, member_id="m2")
    assert client.get("/v1/transactions/backdated").status_code == 404  # nothing was written
    books.assert_verified()


def test_reopening_needs_admin_and_a_reason_and_drops_the_stored_reports(client, app, books, runtime, clock):
    history(books)
    clock.now = JULY_1 + dt.timedelta(hours=1)
    client.post("/v1/finance/periods/2026-06/close")
    finance_only = app.test_client()
    key = make_key(runtime, "finance")
    r = finance_only.post(
        "/v1/finance/periods/2026-06/reopen",
        json={"reason": "late refunds"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403
    assert client.post("/v1/finance/periods/2026-06/reopen", json={}).get_json()["field"] == "reason"
    r = client.post("/v1/finance/periods/2026-06/reopen", json={"reason": "late refunds to book"})
    assert r.status_code == 200 and r.get_json()["reason"] == "late refunds to book"
    assert client.get("/v1/finance/periods").get_json()["closed"] == []
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(frozen_reports)).scalar_one() == 0
    actions = [line["action"] for line in client.get("/v1/audit?object_type=period").get_json()["entries"]]
    assert sorted(actions) == ["close", "reopen"]
    assert client.post("/v1/finance/periods/2026-06/reopen", json={"reason": "again"}).status_code == 404


@pytest.mark.committed
def test_verify_recomputes_every_closed_month_and_catches_a_stored_report_that_differs(
    client, books, runtime, clock, database_url
):
    history(books)
    clock.now = JULY_1 + dt.timedelta(hours=1)
    client.post("/v1/finance/periods/2026-06/close")
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url}
    loyalty = str(Path(sys.executable).with_name("loyalty"))
    result = subprocess.run([loyalty, "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "closed periods: 1 recomputed from the journal" in result.stdout
    with transaction(runtime.engine) as conn:
        fr = frozen_reports.c
        body = conn.execute(sa.select(fr.body).where(fr.report == "rollforward")).scalar_one()
        conn.execute(
            frozen_reports.update()
            .where(fr.report == "rollforward")
            .values(body=body.replace('"expired": 0', '"expired": 7'))
        )
    result = subprocess.run([loyalty, "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "FAIL closed period: 2026-06: the roll-forward differs" in result.stdout
