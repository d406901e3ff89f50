"""POST /v1/transactions, its batch form, refunds and replays, on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.ledger import verify
from tests.conftest import START
from tests.helpers import enrol, txn


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def assert_verified(engine) -> None:
    with transaction(engine, readonly=True) as conn:
        broken = [o.check.name for o in verify.run(conn) if not o.ok]
    assert broken == []


def test_card_spend_earns_one_point_per_yuan_rounded_down(client, engine):
    enrol(client)
    r = client.post("/v1/transactions", json=txn(amount=12_399))
    assert r.status_code == 201
    body = r.get_json()
    assert body["points"] == 123
    assert body["balance"] == 623
    assert body["programme_version"] == "2026.1"
    assert body["awards"] == [
        {
            "rule_id": "card-spend-base",
            "points": 123,
            "funding_source": "bank",
            "qualifying": True,
            "reason": "1 point per 1 CNY of card spend (消费1元积1分)",
        }
    ]
    assert body["entry_id"]
    assert_verified(engine)


def test_transaction_that_earns_nothing_is_recorded_without_an_entry(client, engine):
    enrol(client)
    r = client.post("/v1/transactions", json=txn(type="bill_payment"))
    assert r.status_code == 201
    assert r.get_json()["points"] == 0
    assert r.get_json()["entry_id"] is None
    assert count(engine, "transactions") == 1
    assert count(engine, "journal_entries") == 1  # the welcome bonus only
    member = client.get("/v1/members/m1").get_json()
    assert member["last_activity_at"] == START.isoformat().replace("+00:00", "Z")
    assert_verified(engine)


def test_same_transaction_id_replays_the_original_result_and_posts_nothing(client, engine):
    enrol(client)
    first = client.post("/v1/transactions", json=txn())
    client.post("/v1/transactions", json=txn("t2"))
    again = client.post("/v1/transactions", json=txn())
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert count(engine, "journal_entries") == 3
    assert client.get("/v1/members/m1").get_json()["balance"] == 500 + 2 * 123


def test_same_transaction_id_with_another_body_is_a_conflict(client, engine):
    enrol(client)
    client.post("/v1/transactions", json=txn())
    r = client.post("/v1/transactions", json=txn(amount=99_999))
    assert r.status_code == 409
    assert r.content_type == "application/problem+json"
    assert r.get_json()["field"] == "transaction_id"
    assert count(engine, "transactions") == 1


def test_idempotency_key_header_replays_and_refuses_another_body(client, engine):
    enrol(client)
    headers = {"Idempotency-Key": "k-1"}
    first = client.post("/v1/transactions", json=txn(), headers=headers)
    again = client.post("/v1/transactions", json=txn(), headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    other = client.post("/v1/transactions", json=txn("t9"), headers=headers)
    assert other.status_code == 409
    assert other.get_json()["field"] == "Idempotency-Key"
    assert count(engine, "transactions") == 1


def test_failed_request_does_not_burn_its_idempotency_key(client):
    headers = {"Idempotency-Key": "k-2"}
    r = client.post("/v1/transactions", json=txn(), headers=headers)
    assert r.status_code == 422  # member not enrolled yet
    enrol(client)
    r = client.post("/v1/transactions", json=txn(), headers=headers)
    assert r.status_code == 201


def test_get_transaction_shows_what_it_earned(client):
    enrol(client)
    posted = client.post("/v1/transactions", json=txn()).get_json()
    r = client.get("/v1/transactions/t1")
    assert r.status_code == 200
    assert r.get_json() == posted
    assert client.get("/v1/transactions/nope").status_code == 404


def test_late_transaction_lot_expires_24_months_after_it_occurred(client, engine):
    enrol(client)
    client.post("/v1/transactions", json=txn(occurred_at="2024-08-01T08:00:00+08:00"))
    with engine.connect() as conn:
        expires = conn.execute(
            sa.text("SELECT expires_at FROM point_lots WHERE rule_id = 'card-spend-base'")
        ).scalar_one()
    expires = expires if isinstance(expires, dt.datetime) else dt.datetime.fromisoformat(expires)
    assert expires.replace(tzinfo=None) == dt.datetime(2026, 8, 1, 0, 0)  # stored in UTC
    member = client.get("/v1/members/m1").get_json()
    assert member["expiring"] == [
        {"within_days": 30, "points": 0},
        {"within_days": 60, "points": 123},
        {"within_days": 90, "points": 123},
    ]


def test_partial_refunds_claw_back_in_proportion_and_never_more_than_earned(client, engine):
    enrol(client)
    client.post("/v1/transactions", json=txn(amount=10_000))  # 100 points
    r1 = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 3_333})
    assert r1.status_code == 201
    assert r1.get_json()["points_reversed"] == 33
    r2 = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r2", "amount": 3_333})
    assert r2.get_json()["points_reversed"] == 33  # floor(100*6666/10000) - 33
    r3 = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r3", "amount": 3_334})
    assert r3.get_json()["points_reversed"] == 34
    assert r3.get_json()["balance"] == 500
    over = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r4", "amount": 1})
    assert over.status_code == 422
    assert over.get_json()["field"] == "amount"
    assert_verified(engine)


def test_refund_replay_and_conflict(client):
    enrol(client)
    client.post("/v1/transactions", json=txn(amount=10_000))
    first = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 5_000})
    again = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 5_000})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    other = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 4_000})
    assert other.status_code == 409
    assert client.get("/v1/members/m1").get_json()["balance"] == 550


def test_refund_of_unknown_transaction_is_404(client):
    r = client.post("/v1/transactions/nope/reversals", json={"reversal_id": "r1", "amount": 1})
    assert r.status_code == 404
    assert r.get_json()["field"] == "transaction_id"


def test_refund_after_spend_leaves_negative_balance_on_statement(client, engine, runtime):
    from loyalty.ledger import service as ledger

    enrol(client)
    client.post("/v1/transactions", json=txn(amount=100_000))  # 1000 points -> 1500
    with transaction(engine) as conn:
        ledger.hold(conn, "m1", "h1", 1_400, capture_account="redeemed:unspecified", now=runtime.now())
        ledger.capture(conn, "m1", "h1", now=runtime.now())
    r = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 100_000})
    assert r.get_json()["points_reversed"] == 1000
    assert r.get_json()["balance"] == -900
    member = client.get("/v1/members/m1").get_json()
    assert (member["balance"], member["held"], member["available"]) == (-900, 0, -900)
    lines = client.get("/v1/members/m1/entries").get_json()["entries"]
    assert lines[0]["kind"] == "reversal" and lines[0]["balance_after"] == -900
    assert_verified(engine)


@pytest.fixture
def available_policy(runtime):
    runtime.settings = type(runtime.settings)(
        database_url=runtime.settings.database_url, clawback_policy="available", api_key_cache_seconds=0
    )


def test_available_policy_claws_back_only_what_is_left(available_policy, client, engine, runtime):
    from loyalty.ledger import service as ledger

    enrol(client)
    client.post("/v1/transactions", json=txn(amount=100_000))
    with transaction(engine) as conn:
        ledger.hold(conn, "m1", "h1", 1_400, capture_account="redeemed:unspecified", now=runtime.now())
    r = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 100_000})
    body = r.get_json()
    # 100 were available; the 1,400 held stay held, and in the balance.
    assert (body["points_due"], body["points_reversed"], body["balance"]) == (1000, 100, 1_400)
    assert_verified(engine)


def test_batch_books_each_item_on_its_own_in_order(client, engine):
    enrol(client)
    items = [txn("b1"), txn("b2", amount=-5), txn("b3", member_id="ghost"), txn("b1"), txn("b4", amount=200)]
    r = client.post("/v1/transactions/batch", json={"transactions": items})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [201, 422, 422, 200, 201]
    assert [x["index"] for x in results] == [0, 1, 2, 3, 4]
    # An item's problem names its field one way, within the item, in `field` and in `errors` alike.
    assert results[1]["problem"]["field"] == "amount"
    assert [e["field"] for e in results[1]["problem"]["errors"]] == ["amount"]
    assert results[2]["problem"]["field"] == "member_id"
    alone = client.post("/v1/transactions", json=txn("b2", amount=-5)).get_json()
    del alone["request_id"]  # that request's own id: an item of a batch has none of its own
    assert results[1]["problem"] == alone, "the problem POST /v1/transactions gives the item alone (but its request id)"
    assert results[3]["result"] == results[0]["result"]
    assert count(engine, "transactions") == 2
    assert_verified(engine)


def test_batch_with_idempotency_key_replays_whole_answer(client, engine):
    enrol(client)
    body = {"transactions": [txn("b1"), txn("b2")]}
    first = client.post("/v1/transactions/batch", json=body, headers={"Idempotency-Key": "batch-1"})
    again = client.post("/v1/transactions/batch", json=body, headers={"Idempotency-Key": "batch-1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    other = client.post(
        "/v1/transactions/batch", json={"transactions": [txn("b3")]}, headers={"Idempotency-Key": "batch-1"}
    )
    assert other.status_code == 409
    assert count(engine, "transactions") == 2


def test_a_batch_item_that_is_not_a_transaction_gets_its_own_problem(client, engine):
    """The spec leaves items unconstrained: null, a number or a list is a bad item, not a bad batch."""
    enrol(client)
    r = client.post("/v1/transactions/batch", json={"transactions": [None, 5, ["x"], txn("b1")]})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [(x["status"], x.get("problem", {}).get("field")) for x in results] == [
        (422, "body"),
        (422, "body"),
        (422, "body"),
        (201, None),
    ]
    assert count(engine, "transactions") == 1


def test_batch_refuses_more_than_a_thousand_items(client):
    r = client.post("/v1/transactions/batch", json={"transactions": [txn(f"x{i}") for i in range(1001)]})
    assert r.status_code == 422
    assert r.get_json()["field"] == "transactions"
