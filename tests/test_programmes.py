"""Programme versions through the API: drafts, publication, version selection,
simulation and backtests, on both backends."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from loyalty.accrual import service as accrual
from loyalty.accrual.service import TransactionCommand
from loyalty.db import transaction
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from rules import default_document, load_programme
from tests.conftest import START
from tests.helpers import enrol, txn


def doc(version: str = "2026.2", **changes) -> dict:
    d = copy.deepcopy(default_document())
    d["version"] = version
    d.update(changes)
    return d


def doubled(version: str = "2026.2") -> dict:
    """The default programme with base card earning doubled."""
    d = doc(version)
    d["rules"][0]["action"]["points"] = 2
    return d


def later(**delta) -> str:
    return (START + dt.timedelta(**delta)).isoformat()


def test_catalogue_lists_variables_and_operators(client):
    body = client.get("/v1/rules/catalogue").get_json()
    names = {v["name"] for v in body["variables"]}
    assert {"type", "amount", "tier", "transactions_this_month", "first_of_type", "month_day"} <= names
    assert {"equals", "in", "between", "multiple_of"} <= {o["name"] for o in body["operators"]}
    assert set(body["actions"]) == {"per_amount", "fixed", "multiplier"}


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["rules"][0]["conditions"]["all"][0].update(var="colour"), "$.rules[0].conditions.all[0].var"),
        (lambda d: d["rules"][0]["conditions"]["all"][0].update(op="like"), "$.rules[0].conditions.all[0].op"),
        (lambda d: d["rules"][0]["caps"].update(per_day=-1), "$.rules[0].caps.per_day"),
        (lambda d: d["rules"][2]["action"].update(factor="0"), "$.rules[2].action.factor"),
        (lambda d: d["rules"][7].update(priority=20), "$.rules[8].priority"),
        (lambda d: d["rules"][0]["action"].update(points="1"), "$.rules[0].action.points"),
    ],
    ids=["unknown variable", "unknown operator", "cap below zero", "multiplier of 0", "group not orderable", "type"],
)
def test_invalid_documents_are_refused_naming_the_path(client, engine, mutate, path):
    d = doc()
    mutate(d)
    for url in ("/v1/rules/validate", "/v1/programmes"):
        r = client.post(url, json={"document": d})
        assert r.status_code == 422, r.get_json()
        assert r.content_type == "application/problem+json"
        assert r.get_json()["field"] == path
        assert r.get_json()["type"] == "/problems/invalid_rule_document"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM programme_versions")).scalar_one() == 1


def test_validate_accepts_a_good_document(client):
    r = client.post("/v1/rules/validate", json={"document": doc()})
    assert r.get_json() == {"valid": True, "version": "2026.2", "rules": 10}


def test_draft_lifecycle_is_audited_and_publication_is_final(client):
    r = client.post("/v1/programmes", json={"document": doc()})
    assert r.status_code == 201
    assert r.get_json()["status"] == "draft"
    assert client.post("/v1/programmes", json={"document": doc()}).status_code == 409
    r = client.put("/v1/programmes/2026.2", json={"document": doubled()})
    assert r.status_code == 200
    assert r.get_json()["document"]["rules"][0]["action"]["points"] == 2
    assert client.put("/v1/programmes/2026.2", json={"document": doc("other")}).status_code == 422
    r = client.post("/v1/programmes/2026.2/publish", json={"effective_from": later(hours=1)})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "published"
    assert r.get_json()["effective_from"] == "2026-06-15T11:00:00Z"
    assert client.put("/v1/programmes/2026.2", json={"document": doubled()}).status_code == 409
    assert client.post("/v1/programmes/2026.2/publish", json={}).status_code == 409
    versions = client.get("/v1/programmes").get_json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [("2026.2", "published"), ("2026.1", "published")]
    actions = [
        e["action"] for e in client.get("/v1/audit?object_type=programme&object_id=2026.2").get_json()["entries"]
    ]
    assert actions == ["programme.published", "programme.draft_updated", "programme.draft_created"]
    entry = client.get("/v1/audit?object_id=2026.2&limit=1").get_json()["entries"][0]
    assert entry["actor"].startswith("test (")
    assert entry["after"]["effective_from"] == "2026-06-15T11:00:00Z"


@pytest.mark.parametrize("when", [later(minutes=-5), later(seconds=30)])
def test_publication_is_never_in_the_past(client, when):
    client.post("/v1/programmes", json={"document": doc()})
    r = client.post("/v1/programmes/2026.2/publish", json={"effective_from": when})
    assert r.status_code == 422
    assert r.get_json()["field"] == "effective_from"
    assert client.get("/v1/programmes/2026.2").get_json()["status"] == "draft"


def test_two_versions_cannot_take_effect_at_the_same_moment(client):
    for v in ("2026.2", "2026.3"):
        client.post("/v1/programmes", json={"document": doc(v)})
    assert client.post("/v1/programmes/2026.2/publish", json={"effective_from": later(hours=1)}).status_code == 200
    r = client.post("/v1/programmes/2026.3/publish", json={"effective_from": later(hours=1)})
    assert r.status_code == 409
    assert r.get_json()["field"] == "effective_from"


def test_each_transaction_uses_the_version_in_force_when_it_occurred(client, clock):
    enrol(client)
    client.post("/v1/programmes", json={"document": doubled()})
    client.post("/v1/programmes/2026.2/publish", json={"effective_from": later(hours=1)})
    clock.advance(hours=2)
    new = client.post("/v1/transactions", json=txn("t-new", occurred_at=later(hours=1, minutes=30))).get_json()
    late = client.post("/v1/transactions", json=txn("t-late", occurred_at=later(minutes=30))).get_json()
    assert (new["programme_version"], new["points"]) == ("2026.2", 246)
    assert (late["programme_version"], late["points"]) == ("2026.1", 123)


def test_transaction_before_any_programme_is_refused(client):
    enrol(client)
    r = client.post("/v1/transactions", json=txn(occurred_at="2019-06-01T00:00:00+08:00"))
    assert r.status_code == 422
    assert r.get_json()["type"] == "/problems/no_programme"
    assert r.get_json()["field"] == "occurred_at"


def test_first_transfer_bonus_is_given_once(client):
    enrol(client)
    first = client.post("/v1/transactions", json=txn("t1", type="transfer")).get_json()
    second = client.post("/v1/transactions", json=txn("t2", type="transfer")).get_json()
    assert [a["rule_id"] for a in first["awards"]] == ["first-transfer"]
    assert first["points"] == 300
    assert second["points"] == 0


def test_caps_hold_across_transactions_of_a_day(client):
    enrol(client)
    yesterday = later(days=-1)
    big = client.post("/v1/transactions", json=txn("t1", amount=3_000_000_00, occurred_at=yesterday)).get_json()
    assert big["points"] == 20_000  # capped per transaction
    more = client.post("/v1/transactions", json=txn("t2", amount=100_00, occurred_at=yesterday)).get_json()
    assert more["points"] == 0  # the rule's 20,000 a day is used up
    today = client.post("/v1/transactions", json=txn("t3", amount=100_00)).get_json()
    assert today["points"] == 100  # a new local day


def test_simulate_explains_and_writes_nothing(client, engine):
    enrol(client)
    counts = _counts(engine)
    body = {
        "member_id": "m1",
        "transaction": {"type": "card_purchase", "amount": 10_000, "occurred_at": "2026-11-11T10:00:00+08:00"},
        "context": {"tier": "hnw"},
    }
    clock_ok = client.post("/v1/rules/simulate", json=body)
    assert clock_ok.status_code == 200, clock_ok.get_json()
    result = clock_ok.get_json()
    assert {a["rule_id"]: a["points"] for a in result["awards"]} == {
        "card-spend-base": 100,
        "double-11": 100,
        "tier-multiplier": 100,
    }
    assert result["points"] == 300
    assert result["facts"]["month_day"] == "11-11"
    assert any(s["rule_id"] == "first-transfer" and not s["matched"] for s in result["trace"])
    assert _counts(engine) == counts


def test_simulate_under_a_draft_and_for_an_anonymous_member(client):
    client.post("/v1/programmes", json={"document": doubled()})
    r = client.post(
        "/v1/rules/simulate", json={"version": "2026.2", "transaction": {"type": "card_purchase", "amount": 10_000}}
    )
    assert (r.get_json()["programme_version"], r.get_json()["points"]) == ("2026.2", 200)
    r = client.post("/v1/rules/simulate", json={"transaction": {"type": "card_purchase", "amount": -1}})
    assert r.status_code == 422
    assert r.get_json()["field"] == "transaction.amount"
    r = client.post("/v1/rules/simulate", json={"transaction": {"type": "transfer", "amount": 1}, "context": {"x": 1}})
    assert r.get_json()["field"] == "context.x"
    assert (
        client.post(
            "/v1/rules/simulate", json={"member_id": "ghost", "transaction": {"type": "transfer", "amount": 1}}
        ).status_code
        == 422
    )


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("transactions", "journal_entries", "postings", "point_lots", "idempotency_keys")
        }


def test_backtest_equals_booking_the_same_transactions_under_the_candidate(client, runtime, engine):
    candidate = load_programme(doubled("candidate"))
    specs = [
        ("m1", "card_purchase", 12_345, 2),
        ("m1", "transfer", 50_000, 3),
        ("m1", "card_purchase", 99_999, 4),
        ("m2", "wealth_purchase", 1_000_000, 2),
        ("m2", "card_purchase", 2_500_000_00, 5),
        ("m2", "card_purchase", 1_000, 6),
        ("m3", "bill_payment", 3_000, 2),
    ]
    for m in ("m1", "m2", "m3"):
        enrol(client, m)
    for i, (m, kind, amount, hours) in enumerate(specs):
        client.post(
            "/v1/transactions",
            json=txn(f"t{i}", member_id=m, type=kind, amount=amount, occurred_at=later(hours=-hours)),
        )
    r = client.post(
        "/v1/rules/backtest",
        json={
            "document": doubled("candidate"),
            "from": later(days=-1),
            "to": later(days=1),
        },
    )
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    # Book the same transactions for twin members under the candidate, for real.
    booked = 0
    for m in ("m1", "m2", "m3"):
        with transaction(engine) as conn:
            members.enrol(conn, Enrolment(f"twin-{m}", enrolled_at=START), programme=runtime.programme, now=START)
    for i, (m, kind, amount, hours) in enumerate(specs):
        cmd = TransactionCommand(f"w{i}", f"twin-{m}", kind, amount, "CNY", START - dt.timedelta(hours=hours))
        with transaction(engine) as conn:
            booked += accrual.record_transaction(conn, cmd, programme=candidate, now=START).body["points"]
    actual = sum(client.get(f"/v1/transactions/t{i}").get_json()["points"] for i in range(len(specs)))
    assert report["transactions"] == len(specs)
    assert report["points"] == {"actual": actual, "candidate": booked, "delta": booked - actual}
    assert report["liability_delta_cny"] == str((Decimal(booked - actual) / 100).quantize(Decimal("0.01")))
    base = next(r for r in report["by_rule"] if r["rule_id"] == "card-spend-base")
    # 2 per CNY, floored, within the rule's 20,000 a day; m2's second purchase finds the day's cap used up.
    assert (base["actual"], base["candidate"]) == (123 + 999 + 20_000, 246 + 1_999 + 20_000)
    assert sum(r["candidate"] for r in report["by_rule"]) == booked
    assert sum(r["actual"] for r in report["by_rule"]) == actual
    assert sum(b["transactions"] for b in report["by_type"]) == len(specs)
    assert report["most_affected"][0] == {
        "member_id": "m1",
        "actual": 1_122 + 300,
        "candidate": 2_245 + 300,
        "delta": 1_123,
    }


def test_backtest_needs_a_candidate_and_an_order(client):
    r = client.post("/v1/rules/backtest", json={"from": later(days=-1), "to": later(days=1)})
    assert r.status_code == 422 and r.get_json()["field"] == "version"
    r = client.post("/v1/rules/backtest", json={"version": "nope", "from": later(days=-1), "to": later(days=1)})
    assert r.status_code == 404
    r = client.post("/v1/rules/backtest", json={"version": "2026.1", "from": later(days=1), "to": later(days=-1)})
    assert r.status_code == 422 and r.get_json()["field"] == "to"


def test_programme_api_needs_the_admin_scope(client, runtime):
    from tests.conftest import make_key

    reader = make_key(runtime, "read", "accrue")
    assert client.get("/v1/programmes", key=reader).status_code == 403
    assert client.post("/v1/programmes", json={"document": doc()}, key=reader).status_code == 403
    assert client.get("/v1/rules/catalogue", key=reader).status_code == 200
