"""One meaning for each number, as banks count an account's money: ``balance`` is the points the
member owns, held ones included; ``held`` what redemptions not yet settled reserve; ``available`` =
balance - held. The member view, transaction and refund answers, statements, the benefits list and
event payloads all say the same."""

from __future__ import annotations

from typing import Any

import pytest

from loyalty.catalogue.service import install_default
from loyalty.db import transaction
from loyalty.jobs.runner import run_job
from loyalty.ledger import verify
from tests.helpers import before, enrol, revision_named, txn
from tests.test_events_feed import settle


def member(client: Any) -> tuple[int, int, int]:
    body = client.get("/v1/members/m1").get_json()
    assert body["available"] == body["balance"] - body["held"]
    return body["balance"], body["held"], body["available"]


def lines(client: Any, **query: Any) -> list[tuple[str, int, int, int, int]]:
    """The statement as (kind, points, balance_after, held_after, available_after), oldest first,
    read a page of ``limit`` at a time."""
    out: list[tuple[str, int, int, int, int]] = []
    cursor = None
    while True:
        path = "/v1/members/m1/entries?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(path).get_json()
        for e in page["entries"]:
            assert e["available_after"] == e["balance_after"] - e["held_after"]
            out.append((e["kind"], e["points"], e["balance_after"], e["held_after"], e["available_after"]))
        cursor = page["next_cursor"]
        if cursor is None:
            return out[::-1]


def accrued_balances(client: Any) -> dict[str, int]:
    events = client.get("/v1/events?types=points.accrued&limit=500").get_json()["events"]
    return {e["data"].get("transaction_id") or e["data"]["source"]: e["data"]["balance"] for e in events}


@pytest.mark.committed  # reads the event feed, which waits for every open transaction
def test_held_points_stay_in_the_balance_and_leave_the_available_points(client, runtime, clock):
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())
    upload = client.post("/v1/benefits/starter-gift-pack/codes", data="SGP-0001\nSGP-0002\n", content_type="text/csv")
    assert upload.status_code == 200, upload.get_json()
    enrol(client)
    assert client.post("/v1/transactions", json=txn("t1", amount=90_000)).get_json()["balance"] == 1_400

    # A 300-point voucher, cancellable for 24 hours: its points are held, not yet spent.
    r = client.post(
        "/v1/redemptions", json={"redemption_id": "r1", "member_id": "m1", "benefit_code": "starter-gift-pack"}
    )
    assert (r.status_code, r.get_json()["status"], r.get_json()["points"]) == (201, "fulfilled", 300)
    assert member(client) == (1_400, 300, 1_100)
    assert client.get("/v1/members/m1/benefits").get_json()["available_points"] == 1_100

    booked = client.post("/v1/transactions", json=txn("t2", amount=10_000)).get_json()
    assert booked["balance"] == 1_500, "held points included"
    assert client.get("/v1/transactions/t2").get_json()["balance"] == 1_500
    assert member(client) == (1_500, 300, 1_200)

    refund = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "f1", "amount": 90_000}).get_json()
    assert (refund["points_reversed"], refund["balance"]) == (900, 600)
    assert member(client) == (600, 300, 300)

    # The cancellation window ends: the job settles the redemption and the held points are spent.
    clock.advance(hours=25)
    assert run_job(runtime, "redemptions")["status"] == "succeeded"
    assert member(client) == (300, 0, 300)

    assert lines(client) == [
        ("bonus", 500, 500, 0, 500),
        ("accrual", 900, 1_400, 0, 1_400),
        ("hold", 0, 1_400, 300, 1_100),  # reserved: available falls, the balance does not
        ("accrual", 100, 1_500, 300, 1_200),
        ("reversal", -900, 600, 300, 300),
        ("capture", -300, 300, 0, 300),  # spent for good: now the balance falls
    ]
    settle(runtime.engine)  # on PostgreSQL the feed waits for every open writing transaction
    assert accrued_balances(client) == {"account_opened": 500, "t1": 1_400, "t2": 1_500}
    refunded = client.get("/v1/events?types=points.reversed").get_json()["events"]
    assert [(e["data"]["points"], e["data"]["balance"]) for e in refunded] == [(900, 600)]
    with transaction(runtime.engine, readonly=True) as conn:
        assert [o.check.name for o in verify.run(conn) if not o.ok] == []


