"""Enrolment, balance and statement."""

from __future__ import annotations

import sqlalchemy as sa

from tests.helpers import enrol, txn


def test_enrolment_credits_the_welcome_bonus_once(client, engine):
    r = client.post("/v1/members", json={"member_id": "m1", "birth_date": "1990-05-01", "channel": "app"})
    assert r.status_code == 201
    body = r.get_json()
    assert (body["balance"], body["available"], body["held"]) == (500, 500, 0)
    assert body["birth_date"] == "1990-05-01"
    again = client.post("/v1/members", json={"member_id": "m1"})
    assert again.status_code == 200
    assert again.get_json()["balance"] == 500
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM journal_entries")).scalar_one() == 1
        lot = conn.execute(sa.text("SELECT rule_id, qualifying, funding_source FROM point_lots")).one()
    assert lot.rule_id == "welcome-bonus"
    assert not lot.qualifying
    assert lot.funding_source == "bank"


def test_enrolled_at_may_be_in_the_past(client):
    body = enrol(client, enrolled_at="2020-01-01T00:00:00+08:00")
    assert body["enrolled_at"] == "2019-12-31T16:00:00Z"


def test_unknown_member_is_404(client):
    r = client.get("/v1/members/nobody")
    assert r.status_code == 404
    assert r.get_json()["type"] == "/problems/member_not_found"
    assert client.get("/v1/members/nobody/entries").status_code == 404


def test_statement_is_newest_first_with_keyset_pages(client):
    enrol(client)
    for i in range(5):
        client.post("/v1/transactions", json=txn(f"t{i}", amount=100 * (i + 1)))
    page1 = client.get("/v1/members/m1/entries?limit=4").get_json()
    assert [e["seq"] for e in page1["entries"]] == [6, 5, 4, 3]
    assert page1["entries"][0]["transaction_id"] == "t4"
    assert page1["entries"][0]["balance_after"] == 500 + 1 + 2 + 3 + 4 + 5
    page2 = client.get(f"/v1/members/m1/entries?limit=4&cursor={page1['next_cursor']}").get_json()
    assert [e["seq"] for e in page2["entries"]] == [2, 1]
    assert page2["entries"][-1]["kind"] == "bonus"
    assert page2["next_cursor"] is None
