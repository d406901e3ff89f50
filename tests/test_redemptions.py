"""Redemptions and what a member can get, on both backends; races on PostgreSQL.

Benefits are rows inserted into ``benefits`` (:func:`add_benefit`), voucher
codes go in through :func:`loyalty.catalogue.codes.add_codes`. The ledger is
verified after every test.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.app import create_app
from loyalty.catalogue import codes
from loyalty.catalogue.models import STOCK, benefits, voucher_codes
from loyalty.config import Settings
from loyalty.db import make_engine, transaction
from loyalty.events.models import events
from loyalty.jobs import JOBS
from loyalty.jobs.runner import run_job
from loyalty.ledger import verify
from loyalty.ledger.models import accounts, holds, journal_entries, member_accounts, point_lots, postings
from loyalty.members import service as members_service
from loyalty.members.service import Enrolment
from loyalty.programmes.service import ProgrammeStore
from loyalty.records.models import members
from loyalty.redemption import states
from loyalty.redemption.jobs import settle
from loyalty.redemption.models import redemptions
from loyalty.runtime import Runtime
from tests.conftest import START, TEST_SECRET_KEY, Clock, make_key
from tests.contract import ContractClient
from tests.helpers import enrol, txn

BOX = codes.CodeBox(TEST_SECRET_KEY)
#: 2026-06-15 23:30 in Shanghai: half an hour before the local day ends (UTC is still mid-afternoon).
LATE_EVENING = dt.datetime(2026, 6, 15, 15, 30, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def verified(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every scenario leaves a ledger ``loyalty verify`` finds clean (a test that has no
    database, a test of settings, is not given one for this)."""
    if "backend" not in request.fixturenames:
        yield
        return
    runtime: Runtime = request.getfixturevalue("runtime")
    yield
    with transaction(runtime.engine, readonly=True) as conn:
        outcomes = verify.run(conn)
    assert all(o.ok for o in outcomes), verify.report(outcomes)


# ---- builders -------------------------------------------------------------------------------------------------


def add_benefit(rt: Runtime, code: str = "b1", **over: Any) -> None:
    """A benefit row: a bank-fulfilled voucher at 100 points, active, unlimited, no limits, not cancellable."""
    row: dict[str, Any] = {
        "code": code,
        "version": 1,
        "name": f"Benefit {code}",
        "description": "",
        "kind": "voucher",
        "fulfilment": "bank",
        "partner": None,
        "face_value": 1_000,
        "unit_cost": 800,
        "funding_source": "bank",
        "points_price": 100,
        "tier_prices": {},
        "eligible_tiers": [],
        "entitlements": {},
        "stock": None,
        "low_stock_threshold": None,
        "limits": {},
        "valid_from": None,
        "valid_until": None,
        "status": "active",
        "cancel_hours": 0,
        "updated_by": "test",
        "updated_at": rt.now(),
    }
    row.update(over)
    for name in ("tier_prices", "eligible_tiers", "entitlements", "limits"):
        row[name] = json.dumps(row[name])
    with transaction(rt.engine) as conn:
        conn.execute(benefits.insert().values(**row))
        # what creating a benefit through the catalogue also does
        conn.execute(accounts.insert().values(code=f"redeemed:{code}", kind="redeemed", name=f"Benefit {code}"))


def add_codes(rt: Runtime, benefit_code: str, *values: str) -> None:
    with transaction(rt.engine) as conn:
        assert codes.add_codes(conn, BOX, benefit_code, values, now=rt.now()) == (len(values), 0)


def set_tier(rt: Runtime, tier: str, member_id: str = "m1") -> None:
    with transaction(rt.engine) as conn:
        conn.execute(members.update().where(members.c.member_id == member_id).values(tier=tier))


def earn(client: ContractClient, points: int, transaction_id: str = "t1", member_id: str = "m1") -> None:
    """Book card spend worth ``points`` (a basic member earns 1 point per CNY)."""
    r = client.post("/v1/transactions", json=txn(transaction_id, member_id, points * 100))
    assert r.status_code == 201 and r.get_json()["points"] == points, r.get_json()


def redemption(redemption_id: str = "r1", member_id: str = "m1", benefit_code: str = "b1", **over: Any) -> dict:
    return {"redemption_id": redemption_id, "member_id": member_id, "benefit_code": benefit_code, **over}


def redeem(client: ContractClient, *args: Any, **kwargs: Any) -> Any:
    return client.post("/v1/redemptions", json=redemption(*args, **kwargs))


def refused(r: Any, code: str, status: int = 422) -> dict:
    assert r.status_code == status, r.get_json()
    assert r.content_type == "application/problem+json"
    problem = r.get_json()
    assert problem["type"] == f"/problems/{code}", problem
    return problem  # type: ignore[no-any-return]


def available_held(client: ContractClient, member_id: str = "m1") -> tuple[int, int]:
    """The member's available and held points; their balance owns both."""
    body = client.get(f"/v1/members/{member_id}").get_json()
    assert body["balance"] == body["available"] + body["held"]
    return body["available"], body["held"]


def rows(rt: Runtime, query: Any) -> list[tuple]:
    with transaction(rt.engine, readonly=True) as conn:
        return [tuple(r) for r in conn.execute(query)]


def lots(rt: Runtime, member_id: str = "m1") -> dict[str, int]:
    pl = point_lots.c
    return dict(rows(rt, sa.select(pl.id, pl.remaining).where(pl.member_id == member_id)))  # type: ignore[arg-type]


def stock(rt: Runtime, code: str = "b1") -> int | None:
    """The stock as the catalogue shows it (a pool's is its available codes)."""
    return rows(rt, sa.select(STOCK).where(benefits.c.code == code))[0][0]


def snapshot(rt: Runtime) -> dict[str, list[tuple]]:
    """Everything a redemption could write."""
    vc = voucher_codes.c
    tables = {
        "accounts": sa.select(member_accounts),
        "lots": sa.select(point_lots.c.id, point_lots.c.remaining),
        "stock": sa.select(benefits.c.code, benefits.c.stock),
        "codes": sa.select(vc.id, vc.status, vc.member_id, vc.redemption_id),
        "redemptions": sa.select(redemptions.c.id, redemptions.c.status),
        "holds": sa.select(holds.c.id, holds.c.status),
        "entries": sa.select(journal_entries.c.id),
        "keys": sa.text("SELECT scope, key FROM idempotency_keys"),
        "events": sa.select(events.c.id),
        "chart": sa.text("SELECT code FROM accounts"),
    }
    return {name: sorted(rows(rt, q), key=repr) for name, q in tables.items()}


