"""Every kind of bad input gets a problem+json naming the field, and writes nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from tests.conftest import START, make_key
from tests.helpers import enrol, txn

WRITTEN = ("transactions", "journal_entries", "postings", "point_lots", "idempotency_keys")


def snapshot(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WRITTEN}


def without(field: str) -> dict:
    body = txn()
    del body[field]
    return body


BAD_TRANSACTIONS = [
    ("missing transaction_id", without("transaction_id"), "transaction_id"),
    ("missing member_id", without("member_id"), "member_id"),
    ("missing type", without("type"), "type"),
    ("missing amount", without("amount"), "amount"),
    ("missing currency", without("currency"), "currency"),
    ("missing occurred_at", without("occurred_at"), "occurred_at"),
    ("amount as string", txn(amount="100"), "amount"),
    ("amount as float", txn(amount=100.5), "amount"),
    ("amount as boolean", txn(amount=True), "amount"),
    ("zero amount", txn(amount=0), "amount"),
    ("negative amount", txn(amount=-100), "amount"),
    ("amount beyond 10^12", txn(amount=10**12 + 1), "amount"),
    ("unknown type", txn(type="lottery"), "type"),
    ("unconfigured currency", txn(currency="USD"), "currency"),
    ("member_id as number", txn(member_id=42), "member_id"),
    ("empty transaction_id", txn(transaction_id=""), "transaction_id"),
    ("transaction_id too long", txn(transaction_id="x" * 65), "transaction_id"),
    ("transaction_id with spaces", txn(transaction_id="a b"), "transaction_id"),
    ("transaction_id batch, the batch endpoint's", txn(transaction_id="batch"), "transaction_id"),
    ("occurred_at not a date", txn(occurred_at="yesterday"), "occurred_at"),
    ("occurred_at without offset", txn(occurred_at="2026-06-15T09:00:00"), "occurred_at"),
    ("occurred_at 6 minutes ahead", txn(occurred_at=(START + dt.timedelta(minutes=6)).isoformat()), "occurred_at"),
    ("mcc not four digits", txn(mcc="54a1"), "mcc"),
    ("unknown field", txn(points=10_000), "points"),
    ("unknown member", txn(member_id="ghost"), "member_id"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_TRANSACTIONS, ids=[c[0] for c in BAD_TRANSACTIONS])
def test_bad_transaction_is_refused_naming_the_field(client, engine, case, body, field):
    enrol(client)
    before = snapshot(engine)
    r = client.post("/v1/transactions", json=body)
    assert r.status_code == 422, r.get_json()
    assert r.content_type == "application/problem+json"
    problem = r.get_json()
    assert problem["field"] == field
    assert problem["status"] == 422
    assert field in problem["detail"] or problem["type"] == "/problems/unknown_member"
    assert snapshot(engine) == before


def test_occurred_at_within_five_minutes_ahead_is_accepted(client):
    enrol(client)
    r = client.post("/v1/transactions", json=txn(occurred_at=(START + dt.timedelta(minutes=4)).isoformat()))
    assert r.status_code == 201


def test_every_bad_field_is_listed(client):
    r = client.post("/v1/transactions", json={"amount": -1})
    fields = {e["field"] for e in r.get_json()["errors"]}
    assert fields == {"transaction_id", "member_id", "type", "amount", "currency", "occurred_at"}


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b'{"transaction_id": "t1",', 400, "body"),
        (b"\xff\xfe not utf-8", 400, "body"),
        (b"[1, 2, 3]", 422, "body"),
        (b'"just a string"', 422, "body"),
    ],
)
def test_malformed_json_is_a_problem_naming_the_body(client, engine, raw, status, field):
    before = snapshot(engine)
    r = client.post("/v1/transactions", data=raw, content_type="application/json")
    assert r.status_code == status
    assert r.content_type == "application/problem+json"
    assert r.get_json()["field"] == field
    assert snapshot(engine) == before


def test_wrong_content_type_is_415(client):
    r = client.post("/v1/transactions", data=json.dumps(txn()), content_type="text/plain")
    assert r.status_code == 415
    assert r.get_json()["field"] == "Content-Type"


def test_oversized_body_is_413(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 1024
    r = client.post("/v1/transactions", json=txn(merchant="x" * 2000))
    assert r.status_code == 413
    assert r.content_type == "application/problem+json"
    assert r.get_json()["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 100}, "reversal_id"),
        ({"reversal_id": "r1"}, "amount"),
        ({"reversal_id": "r1", "amount": 0}, "amount"),
        ({"reversal_id": "r1", "amount": "5"}, "amount"),
        ({"reversal_id": "r1", "amount": 5, "why": "x"}, "why"),
    ],
)
def test_bad_refund_is_refused(client, engine, body, field):
    enrol(client)
    client.post("/v1/transactions", json=txn())
    before = snapshot(engine)
    r = client.post("/v1/transactions/t1/reversals", json=body)
    assert r.status_code == 422
    assert r.get_json()["field"] == field
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "member_id"),
        ({"member_id": ""}, "member_id"),
        ({"member_id": "m1", "birth_date": "31/12/1990"}, "birth_date"),
        ({"member_id": "m1", "enrolled_at": "2027-01-01T00:00:00Z"}, "enrolled_at"),
        ({"member_id": "m1", "tier": "hnw"}, "tier"),
    ],
)
def test_bad_enrolment_is_refused(client, engine, body, field):
    r = client.post("/v1/members", json=body)
    assert r.status_code == 422
    assert r.get_json()["field"] == field
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM members")).scalar_one() == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("limit=", "limit"),
        ("cursor=-1", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=0", "cursor"),
        ("cursor=01", "cursor"),
        ("cursor=1000000000", "cursor"),
        ("cursor=1.5", "cursor"),
    ],
)
def test_bad_statement_paging_is_refused(client, query, field):
    enrol(client)
    r = client.get(f"/v1/members/m1/entries?{query}")
    assert r.status_code == 422
    assert r.get_json()["field"] == field


def test_idempotency_key_too_long_is_refused(client):
    r = client.post("/v1/members", json={"member_id": "m1"}, headers={"Idempotency-Key": "k" * 201})
    assert r.status_code == 422
    assert r.get_json()["field"] == "Idempotency-Key"


def test_missing_and_wrong_keys_are_401_and_missing_scope_403(client, runtime):
    r = client.post("/v1/transactions", json=txn(), key=None)
    assert r.status_code == 401
    assert r.get_json()["field"] == "Authorization"
    assert client.post("/v1/transactions", json=txn(), key="lk_nope_nope").status_code == 401
    read_only = make_key(runtime, "read")
    r = client.post("/v1/transactions", json=txn(), key=read_only)
    assert r.status_code == 403
    assert client.get("/v1/members/m1", key=read_only).status_code == 404  # authorised, but unknown
    accrue_only = make_key(runtime, "accrue")
    assert client.get("/v1/members/m1", key=accrue_only).status_code == 403


def test_revoked_key_is_refused(client, runtime, engine):
    key = make_key(runtime, "read")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE api_keys SET revoked_at = created_at"))
    assert client.get("/v1/members/m1", key=key).status_code == 401


def test_unknown_route_is_a_problem(bare_app):
    r = bare_app.test_client().get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.content_type == "application/problem+json"


def test_server_error_does_not_leak_the_exception(app, client, monkeypatch):
    from loyalty.members import service

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "member_view", boom)
    r = app.test_client().get("/v1/members/m1", headers={"Authorization": f"Bearer {client.api_key}"})
    assert r.status_code == 500
    assert r.content_type == "application/problem+json"
    assert "secret" not in r.get_data(as_text=True)


def test_a_limit_in_unicode_digits_is_a_422_not_a_500(client):
    enrol(client)
    for raw in ("²", "٣", "1" * 30):
        r = client.get(f"/v1/members/m1/entries?limit={raw}")
        assert r.status_code == 422, raw
        assert r.get_json()["field"] == "limit"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/benefits?status=",
        "/v1/jobs/runs?job=",
        "/v1/jobs/runs?cursor=",
        "/v1/webhooks/w1/deliveries?status=",
        "/v1/audit?object_type=",
        "/v1/audit?object_id=",
        "/v1/members/m1/history?limit=",
        "/v1/events?after=",
    ],
)
def test_an_empty_query_parameter_is_refused_naming_it(client, path):
    """``?status=`` is not taken for "no status": a client's empty value is a mistake, said so."""
    enrol(client)
    r = client.get(path)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["field"] == path.split("?")[1].split("=")[0]
    assert "empty" in r.get_json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/health", "GET, HEAD, OPTIONS"),
        ("DELETE", "/v1/members", "OPTIONS, POST"),
        ("PATCH", "/v1/members/m1/tier-override", "DELETE, OPTIONS, PUT"),
        ("PUT", "/v1/transactions/t1", "GET, HEAD, OPTIONS"),
        ("GET", "/v1/transactions/batch", "OPTIONS, POST"),  # not a transaction: the batch endpoint
    ],
)
def test_a_method_the_path_does_not_have_is_405_naming_the_ones_it_has(app, client, method, path, allow):
    r = app.test_client().open(path, method=method, headers={"Authorization": f"Bearer {client.api_key}"})
    assert r.status_code == 405
    assert r.headers["Allow"] == allow
    assert r.content_type == "application/problem+json"
    assert r.get_json()["type"] == "/problems/method_not_allowed"