def test_a_cancelled_redemption_gives_the_held_points_back_to_available(client, runtime):
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())
    client.post("/v1/benefits/starter-gift-pack/codes", data="SGP-0001\n", content_type="text/csv")
    enrol(client)
    client.post("/v1/redemptions", json={"redemption_id": "r1", "member_id": "m1", "benefit_code": "starter-gift-pack"})
    assert member(client) == (500, 300, 200)
    refused = client.post(
        "/v1/redemptions", json={"redemption_id": "r2", "member_id": "m1", "benefit_code": "starter-gift-pack"}
    )
    assert refused.status_code == 422
    assert client.post("/v1/redemptions/r1/cancel").get_json()["status"] == "cancelled"
    assert member(client) == (500, 0, 500)
    assert lines(client)[-2:] == [("hold", 0, 500, 300, 200), ("void", 0, 500, 0, 500)]


def test_available_goes_below_zero_only_when_a_refund_takes_back_spent_points(client, runtime):
    """Policy ``negative``: a refund takes back all it earned, held points or not, and the member owes
    the difference: available below zero (nothing can be redeemed), the balance still counting the held."""
    from loyalty.ledger import service as ledger

    enrol(client)
    client.post("/v1/transactions", json=txn("t1", amount=50_000))
    with transaction(runtime.engine) as conn:
        ledger.hold(conn, "m1", "h1", 900, capture_account="redeemed:unspecified", now=runtime.now())
    assert member(client) == (1_000, 900, 100)
    refund = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "f1", "amount": 50_000}).get_json()
    assert (refund["points_reversed"], refund["balance"]) == (500, 500)
    assert member(client) == (500, 900, -400)
    assert client.get("/v1/members/m1/benefits").get_json()["available_points"] == -400
    assert lines(client)[-1] == ("reversal", -500, 500, 900, -400)


@pytest.mark.committed  # a migration runs in transactions of its own
def test_the_migration_adds_the_points_held_then_to_the_balances_stored_before_it(client, runtime, clock):
    """The migration ``balances_include_held``: a transaction's or refund's stored balance now
    includes the points held when it was booked. Going back below it takes them out again; coming
    forward puts them back."""
    import sqlalchemy as sa

    from loyalty.ledger import service as ledger
    from loyalty.migrate import downgrade, upgrade

    enrol(client)
    client.post("/v1/transactions", json=txn("t1", amount=50_000))  # 1,000 points, nothing held
    clock.advance(minutes=1)
    with transaction(runtime.engine) as conn:
        ledger.hold(conn, "m1", "h1", 300, capture_account="redeemed:unspecified", now=runtime.now())
    clock.advance(minutes=1)
    assert client.post("/v1/transactions", json=txn("t2", amount=20_000)).get_json()["balance"] == 1_200
    clock.advance(minutes=1)
    refund = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "f1", "amount": 50_000})
    assert refund.get_json()["balance"] == 700
    clock.advance(minutes=1)
    with transaction(runtime.engine) as conn:
        ledger.void(conn, "m1", "h1", now=runtime.now())

    def stored() -> dict[str, int]:
        with runtime.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT transaction_id, balance_after FROM transactions "
                    "UNION ALL SELECT reversal_id, balance_after FROM reversals"
                )
            ).all()
        return {key: int(balance) for key, balance in rows}

    assert stored() == {"t1": 1_000, "t2": 1_200, "f1": 700}
    # As `loyalty` takes a database down: on SQLite with foreign keys off while tables other rows
    # point at (the journal's keys since 0021) are built anew, and every key checked before the commit.
    downgrade(runtime.engine, before(revision_named("balances_include_held")))
    assert stored() == {"t1": 1_000, "t2": 900, "f1": 400}, "before the migration: the member account's balance"
    upgrade(runtime.engine)
    assert stored() == {"t1": 1_000, "t2": 1_200, "f1": 700}
    assert client.get("/v1/transactions/t2").get_json()["balance"] == 1_200