def status_of(rt: Runtime, redemption_id: str = "r1") -> Any:
    r = redemptions.c
    with transaction(rt.engine, readonly=True) as conn:
        return conn.execute(sa.select(redemptions).where(r.id == redemption_id)).one()


# ---- redeeming at the tier's price ----------------------------------------------------------------------------


def test_a_bank_benefit_is_redeemed_at_the_tier_price_and_settled_at_once(client, runtime):
    enrol(client)
    add_benefit(runtime, points_price=300, tier_prices={"mass": 200})
    set_tier(runtime, "mass")
    r = redeem(client, quantity=2)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["points"] == 400 and body["quantity"] == 2 and body["entitlement"] is False
    assert body["status"] == "fulfilled" and body["reference"] == "BANK-r1"
    assert body["settled"] is True and body["cancellable"] is False and body["cancel_until"] is None
    assert body["benefit"] == {
        "code": "b1",
        "version": 1,
        "name": "Benefit b1",
        "kind": "voucher",
        "fulfilment": "bank",
    }
    assert body["voucher_codes"] == []
    assert body["fulfilled_at"] == START.isoformat().replace("+00:00", "Z")
    assert available_held(client) == (100, 0)
    # Not cancellable: spent at once, in one entry from the member to the benefit's own redeemed account.
    assert rows(runtime, sa.select(holds.c.id)) == []
    kinds = sa.select(journal_entries.c.kind).where(journal_entries.c.source_ref == "r1")
    assert rows(runtime, kinds) == [("capture",)]
    assert rows(runtime, sa.select(postings.c.amount).where(postings.c.account == "redeemed:b1")) == [(400,)]
    assert client.get("/v1/redemptions/r1").get_json() == body


def test_the_base_price_applies_to_tiers_without_their_own(client, runtime):
    enrol(client)
    add_benefit(runtime, points_price=300, tier_prices={"mass": 200})
    assert redeem(client).get_json()["points"] == 300


def test_eligible_tiers_decide_who_may_redeem(client, runtime):
    enrol(client)
    add_benefit(runtime, eligible_tiers=["potential", "hnw"])
    before = snapshot(runtime)
    problem = refused(redeem(client), "not_eligible")
    assert problem["field"] == "benefit_code" and problem["tier"] == "basic"
    assert snapshot(runtime) == before
    set_tier(runtime, "hnw")
    assert redeem(client).status_code == 201


def test_a_benefit_with_no_price_and_no_entitlement_for_the_tier_is_not_eligible(client, runtime):
    enrol(client)
    add_benefit(
        runtime,
        points_price=None,
        tier_prices={"hnw": 100},
        entitlements={"potential": {"quota": 1, "period": "month"}},
    )
    refused(redeem(client), "not_eligible")
    set_tier(runtime, "potential")
    assert redeem(client).get_json()["entitlement"] is True


# ---- entitlements ---------------------------------------------------------------------------------------------


def test_an_entitlement_is_free_within_its_quota_and_the_quota_resets_with_the_local_month(client, runtime, clock):
    enrol(client)
    add_benefit(
        runtime, "lounge", kind="experience", points_price=None, entitlements={"hnw": {"quota": 2, "period": "month"}}
    )
    set_tier(runtime, "hnw")
    clock.now = dt.datetime(2026, 6, 30, 15, 0, tzinfo=dt.UTC)  # 23:00 on 30 June in Shanghai
    first = redeem(client, "r1", benefit_code="lounge").get_json()
    assert (first["entitlement"], first["points"], first["status"]) == (True, 0, "fulfilled")
    assert redeem(client, "r2", benefit_code="lounge").status_code == 201
    assert available_held(client) == (500, 0)
    assert rows(runtime, sa.select(holds.c.id)) == []  # no points, no hold
    problem = refused(redeem(client, "r3", benefit_code="lounge"), "limit_reached")
    assert (problem["period"], problem["limit"], problem["remaining"]) == ("month", 2, 0)
    # 00:30 on 1 July in Shanghai, still 30 June in UTC: a new month for the programme.
    clock.now = dt.datetime(2026, 6, 30, 16, 30, tzinfo=dt.UTC)
    assert redeem(client, "r3", benefit_code="lounge").get_json()["entitlement"] is True


def test_past_the_quota_the_tier_price_applies_to_every_unit(client, runtime, clock):
    enrol(client)
    add_benefit(runtime, points_price=100, entitlements={"basic": {"quota": 1, "period": "day"}})
    assert (redeem(client, "r1").get_json()["points"], available_held(client)) == (0, (500, 0))
    second = redeem(client, "r2").get_json()
    assert (second["entitlement"], second["points"]) == (False, 100)
    clock.now = dt.datetime(2026, 6, 15, 16, 5, tzinfo=dt.UTC)  # the next local day
    # The renewed quota of one does not cover two: both are paid for.
    third = redeem(client, "r3", quantity=2).get_json()
    assert (third["entitlement"], third["points"]) == (False, 200)
    assert redeem(client, "r4").get_json()["entitlement"] is True
    assert available_held(client) == (200, 0)


def test_a_failed_or_cancelled_entitlement_gives_its_quota_back(client, runtime):
    enrol(client)
    add_benefit(runtime, points_price=None, cancel_hours=24, entitlements={"basic": {"quota": 1, "period": "year"}})
    assert redeem(client, "r1").status_code == 201
    refused(redeem(client, "r2"), "limit_reached")
    assert client.post("/v1/redemptions/r1/cancel").get_json()["status"] == "cancelled"
    assert redeem(client, "r2").get_json()["entitlement"] is True


# ---- limits ---------------------------------------------------------------------------------------------------