def test_an_integer_written_with_a_fraction_or_an_exponent_is_an_integer(client, engine):
    """JSON Schema counts 10000.0 and 1e4 as the integer 10000, and so does the API; 100.5 stays refused."""
    enrol(client)
    body = json.dumps(txn("f1", amount=0)).replace('"amount": 0', '"amount": 10000.0')
    r = client.post("/v1/transactions", data=body, content_type="application/json")
    assert (r.status_code, r.get_json()["amount"], r.get_json()["points"]) == (201, 10_000, 100)
    body = json.dumps(txn("f2", amount=0)).replace('"amount": 0', '"amount": 1e4')
    assert client.post("/v1/transactions", data=body, content_type="application/json").get_json()["amount"] == 10_000
    huge = json.dumps(txn("f3", amount=0)).replace('"amount": 0', '"amount": 1e999999999')
    r = client.post("/v1/transactions", data=huge, content_type="application/json")
    assert (r.status_code, r.get_json()["field"]) == (422, "amount")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT amount FROM transactions ORDER BY transaction_id")).scalars().all() == [
            10_000,
            10_000,
        ]


def test_the_nul_character_is_refused_where_no_text_column_could_store_it(client, engine):
    """PostgreSQL text holds no U+0000: a body field with it is a 422 naming it, a path naming it is
    not found, a query parameter with it a 422; never a 500, on either database."""
    enrol(client)
    before = snapshot(engine)
    r = client.post("/v1/transactions", json=txn("n1", channel="app\x00"))
    assert (r.status_code, r.get_json()["field"]) == (422, "channel")
    r = client.post("/v1/webhooks", json={"url": "https://example.com/hook", "secret": "s" * 16 + "\x00"})
    assert (r.status_code, r.get_json()["field"]) == (422, "secret")
    r = client.get("/v1/members/m%00")
    assert (r.status_code, r.get_json()["field"]) == (404, "member_id")
    r = client.get("/v1/audit?object_type=benefit%00")
    assert (r.status_code, r.get_json()["field"]) == (422, "object_type")
    assert snapshot(engine) == before
