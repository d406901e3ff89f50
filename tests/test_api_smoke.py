from tests.helpers import enrol, txn


def test_enrol_then_earn_on_card_spend(client):
    member = enrol(client)
    assert member["balance"] == 500
    r = client.post("/v1/transactions", json=txn())
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["points"] == 123
    assert body["balance"] == 623
    assert body["awards"][0]["rule_id"] == "card-spend-base"