def test_personal_limits_count_local_days_and_months(client, runtime, clock):
    enrol(client)
    earn(client, 1_000)
    add_benefit(runtime, limits={"day": 1, "month": 2})
    clock.now = LATE_EVENING
    assert redeem(client, "r1").status_code == 201
    problem = refused(redeem(client, "r2"), "limit_reached")
    assert (problem["period"], problem["limit"], problem["remaining"], problem["field"]) == ("day", 1, 0, "quantity")
    clock.now = dt.datetime(2026, 6, 15, 16, 30, tzinfo=dt.UTC)  # 00:30 on 16 June in Shanghai, same UTC day
    assert redeem(client, "r2").status_code == 201
    clock.now = dt.datetime(2026, 6, 17, 2, 0, tzinfo=dt.UTC)
    problem = refused(redeem(client, "r3"), "limit_reached")
    assert (problem["period"], problem["remaining"]) == ("month", 0)
    clock.now = dt.datetime(2026, 6, 30, 16, 30, tzinfo=dt.UTC)  # 1 July in Shanghai
    assert redeem(client, "r3").status_code == 201
    assert available_held(client) == (1_200, 0)


def test_a_quantity_beyond_the_limit_is_refused_whole(client, runtime):
    enrol(client)
    add_benefit(runtime, limits={"year": 3})
    assert redeem(client, "r1", quantity=2).status_code == 201
    problem = refused(redeem(client, "r2", quantity=2), "limit_reached")
    assert (problem["period"], problem["limit"], problem["remaining"]) == ("year", 3, 1)
    assert redeem(client, "r2", quantity=1).status_code == 201


def test_failed_and_cancelled_redemptions_do_not_count_toward_limits(client, runtime):
    enrol(client)
    add_benefit(runtime, limits={"month": 1}, cancel_hours=24)
    add_benefit(runtime, "topup", kind="phone_credit", fulfilment="partner", partner="carrier", limits={"month": 1})
    assert redeem(client, "r1").status_code == 201
    assert client.post("/v1/redemptions/r1/cancel").status_code == 200
    assert redeem(client, "r2").status_code == 201
    assert redeem(client, "p1", benefit_code="topup", delivery={"phone_number": "13800138000"}).status_code == 201
    with transaction(runtime.engine) as conn:
        assert states.failed(conn, "m1", "p1", reason="carrier down", now=runtime.now())
    assert redeem(client, "p2", benefit_code="topup", delivery={"phone_number": "13800138000"}).status_code == 201


# ---- stock and validity ---------------------------------------------------------------------------------------


def test_stock_runs_out_and_a_low_stock_event_is_emitted_once(client, runtime):
    enrol(client)
    earn(client, 1_000)
    add_benefit(runtime, stock=4, low_stock_threshold=2)
    assert redeem(client, "r1").status_code == 201  # 3 left
    assert redeem(client, "r2", quantity=2).status_code == 201  # 1 left: below 2
    assert stock(runtime) == 1
    before = snapshot(runtime)
    problem = refused(redeem(client, "r3", quantity=2), "out_of_stock")
    assert problem["field"] == "benefit_code"
    assert snapshot(runtime) == before
    assert redeem(client, "r3").status_code == 201
    assert stock(runtime) == 0
    refused(redeem(client, "r4"), "out_of_stock")
    low = rows(runtime, sa.select(events.c.payload).where(events.c.type == "benefit.low_stock"))
    assert [json.loads(p) for (p,) in low] == [{"benefit_code": "b1", "stock": 1, "threshold": 2}]


def test_unlimited_stock_stays_null(client, runtime):
    enrol(client)
    add_benefit(runtime)
    assert redeem(client, quantity=3).status_code == 201
    assert stock(runtime) is None


@pytest.mark.parametrize(
    ("over", "moment"),
    [
        ({"valid_from": START + dt.timedelta(days=1)}, START + dt.timedelta(days=1)),
        ({"valid_until": START}, None),
        ({"status": "paused"}, None),
        ({"status": "draft"}, None),
        ({"status": "retired"}, None),
    ],
)
def test_a_benefit_outside_its_dates_or_not_active_is_inactive(client, runtime, clock, over, moment):
    enrol(client)
    add_benefit(runtime, **over)
    before = snapshot(runtime)
    refused(redeem(client), "benefit_inactive")
    assert snapshot(runtime) == before
    if moment is not None:
        clock.now = moment
        assert redeem(client).status_code == 201


def test_a_benefit_is_valid_until_just_before_its_end(client, runtime, clock):
    enrol(client)
    add_benefit(runtime, valid_from=START, valid_until=START + dt.timedelta(hours=1))
    clock.advance(minutes=59)
    assert redeem(client, "r1").status_code == 201
    clock.advance(minutes=1)
    refused(redeem(client, "r2"), "benefit_inactive")


# ---- every refusal writes nothing -----------------------------------------------------------------------------


