"""Manual adjustments with four eyes: requested by one principal, approved (and posted once) or
rejected by another; audited; the roll-forward's ``adjusted`` line counts them."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import calendar
from loyalty.audit import audit_log
from loyalty.auth.service import create_key
from loyalty.db import transaction
from loyalty.errors import AdjustmentNotPending, FourEyes, InsufficientPoints, MemberNotFound, ValidationError
from loyalty.events.models import events
from loyalty.finance import reports
from loyalty.ledger.models import point_lots
from loyalty.members import adjustments
from loyalty.runtime import Runtime
from tests.helpers import BANK_ZONE, BASE, enrol
from tests.test_ledger import WELCOME, Books


@pytest.fixture
def books(runtime: Runtime) -> Books:
    return Books(runtime)


def request(rt: Runtime, points: int, *, member_id: str = "m1", by: str = "alice", reason: str = "goodwill") -> str:
    with transaction(rt.engine) as conn:
        made = adjustments.request(conn, member_id, points, reason, principal=by, now=rt.now())
    return str(made["adjustment_id"])


def approve(rt: Runtime, adjustment_id: str, *, by: str = "bob") -> dict[str, Any]:
    with transaction(rt.engine) as conn:
        return adjustments.approve(conn, adjustment_id, principal=by, programme=BASE, now=rt.now())


def audit_actions(rt: Runtime, adjustment_id: str) -> list[tuple[str, str]]:
    a = audit_log.c
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(sa.select(a.action, a.actor).where(a.object_id == adjustment_id).order_by(a.id)).all()
    return [(r.action, r.actor) for r in rows]


def test_an_approved_credit_posts_once_opens_a_lot_under_the_expiry_policy_and_is_audited(books, runtime, clock):
    books.enrol()
    adjustment_id = request(runtime, 300)
    assert books.balance() == 500  # nothing posted while requested
    done = approve(runtime, adjustment_id)
    assert (done["status"], done["requested_by"], done["decided_by"]) == ("approved", "alice", "bob")
    assert books.balance() == 800
    assert books.lots()[f"adjustment:{adjustment_id}"] == 300
    assert books.lot_expiry(f"adjustment:{adjustment_id}") == calendar.add_months(clock.now, 24, BANK_ZONE)
    (entry,) = [e for e in books.entries() if e.kind == "adjustment"]
    assert (entry.id, entry.points, entry.memo) == (done["entry_id"], 300, "goodwill")
    assert books.account_total("adjustments") == -300
    assert audit_actions(runtime, adjustment_id) == [("adjustment.requested", "alice"), ("adjustment.approved", "bob")]
    with transaction(runtime.engine, readonly=True) as conn:
        (payload,) = conn.execute(sa.select(events.c.payload).where(events.c.type == "points.adjusted")).scalars()
        month = calendar.month(clock.now, BANK_ZONE)
        rf = reports.rollforward(conn, start=month.start, end=month.end)
        assert reports.trial_balance(conn, end=month.end)["total"] == 0
    assert json.loads(payload) == {
        "adjustment_id": adjustment_id,
        "entry_id": done["entry_id"],
        "points": 300,
        "balance": 800,
        "reason": "goodwill",
        "requested_by": "alice",
        "approved_by": "bob",
    }
    assert (rf["adjusted"], rf["closing"], rf["tie_out"]["tied"]) == (300, 800, True)
    books.assert_verified()


def test_a_debit_takes_unexpired_lots_first_expiring_first_and_counts_negative(books, runtime, clock):
    books.enrol()
    clock.advance(days=40)
    books.buy("t1", 20_000)  # 200 points, expiring after the welcome bonus
    done = approve(runtime, request(runtime, -600))
    assert books.balance() == 100
    assert books.consumed_by(done["entry_id"]) == {WELCOME: 500, "t1": 100}
    with transaction(runtime.engine, readonly=True) as conn:
        month = calendar.month(clock.now, BANK_ZONE)
        rf = reports.rollforward(conn, start=month.start, end=month.end)
    assert rf["adjusted"] == -600 and rf["tie_out"]["tied"]
    books.assert_verified()


def test_a_debit_beyond_the_available_points_is_refused_and_stays_requested(books, runtime):
    books.enrol()
    books.hold("h1", 200)
    adjustment_id = request(runtime, -301)  # 500 owned, 200 of them held: 300 available
    with pytest.raises(InsufficientPoints):
        approve(runtime, adjustment_id)
    with transaction(runtime.engine, readonly=True) as conn:
        assert adjustments.get(conn, adjustment_id)["status"] == "requested"
    assert books.account() == (300, 200)
    assert books.account_total("adjustments") == 0


def test_a_debit_of_points_expired_but_not_yet_lapsed_is_refused(books, runtime, clock):
    books.enrol()
    adjustment_id = request(runtime, -100)
    clock.now = calendar.add_months(clock.now, 24, BANK_ZONE) + dt.timedelta(minutes=1)
    with pytest.raises(InsufficientPoints):
        approve(runtime, adjustment_id)
    assert books.balance() == 500


def test_a_credit_to_a_member_in_debt_pays_the_debt_first(books, runtime):
    books.enrol()
    books.buy("t1", 10_000)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 10_000)  # takes back 100 the member has spent: balance -100
    assert books.balance() == -100
    done = approve(runtime, request(runtime, 250))
    assert books.balance() == 150
    with transaction(runtime.engine, readonly=True) as conn:
        remaining = conn.execute(
            sa.select(point_lots.c.remaining).where(point_lots.c.entry_id == done["entry_id"])
        ).scalar_one()
    assert remaining == 150
    books.assert_verified()


def test_the_requester_may_not_decide_and_a_decision_is_final(books, runtime):
    books.enrol()
    adjustment_id = request(runtime, 10, by="alice")
    with pytest.raises(FourEyes), transaction(runtime.engine) as conn:
        adjustments.approve(conn, adjustment_id, principal="Alice", programme=BASE, now=runtime.now())
    with pytest.raises(FourEyes), transaction(runtime.engine) as conn:
        adjustments.reject(conn, adjustment_id, principal="alice", note="no", now=runtime.now())
    with transaction(runtime.engine) as conn:
        rejected = adjustments.reject(conn, adjustment_id, principal="carol", note="duplicate", now=runtime.now())
    assert (rejected["status"], rejected["note"], rejected["entry_id"]) == ("rejected", "duplicate", None)
    with pytest.raises(AdjustmentNotPending):
        approve(runtime, adjustment_id)
    assert books.balance() == 500
    assert audit_actions(runtime, adjustment_id) == [
        ("adjustment.requested", "alice"),
        ("adjustment.rejected", "carol"),
    ]


def test_the_database_refuses_a_decision_by_the_requester(books, runtime):
    books.enrol()
    adjustment_id = request(runtime, 10, by="alice")
    from loyalty.members.models import adjustments as table

    with pytest.raises(sa.exc.IntegrityError), transaction(runtime.engine) as conn:
        conn.execute(
            table.update()
            .where(table.c.id == adjustment_id)
            .values(status="rejected", decided_by="alice", decided_at=runtime.now())
        )


@pytest.mark.parametrize(
    ("points", "reason", "field"),
    [(0, "x", "points"), (10**9 + 1, "x", "points"), (5, "   ", "reason"), (5, "x" * 501, "reason")],
)
def test_a_bad_request_names_its_field_and_writes_nothing(books, runtime, points, reason, field):
    books.enrol()
    with pytest.raises(ValidationError) as err, transaction(runtime.engine) as conn:
        adjustments.request(conn, "m1", points, reason, principal="alice", now=runtime.now())
    assert err.value.field == field
    with pytest.raises(MemberNotFound), transaction(runtime.engine) as conn:
        adjustments.request(conn, "nobody", 5, "x", principal="alice", now=runtime.now())
    with transaction(runtime.engine, readonly=True) as conn:
        assert adjustments.list_(conn) == []


def test_listing_filters_by_status_and_member_newest_first(books, runtime, clock):
    books.enrol("m1")
    books.enrol("m2")
    first = request(runtime, 1, member_id="m1")
    clock.advance(minutes=1)
    second = request(runtime, 2, member_id="m2")
    clock.advance(minutes=1)
    third = request(runtime, 3, member_id="m1")
    approve(runtime, third)
    with transaction(runtime.engine, readonly=True) as conn:
        assert [a["adjustment_id"] for a in adjustments.list_(conn)] == [third, second, first]
        assert [a["adjustment_id"] for a in adjustments.list_(conn, status="requested")] == [second, first]
        assert [a["adjustment_id"] for a in adjustments.list_(conn, member_id="m1")] == [third, first]
        assert [a["adjustment_id"] for a in adjustments.list_(conn, limit=1)] == [third]


# ---- the API -------------------------------------------------------------------------------------------------------


def key(runtime: Runtime, name: str, *scopes: str) -> str:
    with transaction(runtime.engine) as conn:
        return create_key(conn, name=name, scopes=frozenset(scopes), now=runtime.now())


def test_the_api_requests_with_support_and_approves_with_another_finance_key(client, runtime):
    enrol(client, "m1")
    support, finance, also_support = (
        key(runtime, "agent", "support"),
        key(runtime, "controller", "finance"),
        key(runtime, "agent", "finance"),
    )
    body = {"points": 120, "reason": "branch complaint 4711"}
    headers = {"Idempotency-Key": "adj-1"}
    r = client.post("/v1/members/m1/adjustments", json=body, key=support, headers=headers)
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert (made["status"], made["requested_by"], made["points"]) == ("requested", "agent", 120)
    again = client.post("/v1/members/m1/adjustments", json=body, key=support, headers=headers)
    assert again.get_json() == made and again.headers["Idempotent-Replayed"] == "true"
    path = f"/v1/adjustments/{made['adjustment_id']}"
    assert client.post(f"{path}/approve", json={}, key=support).status_code == 403  # support may not approve
    own = client.post(f"{path}/approve", json={}, key=also_support)  # the same name on a finance key
    assert (own.status_code, own.get_json()["type"]) == (403, "/problems/four_eyes")
    r = client.post(f"{path}/approve", json={"note": "ok"}, key=finance)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["status"], r.get_json()["decided_by"]) == ("approved", "controller")
    assert client.get("/v1/members/m1").get_json()["balance"] == 620
    twice = client.post(f"{path}/approve", json={}, key=finance)
    assert (twice.status_code, twice.get_json()["type"]) == (409, "/problems/adjustment_not_pending")
    listed = client.get("/v1/adjustments?status=approved&member_id=m1", key=support).get_json()
    assert [a["adjustment_id"] for a in listed["adjustments"]] == [made["adjustment_id"]]
    assert client.get("/v1/adjustments?status=requested", key=support).get_json() == {"adjustments": []}


def test_the_api_refuses_bad_input_and_unknown_things(client, runtime):
    enrol(client, "m1")
    finance = key(runtime, "controller", "finance")
    for body, field in (
        ({"points": 0, "reason": "x"}, "points"),
        ({"points": 5}, "reason"),
        ({"points": "5", "reason": "x"}, "points"),
    ):
        r = client.post("/v1/members/m1/adjustments", json=body)
        assert (r.status_code, r.get_json()["field"]) == (422, field)
    r = client.post("/v1/members/nobody/adjustments", json={"points": 5, "reason": "x"})
    assert r.status_code == 404
    assert client.post("/v1/adjustments/not-a-uuid/approve", json={}, key=finance).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.post(f"/v1/adjustments/{missing}/reject", json={"note": "x"}, key=finance).status_code == 404
    made = client.post("/v1/members/m1/adjustments", json={"points": 5, "reason": "x"}).get_json()
    r = client.post(f"/v1/adjustments/{made['adjustment_id']}/reject", json={}, key=finance)
    assert (r.status_code, r.get_json()["field"]) == (422, "note")
    r = client.get("/v1/adjustments?status=done")
    assert (r.status_code, r.get_json()["field"]) == (422, "status")
    assert client.get("/v1/adjustments", key=key(runtime, "reader", "read")).status_code == 403


# ---- racing approvals ----------------------------------------------------------------------------------------------


@pytest.mark.committed
@pytest.mark.postgres_only
def test_concurrent_approvals_post_once(runtime, backend):
    books = Books(runtime)
    books.enrol()
    ids = [request(runtime, 7) for _ in range(3)]
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def decide(i: int) -> None:
        barrier.wait()
        for adjustment_id in ids:
            try:
                approve(runtime, adjustment_id, by=f"approver-{i}")
                outcomes.append("approved")
            except AdjustmentNotPending:
                outcomes.append("already")
            except BaseException as exc:  # noqa: BLE001  (reported below)
                outcomes.append(repr(exc))

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(set(outcomes)) == ["already", "approved"] and outcomes.count("approved") == 3, outcomes
    assert [e.kind for e in books.entries()].count("adjustment") == 3
    assert books.balance() == 500 + 3 * 7
    books.assert_verified()
