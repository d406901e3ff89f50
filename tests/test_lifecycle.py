"""Lifecycle stages across simulated months, birthday gifts, expiring-points notices, bulk imports."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loyalty import cli
from loyalty.jobs.runner import run_job
from loyalty.runtime import Runtime
from loyalty.tiers.sql import stage_bounds
from rules import default_programme
from rules.tiers import Lifecycle, stage
from tests.conftest import START
from tests.helpers import BANK_ZONE, enrol, txn

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ---- the stage rule itself ------------------------------------------------------------------------------------


LC = Lifecycle()
NOW = at(2027, 6, 15, 12)


@pytest.mark.parametrize(
    ("first", "last", "tier", "expected"),
    [
        (None, None, "basic", "acquisition"),
        (at(2027, 6, 1), at(2027, 6, 1), "basic", "activation"),
        (at(2027, 3, 18), at(2027, 6, 1), "basic", "activation"),  # 89 days ago
        (at(2027, 3, 17), at(2027, 6, 1), "basic", "growth"),  # 90 days and a bit
        (at(2026, 6, 15, 12), at(2027, 6, 1), "basic", "growth"),  # a year, but the floor tier
        (at(2026, 6, 15, 12), at(2027, 6, 1), "mass", "maturity"),
        (at(2026, 6, 15, 13), at(2027, 6, 1), "hnw", "growth"),  # an hour short of a year
        (at(2026, 1, 1), at(2027, 3, 15, 13), "hnw", "maturity"),
        (at(2026, 1, 1), at(2027, 3, 15, 12), "hnw", "decline"),  # three months to the minute
        (at(2026, 1, 1), at(2026, 12, 15, 13), "basic", "decline"),
        (at(2026, 1, 1), at(2026, 12, 15, 12), "basic", "win_back"),  # six months: churned
    ],
)
def test_stage_by_tenure_activity_and_tier(first, last, tier, expected):
    bounds = stage_bounds(LC, NOW, BANK_ZONE)
    assert stage(LC, first_transaction_at=first, last_transaction_at=last, tier=tier, bounds=bounds) == expected


# ---- across simulated months --------------------------------------------------------------------------------------


def stage_of(client: Any, member_id: str = "m1") -> str:
    return client.get(f"/v1/members/{member_id}").get_json()["lifecycle"]["stage"]  # type: ignore[no-any-return]


def daily(rt: Runtime, as_of: dt.datetime) -> dict[str, Any]:
    run = run_job(rt, "lifecycle", as_of)
    assert run["status"] == "succeeded", run
    return run


def test_a_member_moves_through_the_lifecycle_as_months_pass(client, runtime, clock):
    enrol(client)
    assert stage_of(client) == "acquisition"
    clock.advance(days=3)
    r = client.post("/v1/transactions", json=txn("t1", occurred_at=clock.now.isoformat()))
    assert r.status_code == 201
    assert stage_of(client) == "activation"  # at once, on the transaction

    clock.advance(days=80)
    client.post("/v1/transactions", json=txn("t2", occurred_at=clock.now.isoformat()))
    assert daily(runtime, clock.now)["rows"] == 0  # still within 90 days of the first
    clock.advance(days=20)
    assert daily(runtime, clock.now)["rows"] == 1
    assert stage_of(client) == "growth"
    assert daily(runtime, clock.now)["rows"] == 0  # idempotent

    clock.advance(days=93)  # three months after t2
    daily(runtime, clock.now)
    assert stage_of(client) == "decline"
    clock.advance(days=92)
    daily(runtime, clock.now)
    assert stage_of(client) == "win_back"

    clock.advance(days=1)
    client.post("/v1/transactions", json=txn("t3", occurred_at=clock.now.isoformat()))
    assert stage_of(client) == "growth"  # won back

    history = client.get("/v1/members/m1/history").get_json()["lifecycle"]
    assert [(h["from"], h["to"], h["source"]) for h in reversed(history)] == [
        (None, "acquisition", "event"),
        ("acquisition", "activation", "event"),
        ("activation", "growth", "job"),
        ("growth", "decline", "job"),
        ("decline", "win_back", "job"),
        ("win_back", "growth", "event"),
    ]
    with runtime.engine.connect() as conn:
        emitted = [
            json.loads(p)["to"]
            for (p,) in conn.execute(sa.text("SELECT payload FROM events WHERE type = 'lifecycle.changed' ORDER BY id"))
        ]
    assert emitted == ["acquisition", "activation", "growth", "decline", "win_back", "growth"]


def test_a_tenured_member_of_a_value_tier_reaches_maturity(client, runtime, clock):
    enrol(client, enrolled_at="2025-01-01T00:00:00Z")
    client.post("/v1/transactions", json=txn("t1", occurred_at="2025-02-01T00:00:00+00:00"))
    client.post("/v1/transactions", json=txn("t2", occurred_at=(START - dt.timedelta(days=2)).isoformat()))
    assert stage_of(client) == "growth"  # basic: not a maturity tier
    r = client.put(
        "/v1/members/m1/tier-override", json={"tier": "mass", "until": "2027-01-01T00:00:00Z", "reason": "branch VIP"}
    )
    assert r.status_code == 200
    assert stage_of(client) == "maturity"  # the tier change moves the stage at once


def test_the_daily_job_works_in_chunks_and_counts_changes(client, runtime, clock, monkeypatch):
    from loyalty.tiers import jobs

    monkeypatch.setattr(jobs, "CHUNK", 3)
    for i in range(8):
        enrol(client, f"m{i}")
        client.post("/v1/transactions", json=txn(f"t{i}", f"m{i}"))
    run = daily(runtime, START + dt.timedelta(days=91))
    assert run["rows"] == 8
    assert {stage_of(client, f"m{i}") for i in range(8)} == {"growth"}


# ---- birthdays ----------------------------------------------------------------------------------------------------


def birthday(rt: Runtime, as_of: dt.datetime) -> dict[str, Any]:
    run = run_job(rt, "birthdays", as_of)
    assert run["status"] == "succeeded", run
    return run


def entries(client: Any, member_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/members/{member_id}/entries").get_json()["entries"]  # type: ignore[no-any-return]


def test_birthday_gifts_are_given_once_per_year_however_often_the_job_runs(client, runtime):
    enrol(client, "vip", birth_date="1980-07-01")
    enrol(client, "plain", birth_date="1980-07-01")
    enrol(client, "other", birth_date="1980-07-02")
    r = client.put(
        "/v1/members/vip/tier-override", json={"tier": "hnw", "until": "2028-01-01T00:00:00Z", "reason": "VIP"}
    )
    assert r.status_code == 200
    morning = dt.datetime(2026, 7, 1, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # local midnight + 5
    first = birthday(runtime, morning)
    assert first["rows"] == 2
    assert first["detail"] == "2026-07-01: 2 birthdays, 1 gifts"
    assert birthday(runtime, morning + dt.timedelta(hours=5))["rows"] == 0
    gifts = [e for e in entries(client, "vip") if e["source_ref"].startswith("birthday")]
    assert [(g["source_ref"], g["points"]) for g in gifts] == [("birthday:2026", 2000)]
    assert not [e for e in entries(client, "plain") if e["source_ref"].startswith("birthday")]
    assert birthday(runtime, morning + dt.timedelta(days=365))["rows"] == 2  # next year, again once
    gifts = [e for e in entries(client, "vip") if e["source_ref"].startswith("birthday")]
    assert sorted(g["source_ref"] for g in gifts) == ["birthday:2026", "birthday:2027"]
    with runtime.engine.connect() as conn:
        greeted = conn.execute(
            sa.text("SELECT member_id, dedup_key FROM events WHERE type = 'member.birthday' ORDER BY id")
        ).all()
    assert [tuple(g) for g in greeted] == [
        ("plain", "member.birthday:2026"),
        ("vip", "member.birthday:2026"),
        ("plain", "member.birthday:2027"),
        ("vip", "member.birthday:2027"),
    ]


def test_members_born_on_29_february_celebrate_on_the_28th_in_common_years(client, runtime):
    enrol(client, "leap", birth_date="2000-02-29")
    assert birthday(runtime, at(2027, 2, 27, 17))["rows"] == 1  # 28 Feb in Shanghai
    assert birthday(runtime, at(2028, 2, 27, 17))["rows"] == 0  # 28 Feb of a leap year: not yet
    assert birthday(runtime, at(2028, 2, 28, 17))["rows"] == 1


# ---- points expiring -------------------------------------------------------------------------------------------------


def test_members_are_told_thirty_days_before_points_expire(client, runtime):
    enrol(client, "m1")  # the welcome bonus expires 24 months after enrolment
    expiry = dt.datetime(2028, 6, 15, 10, tzinfo=UTC)
    run = run_job(runtime, "points_expiring", expiry - dt.timedelta(days=30))
    assert run["rows"] == 1
    assert run_job(runtime, "points_expiring", expiry - dt.timedelta(days=30))["rows"] == 0
    assert run_job(runtime, "points_expiring", expiry - dt.timedelta(days=31))["rows"] == 0
    with runtime.engine.connect() as conn:
        payload = conn.execute(sa.text("SELECT payload FROM events WHERE type = 'points.expiring'")).scalar_one()
    assert json.loads(payload) == {"points": 500, "expires_on": "2028-06-15"}


# ---- the importer does what the API does -------------------------------------------------------------------------


def test_an_import_upgrades_members_and_writes_their_events(client, runtime, tmp_path):
    enrol(client, "young", birth_date="1996-01-01")
    enrol(client, "old", birth_date="1950-01-01")
    path = tmp_path / "day.csv"
    path.write_text(
        "transaction_id,member_id,type,amount,currency,occurred_at,channel,mcc,merchant\n"
        "i1,young,card_purchase,1200000,CNY,2026-06-14T10:00:00+08:00,app,,\n"
        "i2,old,card_purchase,1000,CNY,2026-06-14T11:00:00+08:00,branch,,\n"
        "i3,old,card_purchase,1000,CNY,2026-06-13T11:00:00+08:00,branch,,\n"
    )
    result = CliRunner().invoke(
        cli.main,
        ["import-transactions", str(path), "--no-progress"],
        env={"LOYALTY_DATABASE_URL": runtime.settings.database_url},
        obj=runtime,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    young = client.get("/v1/members/young").get_json()
    assert (young["tier"]["code"], young["lifecycle"]["stage"]) == ("potential", "activation")
    old = client.get("/v1/members/old").get_json()
    assert (old["tier"]["code"], old["lifecycle"]["stage"]) == ("basic", "activation")
    with runtime.engine.connect() as conn:
        accrued = conn.execute(
            sa.text("SELECT member_id, payload FROM events WHERE type = 'points.accrued' AND payload LIKE '%i%'")
        ).all()
        span = conn.execute(
            sa.text("SELECT first_transaction_at, last_transaction_at FROM members WHERE member_id = 'old'")
        ).one()
    imported = sorted(json.loads(p)["transaction_id"] for _m, p in accrued if "transaction_id" in json.loads(p))
    assert imported == ["i1", "i2", "i3"]
    assert [str(v)[:10] for v in span] == ["2026-06-13", "2026-06-14"]


def test_the_default_programme_documents_its_lifecycle():
    lc = default_programme().lifecycle
    assert (lc.activation_days, lc.decline_months, lc.churn_months) == (90, 3, 6)