REFUSALS: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    # name: (benefit fields, request fields, problem type, field)
    "unknown benefit": ({}, {"benefit_code": "nope"}, "benefit_not_found", "benefit_code"),
    "unknown member": ({}, {"member_id": "m404"}, "unknown_member", "member_id"),
    "inactive": ({"status": "paused"}, {}, "benefit_inactive", "benefit_code"),
    "not eligible": ({"eligible_tiers": ["hnw"]}, {}, "not_eligible", "benefit_code"),
    "limit": ({"limits": {"day": 1}}, {"quantity": 2}, "limit_reached", "quantity"),
    "stock": ({"stock": 1}, {"quantity": 2}, "out_of_stock", "benefit_code"),
    "points": ({"points_price": 300}, {"quantity": 2}, "insufficient_points", "quantity"),
    "delivery missing": (
        {"kind": "phone_credit", "fulfilment": "partner", "partner": "carrier"},
        {},
        "validation_error",
        "delivery.phone_number",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_names_its_type_and_writes_nothing(client, runtime, case):
    benefit, request, code, field = REFUSALS[case]
    enrol(client)
    add_benefit(runtime, **benefit)
    before = snapshot(runtime)
    problem = refused(redeem(client, **request), code)
    assert problem["field"] == field
    assert snapshot(runtime) == before
    # The id was not used up: the same redemption id can be sent again once it can succeed.
    assert client.get("/v1/redemptions/r1").status_code == 404


def test_insufficient_points_says_what_it_costs_and_what_there_is(client, runtime):
    enrol(client)
    add_benefit(runtime, "big", points_price=501)
    problem = refused(redeem(client, benefit_code="big"), "insufficient_points")
    assert (problem["required"], problem["available"]) == (501, 500)


def test_held_points_are_not_available_to_another_redemption(client, runtime):
    enrol(client)
    add_benefit(runtime, "topup", kind="phone_credit", fulfilment="partner", partner="carrier", points_price=400)
    assert redeem(client, "p1", benefit_code="topup", delivery={"phone_number": "13800138000"}).status_code == 201
    assert available_held(client) == (100, 400)
    refused(redeem(client, "p2", benefit_code="topup", delivery={"phone_number": "13800138000"}), "insufficient_points")


# ---- delivery -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "delivery", "field"),
    [
        ("phone_credit", None, "delivery.phone_number"),
        ("phone_credit", {}, "delivery.phone_number"),
        ("phone_credit", {"phone_number": "12800138000"}, "delivery.phone_number"),
        ("phone_credit", {"phone_number": "1380013800"}, "delivery.phone_number"),
        ("phone_credit", {"phone_number": "+8613800138000"}, "delivery.phone_number"),
        ("phone_credit", {"phone_number": 13800138000}, "delivery.phone_number"),
        ("phone_credit", {"account_ref": "acc-1"}, "delivery.account_ref"),
        ("membership", None, "delivery.account_ref"),
        ("membership", {"account_ref": ""}, "delivery.account_ref"),
        ("membership", {"account_ref": "   "}, "delivery.account_ref"),
        ("membership", {"account_ref": "a\nb"}, "delivery.account_ref"),
        ("membership", {"account_ref": "x" * 129}, "delivery.account_ref"),
        ("membership", {"phone_number": "13800138000"}, "delivery.phone_number"),
        ("membership", {"account_ref": "a", "email": "a@b.c"}, "delivery.email"),
        ("voucher", {"phone_number": "13800138000"}, "delivery.phone_number"),
    ],
)
def test_delivery_details_are_exactly_what_the_partner_needs(client, runtime, kind, delivery, field):
    enrol(client)
    add_benefit(runtime, kind=kind, fulfilment="partner", partner="p")
    before = snapshot(runtime)
    problem = refused(redeem(client, delivery=delivery), "validation_error")
    assert problem["field"] == field, problem
    assert snapshot(runtime) == before


def test_a_partner_redemption_waits_for_the_fulfilment_job_and_keeps_its_delivery(client, runtime, settings):
    enrol(client)
    add_benefit(runtime, "topup", kind="phone_credit", fulfilment="partner", partner="carrier", stock=5)
    r = redeem(client, benefit_code="topup", delivery={"phone_number": "13912345678"})
    assert r.status_code == 201
    body = r.get_json()
    assert (body["status"], body["partner"], body["reference"], body["fulfilled_at"]) == (
        "pending",
        "carrier",
        None,
        None,
    )
    row = status_of(runtime)
    assert json.loads(row.delivery) == {"phone_number": "13912345678"}
    assert row.next_attempt_at == START
    assert (
        row.deadline
        == START + dt.timedelta(seconds=settings.fulfilment_deadline_seconds)
        == START + dt.timedelta(minutes=10)
    )
    assert available_held(client) == (400, 100) and stock(runtime, "topup") == 4
    # What the fulfilment job does once the partner answers.
    with transaction(runtime.engine) as conn:
        assert states.fulfilled(conn, "m1", "r1", reference="CARRIER-77", now=runtime.now())
    done = client.get("/v1/redemptions/r1").get_json()
    assert (done["status"], done["reference"], done["settled"]) == ("fulfilled", "CARRIER-77", True)
    assert available_held(client) == (400, 0)


def test_a_failed_partner_redemption_gives_points_and_stock_back(client, runtime):
    enrol(client)
    add_benefit(runtime, "vip", kind="membership", fulfilment="partner", partner="video", stock=5, points_price=250)
    lots_before = lots(runtime)
    assert redeem(client, benefit_code="vip", delivery={"account_ref": "user@example.com"}).status_code == 201
    with transaction(runtime.engine) as conn:
        assert states.failed(conn, "m1", "r1", reason="account unknown to the partner", now=runtime.now())
    body = client.get("/v1/redemptions/r1").get_json()
    assert (body["status"], body["failure_reason"], body["cancellable"]) == (
        "failed",
        "account unknown to the partner",
        False,
    )
    assert available_held(client) == (500, 0) and stock(runtime, "vip") == 5 and lots(runtime) == lots_before
    assert refused(client.post("/v1/redemptions/r1/cancel"), "not_cancellable", 409)["reason"] == "failed"


def test_the_fulfilment_deadline_setting_is_read_from_the_environment():
    assert Settings.from_env({}).fulfilment_deadline_seconds == 600
    assert Settings.from_env({"LOYALTY_FULFILMENT_DEADLINE_SECONDS": "90"}).fulfilment_deadline_seconds == 90
    for bad in ("0", "-5", "ten"):
        with pytest.raises(ValueError, match="LOYALTY_FULFILMENT_DEADLINE_SECONDS"):
            Settings.from_env({"LOYALTY_FULFILMENT_DEADLINE_SECONDS": bad})


# ---- voucher codes --------------------------------------------------------------------------------------------


def test_voucher_codes_are_shown_to_the_redeemer_and_stored_only_sealed(client, runtime):
    enrol(client)
    add_benefit(runtime, "coffee", fulfilment="pool", points_price=50)
    add_codes(runtime, "coffee", "COFFEE-0001", "COFFEE-0002", "COFFEE-0003")
    assert stock(runtime, "coffee") == 3
    r = client.post(
        "/v1/redemptions", json=redemption(benefit_code="coffee", quantity=2), headers={"Idempotency-Key": "k1"}
    )
    assert r.status_code == 201
    body = r.get_json()
    shown = body["voucher_codes"]
    assert shown == ["COFFEE-0001", "COFFEE-0002"]  # in upload order
    assert (body["status"], body["points"]) == ("fulfilled", 100)
    assert stock(runtime, "coffee") == 1
    assert client.get("/v1/redemptions/r1").get_json()["voucher_codes"] == shown
    # Stored sealed: no column of any row holds a code in clear, nor does the stored answer or any event.
    stored = rows(runtime, sa.select(voucher_codes))
    for row in stored:
        for value in row:
            assert not any(code in str(value) for code in ("COFFEE-0001", "COFFEE-0002", "COFFEE-0003"))
    issued = rows(runtime, sa.select(voucher_codes.c.secret).where(voucher_codes.c.redemption_id == "r1"))
    assert sorted(BOX.open("coffee", s) for (s,) in issued) == sorted(shown)
    dumped = rows(runtime, sa.text("SELECT response_body FROM idempotency_keys")) + rows(
        runtime, sa.select(events.c.payload)
    )
    assert not any(code in str(dumped) for code in shown)
    # A retry with the Idempotency-Key shows the same codes again, and takes no more.
    again = client.post(
        "/v1/redemptions", json=redemption(benefit_code="coffee", quantity=2), headers={"Idempotency-Key": "k1"}
    )
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (201, "true")
    assert again.get_json() == body
    assert stock(runtime, "coffee") == 1 and available_held(client) == (400, 0)


