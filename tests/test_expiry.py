"""Points expiry: policies as data, the daily expiry job, and expired points never spent."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from loyalty import calendar
from loyalty.accrual import service as accrual
from loyalty.accrual.service import TransactionCommand
from loyalty.db import transaction
from loyalty.errors import InsufficientPoints
from loyalty.events.models import events
from loyalty.jobs.runner import run_job
from loyalty.ledger import service as ledger
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.runtime import Runtime
from rules import RuleError, default_document, load_programme
from rules.expiry import Expiry
from tests.helpers import BASE, enrol, txn
from tests.test_ledger import WELCOME, Books

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SHANGHAI)


def programme(**changes: Any) -> Any:
    doc = default_document()
    doc["version"] = "expiry-test"
    doc.pop("expiry", None)
    doc.update(changes)
    return load_programme(doc)


# ---- policies ---------------------------------------------------------------------------------------------------


def test_the_default_programme_keeps_points_24_months():
    assert load_programme(default_document()).expiry == Expiry("rolling", months=24)


def test_the_older_expiry_months_means_rolling_months():
    assert programme(expiry_months=6).expiry == Expiry("rolling", months=6)


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"expiry": {"policy": "monthly"}}, "$.expiry.policy", "must be one of rolling, end_of_year, never"),
        ({"expiry": {"policy": "rolling"}}, "$.expiry.months", "must be an integer"),
        ({"expiry": {"policy": "rolling", "months": 0}}, "$.expiry.months", "must be positive"),
        ({"expiry": {"policy": "end_of_year", "months": 3}}, "$.expiry.months", "unknown field"),
        ({"expiry": {"policy": "never", "years": 1}}, "$.expiry.years", "unknown field"),
        ({"expiry": {"policy": "never"}, "expiry_months": 3}, "$.expiry_months", "not both"),
        ({}, "$.expiry", "is required"),
    ],
)
def test_a_bad_expiry_policy_is_refused_with_its_path(changes, path, message):
    with pytest.raises(RuleError) as err:
        programme(**changes)
    assert err.value.path == path
    assert message in err.value.message


def test_a_tier_may_override_the_programme_policy_and_the_document_round_trips():
    doc = default_document()
    hnw = next(level for level in doc["tiers"]["levels"] if level["code"] == "hnw")
    hnw["expiry"] = {"policy": "never"}
    p = load_programme(doc)
    assert p.expiry_for("hnw") == Expiry("never", months=0)
    assert p.expiry_for("mass") == p.expiry_for(None) == Expiry("rolling", months=24)
    from rules import dump_programme

    assert load_programme(dump_programme(p)) == p


def test_a_tier_expiry_is_checked_with_its_path():
    doc = default_document()
    doc["tiers"]["levels"][0]["expiry"] = {"policy": "sometimes"}
    with pytest.raises(RuleError) as err:
        load_programme(doc)
    assert err.value.path == "$.tiers.levels[0].expiry.policy"


def test_rolling_expiry_counts_local_months():
    p = programme(expiry={"policy": "rolling", "months": 6})
    assert ledger.lot_expiry(p, local(2026, 3, 1, 5), "basic") == local(2026, 9, 1, 5)


def test_end_of_year_points_earned_in_2026_under_one_year_lapse_when_2028_begins_locally():
    p = programme(expiry={"policy": "end_of_year", "years": 1})
    for earned in (local(2026, 1, 1, 0, 0), local(2026, 12, 31, 23, 59)):
        assert ledger.lot_expiry(p, earned, "basic") == local(2028, 1, 1)
    # 20:00 UTC on 31 December 2026 is already 2027 in Shanghai
    assert ledger.lot_expiry(p, dt.datetime(2026, 12, 31, 20, tzinfo=dt.UTC), "basic") == local(2029, 1, 1)


def test_never_is_later_than_any_real_expiry():
    p = programme(expiry={"policy": "never"})
    assert ledger.lot_expiry(p, local(2026, 3, 1), "basic") == ledger.NEVER


@pytest.fixture
def books(runtime: Runtime) -> Books:
    return Books(runtime)


# ---- the expiry job --------------------------------------------------------------------------------------------


def expire(runtime: Runtime, as_of: dt.datetime) -> dict[str, Any]:
    run = run_job(runtime, "expiry", as_of)
    assert run["status"] == "succeeded", run
    return run


def expired_events(runtime: Runtime) -> list[Any]:
    with transaction(runtime.engine, readonly=True) as conn:
        return conn.execute(
            sa.select(events.c.member_id, events.c.payload).where(events.c.type == "points.expired")
        ).all()


def test_points_lapse_at_local_midnight_of_their_expiry_and_a_rerun_posts_nothing(books, runtime):
    books.enrol()  # 500 welcome points, earned at START, expiring 24 local months later
    books.buy("t1", 12_300)  # 123 points an hour before START: they expire an hour earlier
    welcome_expiry = books.lot_expiry(WELCOME)
    assert expire(runtime, welcome_expiry - dt.timedelta(hours=1, seconds=1))["rows"] == 0
    assert books.balance() == 623
    run = expire(runtime, welcome_expiry - dt.timedelta(hours=1))
    assert run["rows"] == 1 and "123 points of 1 members" in run["detail"]
    assert (books.balance(), books.lots()) == (500, {WELCOME: 500, "t1": 0})
    assert expire(runtime, welcome_expiry - dt.timedelta(minutes=1))["rows"] == 0
    expire(runtime, welcome_expiry)
    assert (books.balance(), books.lots()) == (0, {WELCOME: 0, "t1": 0})
    assert expire(runtime, welcome_expiry + dt.timedelta(days=1))["rows"] == 0
    entries = [e for e in books.entries() if e.kind == "expiry"]
    assert [(e.points, e.balance_after) for e in entries] == [(-123, 500), (-500, 0)]
    assert books.account_total("expired") == 623
    assert len(expired_events(runtime)) == 2
    books.assert_verified()


def test_expiry_takes_what_a_partial_redemption_left_of_the_oldest_lot(books, runtime, clock):
    books.enrol()
    books.buy("t1", 30_000)  # 300 points, an hour older than the welcome lot: spent first
    books.hold("r1", 200)
    books.capture("r1")
    assert books.lots() == {WELCOME: 500, "t1": 100}
    expire(runtime, books.lot_expiry("t1"))
    assert (books.balance(), books.lots()) == (500, {WELCOME: 500, "t1": 0})
    books.assert_verified()


def test_held_points_stay_held_through_expiry_and_lapse_at_the_next_run_after_a_cancellation(books, runtime, clock):
    books.enrol()
    books.hold("r1", 200)
    expiry = books.lot_expiry(WELCOME)
    expire(runtime, expiry)
    assert books.account() == (0, 200)  # the 300 unheld points lapsed; the held 200 did not
    clock.now = expiry + dt.timedelta(hours=1)
    books.void("r1")
    assert books.account() == (200, 0) and books.lots() == {WELCOME: 200}
    expire(runtime, clock.now)
    assert books.account() == (0, 0)
    books.assert_verified()


def test_expired_points_are_never_spent_even_before_the_job_posts_their_lapse(books, runtime, clock):
    books.enrol()
    clock.now = books.lot_expiry(WELCOME) + dt.timedelta(minutes=1)
    assert books.balance() == 500
    with pytest.raises(InsufficientPoints) as err:
        books.hold("r1", 100)
    assert err.value.extra == {"required": 100, "available": 0}
    assert books.account() == (500, 0)  # nothing was written
    books.assert_verified()


def test_a_refund_after_expiry_takes_the_due_points_from_the_other_lots(books, runtime, clock):
    books.enrol()
    books.buy("t1", 10_000)  # 100 points
    expire(runtime, books.lot_expiry("t1"))  # the 100 lapse; the welcome lot expires an hour later
    refund = books.refund("t1", "rf1", 10_000, policy="available")
    # a refund cancels points that should never have been earned: lapsed, they are taken from what is left
    assert (refund.body["points_due"], refund.body["points_reversed"]) == (100, 100)
    assert (books.balance(), books.lots()) == (400, {WELCOME: 400, "t1": 0})
    books.assert_verified()


def test_a_tier_that_never_expires_keeps_its_points(runtime, clock):
    doc = default_document()
    doc["version"] = "basic-never"
    doc["tiers"]["levels"][-1]["expiry"] = {"policy": "never"}  # the floor tier, where new members start
    p = load_programme(doc)
    with transaction(runtime.engine) as conn:
        members.enrol(conn, Enrolment("m1"), programme=p, now=clock.now)
        cmd = TransactionCommand("t1", "m1", "card_purchase", 10_000, "CNY", clock.now - dt.timedelta(hours=1))
        accrual.record_transaction(conn, cmd, programme=p, now=clock.now)
    expire(runtime, clock.now + dt.timedelta(days=365 * 50))
    assert Books(runtime).balance() == 600


def test_a_run_that_fails_part_way_is_finished_by_the_next(runtime, clock, monkeypatch):
    from loyalty.members import jobs

    monkeypatch.setattr(jobs, "EXPIRY_CHUNK", 2)
    with transaction(runtime.engine) as conn:
        for i in range(7):
            members.enrol(conn, Enrolment(f"m{i}"), programme=BASE, now=clock.now)
    as_of = calendar.add_months(clock.now, 24, SHANGHAI)
    real_expire, real_expire_members = ledger.expire, ledger.expire_members

    # The process dies on reaching m4, the third chunk's first member: one by one (SQLite) or
    # with its chunk (PostgreSQL's set-based path).
    def crash_at_m4(conn: Any, member_id: str, **kwargs: Any) -> Any:
        if member_id == "m4":
            raise RuntimeError("the process died")
        return real_expire(conn, member_id, **kwargs)

    def crash_with_m4(conn: Any, member_ids: list[str], **kwargs: Any) -> Any:
        if "m4" in member_ids:
            raise RuntimeError("the process died")
        return real_expire_members(conn, member_ids, **kwargs)

    monkeypatch.setattr(ledger, "expire", crash_at_m4)
    monkeypatch.setattr(ledger, "expire_members", crash_with_m4)
    run = run_job(runtime, "expiry", as_of)
    assert run["status"] == "failed" and "the process died" in run["detail"]
    books = Books(runtime)
    # the first two chunks committed; the third rolled back with the crash
    assert [books.balance(f"m{i}") for i in range(7)] == [0, 0, 0, 0, 500, 500, 500]
    monkeypatch.setattr(ledger, "expire", real_expire)
    monkeypatch.setattr(ledger, "expire_members", real_expire_members)
    assert expire(runtime, as_of)["rows"] == 3
    assert [books.balance(f"m{i}") for i in range(7)] == [0] * 7
    assert books.account_total("expired") == 3_500
    books.assert_verified()


# ---- what the member sees ------------------------------------------------------------------------------------------


def test_the_member_view_and_the_schedule_count_only_unexpired_points(client, runtime, clock):
    enrol(client)  # 500 points expiring 2028-06-15 18:00 local
    client.post("/v1/transactions", json=txn("t1", amount=20_000))  # 200 points, an hour older
    clock.now = dt.datetime(2028, 5, 20, tzinfo=dt.UTC)
    view = client.get("/v1/members/m1").get_json()
    assert view["expiring"] == [
        {"within_days": 30, "points": 700},
        {"within_days": 60, "points": 700},
        {"within_days": 90, "points": 700},
    ]
    assert client.get("/v1/members/m1/expiry-schedule").get_json() == {
        "member_id": "m1",
        "months": [{"month": "2028-06", "points": 700}],
        "never_expire": 0,
    }
    clock.now = dt.datetime(2028, 6, 15, 9, 30, tzinfo=dt.UTC)  # the 200 have expired, not lapsed yet
    assert client.get("/v1/members/m1").get_json()["expiring"][0] == {"within_days": 30, "points": 500}
    assert client.get("/v1/members/m1/expiry-schedule").get_json()["months"] == [{"month": "2028-06", "points": 500}]
    assert client.get("/v1/members/ghost/expiry-schedule").status_code == 404


# ---- racing bookings -------------------------------------------------------------------------------------------


@pytest.mark.committed
@pytest.mark.postgres_only
def test_the_expiry_job_racing_bookings_loses_and_doubles_nothing(runtime, clock, monkeypatch, backend):
    from loyalty.members import jobs

    monkeypatch.setattr(jobs, "EXPIRY_CHUNK", 3)
    n = 12
    with transaction(runtime.engine) as conn:
        for i in range(n):
            members.enrol(conn, Enrolment(f"m{i}"), programme=BASE, now=clock.now)
    as_of = calendar.add_months(clock.now, 24, SHANGHAI) + dt.timedelta(minutes=1)
    clock.now = as_of
    errors: list[BaseException] = []

    def book(i: int) -> None:
        try:
            for k in range(5):
                cmd = TransactionCommand(f"t{i}-{k}", f"m{i}", "card_purchase", 1_000, "CNY", as_of)
                with transaction(runtime.engine) as conn:
                    accrual.record_transaction(conn, cmd, programme=BASE, now=as_of)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=book, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    expire(runtime, as_of)
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    expire(runtime, as_of)  # whatever a booking locked out of the first run
    ledger_books = Books(runtime)
    for i in range(n):
        assert ledger_books.balance(f"m{i}") == 50  # the 500 welcome points lapsed once; 5 x 10 points earned
    assert ledger_books.account_total("expired") == 500 * n
    ledger_books.assert_verified()