def test_a_read_only_key_learns_that_codes_exist_but_never_their_text(client, runtime, app):
    enrol(client)
    add_benefit(runtime, "coffee", fulfilment="pool", points_price=50)
    add_codes(runtime, "coffee", "COFFEE-0001", "COFFEE-0002", "COFFEE-0003")
    body = redeem(client, benefit_code="coffee", quantity=2).get_json()
    shown = body["voucher_codes"]
    reader = ContractClient(app.test_client(), make_key(runtime, "read"))
    seen = reader.get("/v1/redemptions/r1")
    assert seen.status_code == 200
    assert not any(code in seen.get_data(as_text=True) for code in ("COFFEE-0001", "COFFEE-0002", "COFFEE-0003"))
    answer = seen.get_json()
    assert (answer["voucher_count"], answer["voucher_codes"], answer["status"]) == (2, None, "fulfilled")
    assert body["voucher_count"] == 2 and len(shown) == 2
    # The channel acting for the member, with `redeem`, sees them; so does a key with both scopes.
    for scopes in (("redeem",), ("read", "redeem")):
        redeemer = ContractClient(app.test_client(), make_key(runtime, *scopes))
        assert redeemer.get("/v1/redemptions/r1").get_json()["voucher_codes"] == shown
    # A benefit without codes: none to count, nothing hidden.
    add_benefit(runtime, "lounge")
    redeem(client, "r2", benefit_code="lounge")
    other = reader.get("/v1/redemptions/r2").get_json()
    assert (other["voucher_count"], other["voucher_codes"]) == (0, None)
    # Once cancelled, the codes are back in the pool: none issued to it.
    add_benefit(runtime, "tea", fulfilment="pool", points_price=10, cancel_hours=24)
    add_codes(runtime, "tea", "TEA-0001")
    redeem(client, "r3", benefit_code="tea")
    cancelled = client.post("/v1/redemptions/r3/cancel").get_json()
    assert (cancelled["voucher_count"], cancelled["voucher_codes"]) == (0, [])
    assert reader.get("/v1/redemptions/r3").get_json()["voucher_count"] == 0


def test_codes_go_to_one_redemption_each_until_the_pool_is_empty(client, runtime):
    enrol(client)
    enrol(client, "m2")
    add_benefit(runtime, "coffee", fulfilment="pool", points_price=10)
    add_codes(runtime, "coffee", "A", "B", "C")
    got = [redeem(client, f"r{i}", member_id=f"m{1 + i % 2}", benefit_code="coffee").get_json() for i in range(3)]
    assert [body["voucher_codes"] for body in got] == [["A"], ["B"], ["C"]]
    refused(redeem(client, "r3", benefit_code="coffee"), "out_of_stock")


def test_codes_are_issued_in_upload_order_across_uploads_at_the_same_moment(client, runtime, clock):
    """Neither the codes themselves nor the upload time order them: two uploads at one moment
    (the clock stands still) are issued first upload first, each in its file's order; a code a
    cancellation gives back is issued again before later ones."""
    enrol(client)
    add_benefit(runtime, "coffee", fulfilment="pool", points_price=10, cancel_hours=24)
    add_codes(runtime, "coffee", "Z-9", "M-5", "A-1")
    add_codes(runtime, "coffee", "Y-8", "B-2")
    first = redeem(client, "r1", benefit_code="coffee", quantity=2).get_json()
    assert first["voucher_codes"] == ["Z-9", "M-5"]
    assert client.post("/v1/redemptions/r1/cancel").status_code == 200
    issued = [redeem(client, f"r{i}", benefit_code="coffee").get_json()["voucher_codes"] for i in range(2, 7)]
    assert issued == [["Z-9"], ["M-5"], ["A-1"], ["Y-8"], ["B-2"]]
    vc = voucher_codes.c
    assert rows(runtime, sa.select(vc.position).order_by(vc.position)) == [(1,), (2,), (3,), (4,), (5,)]


# ---- cancellation and settlement ------------------------------------------------------------------------------


def test_cancelling_returns_points_to_the_exact_lots_codes_to_the_pool_and_stock(client, runtime, clock):
    enrol(client)
    earn(client, 300)  # earned an hour before the welcome bonus: expires first, spent first
    add_benefit(runtime, "coffee", fulfilment="pool", points_price=200, cancel_hours=24)
    add_codes(runtime, "coffee", "CODE-1", "CODE-2")
    before = lots(runtime)
    body = redeem(client, benefit_code="coffee", quantity=2).get_json()
    assert body["cancellable"] is True
    assert body["cancel_until"] == (START + dt.timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    spent = lots(runtime)
    assert sorted(before[k] - spent[k] for k in before) == [100, 300]
    assert available_held(client) == (400, 400) and stock(runtime, "coffee") == 0
    clock.advance(hours=23, minutes=59)
    r = client.post("/v1/redemptions/r1/cancel")
    assert r.status_code == 200
    assert (r.get_json()["status"], r.get_json()["voucher_codes"], r.get_json()["cancellable"]) == (
        "cancelled",
        [],
        False,
    )
    assert lots(runtime) == before
    assert available_held(client) == (800, 0) and stock(runtime, "coffee") == 2
    assert rows(
        runtime, sa.select(voucher_codes.c.status, voucher_codes.c.member_id, voucher_codes.c.redemption_id)
    ) == [
        ("available", None, None),
        ("available", None, None),
    ]
    assert client.get("/v1/redemptions/r1").get_json()["voucher_codes"] == []
    # The returned codes go to the next redeemer, still in upload order.
    assert redeem(client, "r2", benefit_code="coffee", quantity=2).get_json()["voucher_codes"] == ["CODE-1", "CODE-2"]
    kinds = rows(runtime, sa.select(events.c.type).where(events.c.type.like("redemption.%")).order_by(events.c.id))
    assert kinds == [("redemption.fulfilled",), ("redemption.cancelled",), ("redemption.fulfilled",)]


def test_cancelling_is_refused_after_the_window_and_after_settlement(client, runtime, clock):
    enrol(client)
    add_benefit(runtime, cancel_hours=2)
    assert redeem(client).get_json()["cancellable"] is True
    clock.advance(hours=2)
    assert client.get("/v1/redemptions/r1").get_json()["cancellable"] is False
    before = snapshot(runtime)
    problem = refused(client.post("/v1/redemptions/r1/cancel"), "not_cancellable", 409)
    assert problem["reason"] == "window_closed"
    assert snapshot(runtime) == before
    assert settle(runtime, clock.now).rows == 1
    assert refused(client.post("/v1/redemptions/r1/cancel"), "not_cancellable", 409)["reason"] == "settled"


@pytest.mark.parametrize(
    ("benefit", "request_", "reason"),
    [
        ({}, {}, "settled"),  # cancel_hours 0: settled when fulfilled
        (
            {"kind": "phone_credit", "fulfilment": "partner", "partner": "c"},
            {"delivery": {"phone_number": "13800138000"}},
            "pending",
        ),
    ],
)
def test_cancelling_needs_a_fulfilled_unsettled_redemption(client, runtime, benefit, request_, reason):
    enrol(client)
    add_benefit(runtime, **benefit)
    assert redeem(client, **request_).status_code == 201
    assert refused(client.post("/v1/redemptions/r1/cancel"), "not_cancellable", 409)["reason"] == reason


def test_cancelling_twice_is_refused_unless_replayed_by_idempotency_key(client, runtime):
    enrol(client)
    add_benefit(runtime, cancel_hours=1)
    redeem(client)
    first = client.post("/v1/redemptions/r1/cancel", headers={"Idempotency-Key": "c1"})
    assert first.status_code == 200
    again = client.post("/v1/redemptions/r1/cancel", headers={"Idempotency-Key": "c1"})
    assert (again.status_code, again.headers["Idempotent-Replayed"], again.get_json()) == (
        200,
        "true",
        first.get_json(),
    )
    assert refused(client.post("/v1/redemptions/r1/cancel"), "not_cancellable", 409)["reason"] == "cancelled"
    assert refused(client.post("/v1/redemptions/nope/cancel"), "redemption_not_found", 404)["field"] == "redemption_id"
    assert available_held(client) == (500, 0)


def test_the_settle_job_captures_holds_once_their_window_has_ended(client, runtime, clock):
    enrol(client)
    enrol(client, "m2")
    add_benefit(runtime, cancel_hours=24)
    add_benefit(runtime, "quick", cancel_hours=1)
    assert redeem(client, "r1").status_code == 201
    assert redeem(client, "r2", member_id="m2", benefit_code="quick").status_code == 201
    assert redeem(client, "r3", member_id="m2").status_code == 201
    assert available_held(client) == (400, 100)
    assert settle(runtime, START + dt.timedelta(minutes=59)).rows == 0
    assert settle(runtime, START + dt.timedelta(hours=1)).rows == 1
    assert available_held(client, "m2") == (300, 100)
    clock.advance(hours=24)
    run = run_job(runtime, "redemptions")
    assert (run["status"], run["rows"], run["detail"]) == ("succeeded", 2, "2 redemptions settled")
    assert available_held(client) == (400, 0) and available_held(client, "m2") == (300, 0)
    assert rows(runtime, sa.select(holds.c.status).distinct()) == [("captured",)]
    assert sorted(
        rows(runtime, sa.select(postings.c.account, postings.c.amount).where(postings.c.account.like("redeemed:%")))
    ) == [
        ("redeemed:b1", 100),
        ("redeemed:b1", 100),
        ("redeemed:quick", 100),
    ]
    body = client.get("/v1/redemptions/r1").get_json()
    assert (body["settled"], body["cancel_until"], body["cancellable"]) == (True, None, False)
    assert run_job(runtime, "redemptions")["rows"] == 0  # idempotent


def test_the_settle_job_leaves_cancelled_redemptions_and_is_declared(client, runtime, clock):
    enrol(client)
    add_benefit(runtime, cancel_hours=1)
    redeem(client)
    client.post("/v1/redemptions/r1/cancel")
    clock.advance(hours=2)
    assert settle(runtime, clock.now).rows == 0
    assert available_held(client) == (500, 0)
    job = JOBS["redemptions"]
    assert (job.target, job.schedule) == ("loyalty.redemption.jobs:settle", {"trigger": "interval", "seconds": 60})


def test_the_settle_job_works_in_chunks(client, runtime, clock, monkeypatch):
    import loyalty.redemption.jobs as jobs

    monkeypatch.setattr(jobs, "CHUNK", 2)
    for m in ("m1", "m2", "m3"):
        enrol(client, m)
    add_benefit(runtime, cancel_hours=1)
    for i in range(5):
        assert redeem(client, f"r{i}", member_id=f"m{1 + i % 3}").status_code == 201
    clock.advance(hours=1)
    assert settle(runtime, clock.now).rows == 5
    assert rows(runtime, sa.select(sa.func.count()).where(redemptions.c.settled.is_(True))) == [(5,)]


# ---- idempotency ----------------------------------------------------------------------------------------------


def test_the_same_redemption_id_replays_and_redeems_once(client, runtime, clock):
    enrol(client)
    add_benefit(runtime, cancel_hours=1)
    first = redeem(client, quantity=2)
    assert first.status_code == 201
    clock.advance(minutes=5)
    again = redeem(client, quantity=2)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert again.get_json() == first.get_json()
    assert available_held(client) == (300, 200)
    # Sending it again with the quantity spelled out is the same request.
    add_benefit(runtime, "b2")
    assert redeem(client, "x1", benefit_code="b2").status_code == 201
    assert redeem(client, "x1", benefit_code="b2", quantity=1).status_code == 200


def test_a_redemption_id_reused_with_another_body_or_member_is_a_conflict(client, runtime):
    enrol(client)
    enrol(client, "m2")
    add_benefit(runtime)
    redeem(client)
    before = snapshot(runtime)
    for over in ({"quantity": 2}, {"member_id": "m2"}, {"benefit_code": "other"}):
        problem = refused(redeem(client, **over), "idempotency_conflict", 409)
        assert problem["field"] == "redemption_id"
    assert snapshot(runtime) == before


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(client, runtime):
    enrol(client)
    add_benefit(runtime)
    assert client.post("/v1/redemptions", json=redemption("r1"), headers={"Idempotency-Key": "k"}).status_code == 201
    r = client.post("/v1/redemptions", json=redemption("r2"), headers={"Idempotency-Key": "k"})
    assert refused(r, "idempotency_conflict", 409)["field"] == "Idempotency-Key"
    assert available_held(client) == (400, 0)


# ---- reading --------------------------------------------------------------------------------------------------


def test_a_redemption_is_read_with_the_redeem_or_read_scope(client, runtime, app):
    enrol(client)
    add_benefit(runtime)
    redeem(client)
    for scopes, status in ((("read",), 200), (("redeem",), 200), (("accrue",), 403)):
        other = ContractClient(app.test_client(), make_key(runtime, *scopes))
        assert other.get("/v1/redemptions/r1").status_code == status
    assert refused(client.get("/v1/redemptions/r404"), "redemption_not_found", 404)["field"] == "redemption_id"
    read_only = ContractClient(app.test_client(), make_key(runtime, "read"))
    assert read_only.post("/v1/redemptions", json=redemption("r2")).status_code == 403
    assert read_only.post("/v1/redemptions/r1/cancel").status_code == 403
    assert client.get("/v1/redemptions/r1", key=None).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"member_id": "m1", "benefit_code": "b1"}, "redemption_id"),
        (redemption(quantity=0), "quantity"),
        (redemption(quantity=11), "quantity"),
        (redemption(quantity="1"), "quantity"),
        (redemption(quantity=True), "quantity"),
        (redemption(quantity=1.5), "quantity"),  # 1.0 is the integer 1, as JSON Schema counts it
        (redemption(benefit_code="b 1"), "benefit_code"),
        (redemption(member_id=""), "member_id"),
        (redemption(redemption_id="x" * 65), "redemption_id"),
        (redemption(delivery="13800138000"), "delivery"),
        (redemption(colour="red"), "colour"),
        ([redemption()], "body"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, runtime, body, field):
    enrol(client)
    add_benefit(runtime)
    before = snapshot(runtime)
    problem = refused(client.post("/v1/redemptions", json=body), "validation_error")
    assert problem["field"] == field
    assert snapshot(runtime) == before


def test_a_body_that_is_not_json_is_refused(client, runtime):
    assert client.post("/v1/redemptions", data="{", content_type="application/json").status_code == 400
    assert client.post("/v1/redemptions", data="x", content_type="text/plain").status_code == 415


# ---- what a member can get ------------------------------------------------------------------------------------


def test_the_member_benefits_list_shows_prices_quotas_stock_limits_and_reasons(client, runtime, clock):
    enrol(client)
    set_tier(runtime, "potential")
    add_benefit(runtime, "a-open", points_price=100, tier_prices={"potential": 80}, description="any tier")
    add_benefit(runtime, "b-hnw", eligible_tiers=["hnw"])
    add_benefit(runtime, "c-sold", stock=0)
    add_benefit(runtime, "d-dear", points_price=1_000, stock=7)
    add_benefit(runtime, "e-capped", limits={"day": 5, "month": 1})
    add_benefit(
        runtime,
        "f-lecture",
        kind="experience",
        points_price=None,
        entitlements={"potential": {"quota": 1, "period": "month"}},
    )
    add_benefit(runtime, "g-gym", points_price=300, entitlements={"potential": {"quota": 1, "period": "year"}})
    add_benefit(runtime, "h-paused", status="paused")
    add_benefit(runtime, "i-later", valid_from=START + dt.timedelta(days=1))
    add_benefit(runtime, "j-ended", valid_until=START)
    add_benefit(runtime, "k-none", points_price=None)
    add_benefit(runtime, "l-topup", kind="phone_credit", fulfilment="partner", partner="c", cancel_hours=2)
    assert redeem(client, "r1", benefit_code="e-capped").status_code == 201
    assert redeem(client, "r2", benefit_code="f-lecture").status_code == 201
    r = client.get("/v1/members/m1/benefits")
    assert r.status_code == 200
    body = r.get_json()
    assert (body["member_id"], body["tier"], body["available_points"]) == ("m1", "potential", 400)
    by_code = {b["code"]: b for b in body["benefits"]}
    assert list(by_code) == [
        "a-open",
        "b-hnw",
        "c-sold",
        "d-dear",
        "e-capped",
        "f-lecture",
        "g-gym",
        "k-none",
        "l-topup",
    ]
    summary = {c: (b["available"], b["reasons"], b["price"], b["points"]) for c, b in by_code.items()}
    assert summary == {
        "a-open": (True, [], 80, 80),
        "b-hnw": (False, ["not_eligible"], None, None),
        "c-sold": (False, ["out_of_stock"], 100, 100),
        "d-dear": (False, ["insufficient_points"], 1_000, 1_000),
        "e-capped": (False, ["limit_reached"], 100, 100),
        "f-lecture": (False, ["limit_reached"], None, None),
        "g-gym": (True, [], 300, 0),
        "k-none": (False, ["not_eligible"], None, None),
        "l-topup": (True, [], 100, 100),
    }
    assert by_code["a-open"]["description"] == "any tier" and by_code["a-open"]["stock"] is None
    assert by_code["d-dear"]["stock"] == 7
    assert by_code["e-capped"]["limits"] == [
        {"period": "day", "limit": 5, "used": 1, "remaining": 4},
        {"period": "month", "limit": 1, "used": 1, "remaining": 0},
    ]
    assert by_code["f-lecture"]["entitlement"] == {"quota": 1, "period": "month", "used": 1, "remaining": 0}
    assert by_code["g-gym"]["entitlement"] == {"quota": 1, "period": "year", "used": 0, "remaining": 1}
    assert by_code["a-open"]["entitlement"] is None
    assert (by_code["l-topup"]["delivery"], by_code["l-topup"]["cancel_hours"]) == ("phone_number", 2)
    assert by_code["a-open"]["delivery"] is None
    # What the list says is what a redemption finds.
    for code, b in by_code.items():
        delivery = {"delivery": {"phone_number": "13800138000"}} if b["delivery"] else {}
        r = redeem(client, f"try-{code}", benefit_code=code, **delivery)
        if b["available"]:
            assert (r.status_code, r.get_json()["points"]) == (201, b["points"])
        else:
            assert r.get_json()["type"] == f"/problems/{b['reasons'][0]}"
    # A new local month renews the quota and the monthly limit.
    clock.now = dt.datetime(2026, 6, 30, 16, 0, tzinfo=dt.UTC)
    renewed = {b["code"]: b for b in client.get("/v1/members/m1/benefits").get_json()["benefits"]}
    assert renewed["f-lecture"]["available"] and renewed["f-lecture"]["points"] == 0
    assert renewed["e-capped"]["available"] and renewed["e-capped"]["limits"][1]["remaining"] == 1


def test_the_member_benefits_list_needs_an_enrolled_member_and_the_read_scope(client, runtime, app):
    assert refused(client.get("/v1/members/m404/benefits"), "member_not_found", 404)["field"] == "member_id"
    enrol(client)
    redeem_only = ContractClient(app.test_client(), make_key(runtime, "redeem"))
    assert redeem_only.get("/v1/members/m1/benefits").status_code == 403
    assert client.get("/v1/members/m1/benefits").get_json()["benefits"] == []


# ---- races on PostgreSQL --------------------------------------------------------------------------------------


WORKERS = 32


@pytest.fixture
def rt(settings: Settings, clock: Clock) -> Iterator[Runtime]:
    """A runtime whose pool has a connection for every worker."""
    engine = make_engine(settings.database_url, pool_size=WORKERS + 4, max_overflow=0)
    runtime = Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock)
    yield runtime
    runtime.engine.dispose()


def race(work: Callable[[int], Any]) -> list[Any]:
    """``work(0..WORKERS-1)`` in as many threads, released together."""
    barrier = threading.Barrier(WORKERS)

    def start(i: int) -> Any:
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(start, range(WORKERS), timeout=180))


def poster(rt: Runtime) -> Callable[[dict], tuple[int, dict]]:
    app = create_app(rt)
    auth = {"Authorization": f"Bearer {make_key(rt)}"}

    def post(body: dict) -> tuple[int, dict]:
        r = app.test_client().post("/v1/redemptions", json=body, headers=auth)
        return r.status_code, r.get_json()

    return post


def enrol_members(rt: Runtime, *member_ids: str) -> None:
    with transaction(rt.engine) as conn:
        for m in member_ids:
            members_service.enrol(conn, Enrolment(m), programme=rt.programme, now=rt.now())


def outcomes(results: list[tuple[int, dict]]) -> Counter[str]:
    return Counter("ok" if status == 201 else body["type"].rsplit("/", 1)[-1] for status, body in results)


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_32_members_racing_for_the_last_unit_one_gets_it(rt):
    post = poster(rt)
    enrol_members(rt, *[f"m{i}" for i in range(WORKERS)])
    add_benefit(rt, stock=1)
    results = race(lambda i: post(redemption(f"r{i}", f"m{i}")))
    assert outcomes(results) == {"ok": 1, "out_of_stock": WORKERS - 1}
    assert stock(rt) == 0
    assert rows(rt, sa.select(sa.func.count()).select_from(redemptions)) == [(1,)]
    assert rows(rt, sa.select(sa.func.sum(member_accounts.c.balance))) == [(500 * WORKERS - 100,)]


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_32_members_racing_for_three_codes_get_one_each(rt):
    post = poster(rt)
    enrol_members(rt, *[f"m{i}" for i in range(WORKERS)])
    add_benefit(rt, "coffee", fulfilment="pool", points_price=10)
    add_codes(rt, "coffee", "A", "B", "C")
    results = race(lambda i: post(redemption(f"r{i}", f"m{i}", "coffee")))
    assert outcomes(results) == {"ok": 3, "out_of_stock": WORKERS - 3}
    assert sorted(c for status, body in results if status == 201 for c in body["voucher_codes"]) == ["A", "B", "C"]
    assert stock(rt, "coffee") == 0


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_32_redemptions_against_one_balance_never_overdraw(rt):
    post = poster(rt)
    enrol_members(rt, "m1")  # 500 points
    add_benefit(rt, points_price=70)
    results = race(lambda i: post(redemption(f"r{i}")))
    won = [body for status, body in results if status == 201]
    assert outcomes(results) == {"ok": 7, "insufficient_points": WORKERS - 7}
    assert sum(body["points"] for body in won) == 490
    assert rows(rt, sa.select(member_accounts.c.balance, member_accounts.c.held)) == [(10, 0)]
    assert min(b for (b,) in rows(rt, sa.select(journal_entries.c.balance_after))) >= 0
    assert rows(rt, sa.select(sa.func.sum(postings.c.amount)).where(postings.c.account == "redeemed:b1")) == [(490,)]


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_a_member_racing_themselves_at_the_edge_of_a_monthly_limit_gets_one_more(rt):
    post = poster(rt)
    enrol_members(rt, "m1")
    add_benefit(rt, points_price=1, limits={"month": 5})
    assert post(redemption("r-first", quantity=4))[0] == 201
    results = race(lambda i: post(redemption(f"r{i}")))
    assert outcomes(results) == {"ok": 1, "limit_reached": WORKERS - 1}
    live = rows(
        rt, sa.select(sa.func.sum(redemptions.c.quantity)).where(redemptions.c.status.in_(["pending", "fulfilled"]))
    )
    assert live == [(5,)]
    assert rows(rt, sa.select(member_accounts.c.balance)) == [(495,)]


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_the_same_redemption_from_32_clients_redeems_once(rt):
    post = poster(rt)
    enrol_members(rt, "m1")
    add_benefit(rt, "coffee", fulfilment="pool", points_price=10)
    add_codes(rt, "coffee", "A", "B")
    results = race(lambda i: post(redemption(benefit_code="coffee")))
    assert sorted(status for status, _ in results) == [200] * (WORKERS - 1) + [201]
    assert all(body == results[0][1] for _, body in results)
    assert len(results[0][1]["voucher_codes"]) == 1
    assert stock(rt, "coffee") == 1
    assert rows(rt, sa.select(member_accounts.c.balance)) == [(490,)]
