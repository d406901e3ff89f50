"""The benefit catalogue through its admin API and CLI, on both backends: benefits, versions,
audit, status changes, validation, voucher code pools and the default catalogue."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from loyalty.app import create_app
from loyalty.catalogue.codes import CodeBox
from loyalty.catalogue.service import default_catalogue
from loyalty.db import metadata
from loyalty.runtime import Runtime
from tests.conftest import TEST_SECRET_KEY, make_key
from tests.contract import ContractClient
from tests.test_cli import LOYALTY

#: Voucher codes uploaded in the tests: none may appear anywhere in the database or an answer.
CODES = ["AAAA-1111-SECRET", "BBBB-2222-SECRET", "CCCC-3333-SECRET"]


def loyalty(database_url: str, *args: str, secret_key: str = TEST_SECRET_KEY) -> subprocess.CompletedProcess[str]:
    """Run the ``loyalty`` command against ``database_url`` with ``LOYALTY_SECRET_KEY`` set to ``secret_key``."""
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_SECRET_KEY": secret_key}
    return subprocess.run([LOYALTY, *args], env=env, capture_output=True, text=True, timeout=120)


def phone(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": "phone-10",
        "name": "Phone credit 10 CNY",
        "kind": "phone_credit",
        "fulfilment": "partner",
        "partner": "telecom",
        "face_value": 1000,
        "unit_cost": 985,
        "points_price": 1000,
        "tier_prices": {"hnw": 800},
        "limits": {"month": 5},
    }
    body.update(over)
    return body


def pool(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": "market-50",
        "name": "Supermarket card 50 CNY",
        "kind": "voucher",
        "fulfilment": "pool",
        "face_value": 5000,
        "unit_cost": 4850,
        "points_price": 5200,
        "cancel_hours": 24,
        "low_stock_threshold": 10,
    }
    body.update(over)
    return body


def create(client: ContractClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/benefits", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def upload(client: ContractClient, code: str, text: str, **kwargs: Any) -> Any:
    return client.post(f"/v1/benefits/{code}/codes", data=text.encode(), content_type="text/csv", **kwargs)


def written(engine: sa.Engine) -> dict[str, int]:
    """Row counts of the tables the catalogue writes."""
    tables = ["benefits", "benefit_versions", "voucher_codes", "audit_log", "accounts", "idempotency_keys"]
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def audit(client: ContractClient, code: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/audit?object_type=benefit&object_id={code}")
    return r.get_json()["entries"]  # type: ignore[no-any-return]


def without_meta(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("updated_by", "updated_at")}


# --- benefits, versions and audit ----------------------------------------------------------------


def test_a_benefit_is_created_at_version_1_with_its_ledger_account_and_audited(client, engine, clock):
    view = create(client, phone())
    assert view["version"] == 1 and view["status"] == "draft"
    assert view["updated_by"] == "test" and view["updated_at"] == "2026-06-15T10:00:00Z"
    assert (view["face_value"], view["unit_cost"], view["points_price"]) == (1000, 985, 1000)
    assert view["funding_source"] == "bank" and view["stock"] is None and view["cancel_hours"] == 0
    assert view["eligible_tiers"] == [] and view["entitlements"] == {} and view["valid_from"] is None
    assert client.get("/v1/benefits/phone-10").get_json() == view
    assert client.get("/v1/benefits").get_json() == {"benefits": [view]}
    assert client.get("/v1/benefits?status=active").get_json() == {"benefits": []}
    with engine.connect() as conn:
        account = conn.execute(sa.text("SELECT kind FROM accounts WHERE code = 'redeemed:phone-10'")).scalar()
    assert account == "redeemed"
    versions = client.get("/v1/benefits/phone-10/versions").get_json()["versions"]
    assert versions == [
        {"version": 1, "changed_by": "test", "changed_at": "2026-06-15T10:00:00Z", "document": without_meta(view)}
    ]
    (entry,) = audit(client, "phone-10")
    assert (entry["actor"], entry["action"], entry["at"]) == ("test", "benefit.created", "2026-06-15T10:00:00Z")
    assert entry["before"] is None and entry["after"] == without_meta(view)


def test_creating_an_existing_code_is_a_conflict_and_writes_nothing(client, engine):
    create(client, phone())
    before = written(engine)
    r = client.post("/v1/benefits", json=phone(name="Another"))
    assert r.status_code == 409
    assert (r.get_json()["type"], r.get_json()["field"]) == ("/problems/benefit_exists", "code")
    assert written(engine) == before


def test_each_change_is_a_version_with_the_whole_document_and_an_audit_line(client, clock):
    first = create(client, phone())
    clock.advance(hours=1)
    body = phone(points_price=1100, eligible_tiers=["potential", "hnw"])
    del body["code"]
    r = client.put("/v1/benefits/phone-10", json=body)
    assert r.status_code == 200, r.get_json()
    second = r.get_json()
    assert second["version"] == 2 and second["points_price"] == 1100
    assert second["eligible_tiers"] == ["hnw", "potential"], "kept in ladder order"
    assert second["updated_at"] == "2026-06-15T11:00:00Z"

    versions = client.get("/v1/benefits/phone-10/versions").get_json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["document"] == without_meta(second)
    assert versions[1]["document"] == without_meta(first)
    assert versions[0]["changed_at"] == "2026-06-15T11:00:00Z"

    latest = audit(client, "phone-10")[0]
    assert (latest["actor"], latest["action"], latest["at"]) == ("test", "benefit.updated", "2026-06-15T11:00:00Z")
    assert latest["before"]["points_price"] == 1000 and latest["before"]["version"] == 1
    assert latest["after"]["points_price"] == 1100 and latest["after"]["version"] == 2

    # The same definition again changes nothing: no version, no audit line.
    assert client.put("/v1/benefits/phone-10", json=body).get_json()["version"] == 2
    assert len(audit(client, "phone-10")) == 2
    # A full replacement: a field left out goes back to its default.
    body.pop("limits")
    third = client.put("/v1/benefits/phone-10", json=body).get_json()
    assert (third["version"], third["limits"]) == (3, {})


def test_a_replacement_may_send_back_code_and_version_and_a_stale_version_is_refused(client, engine):
    view = create(client, phone())
    body = {k: v for k, v in view.items() if k not in ("status", "stock", "updated_by", "updated_at")}
    body["stock"] = 500
    r = client.put("/v1/benefits/phone-10", json=body)
    assert r.status_code == 200 and r.get_json()["version"] == 2 and r.get_json()["stock"] == 500
    before = written(engine)
    r = client.put("/v1/benefits/phone-10", json={**body, "name": "Stale edit"})
    assert r.status_code == 409
    assert (r.get_json()["type"], r.get_json()["field"]) == ("/problems/stale_version", "version")
    r = client.put("/v1/benefits/phone-10", json={**body, "version": 2, "code": "other"})
    assert (r.status_code, r.get_json()["field"]) == (422, "code")
    r = client.put("/v1/benefits/phone-10", json={**body, "version": 2, "status": "active"})
    assert (r.status_code, r.get_json()["field"]) == (422, "status")
    assert written(engine) == before
    assert client.get("/v1/benefits/phone-10").get_json()["name"] == "Phone credit 10 CNY"


def test_status_moves_draft_active_paused_and_retired_is_final(client, engine, clock):
    create(client, phone())

    def move(status: str) -> Any:
        clock.advance(minutes=1)
        return client.post("/v1/benefits/phone-10/status", json={"status": status})

    refused = move("paused")
    assert refused.status_code == 409
    assert (refused.get_json()["type"], refused.get_json()["field"]) == (
        "/problems/invalid_status_transition",
        "status",
    )
    assert move("active").get_json()["version"] == 2
    assert move("draft").status_code == 409
    assert move("paused").get_json()["status"] == "paused"
    assert move("active").get_json()["version"] == 4
    assert move("active").get_json()["version"] == 4, "the status it has already changes nothing"
    retired = move("retired").get_json()
    assert (retired["status"], retired["version"]) == ("retired", 5)

    before = written(engine)
    for status in ("active", "paused", "draft"):
        r = move(status)
        assert (r.status_code, r.get_json()["type"]) == (409, "/problems/benefit_retired")
    body = phone(name="Edited after retirement")
    del body["code"]
    r = client.put("/v1/benefits/phone-10", json=body)
    assert (r.status_code, r.get_json()["type"]) == (409, "/problems/benefit_retired")
    assert written(engine) == before

    versions = client.get("/v1/benefits/phone-10/versions").get_json()["versions"]
    assert [v["document"]["status"] for v in versions] == ["retired", "active", "paused", "active", "draft"]
    actions = [e["action"] for e in audit(client, "phone-10")]
    assert actions == ["benefit.status_changed"] * 4 + ["benefit.created"]
    assert audit(client, "phone-10")[0]["before"]["status"] == "active"
    assert client.get("/v1/benefits?status=retired").get_json()["benefits"][0]["code"] == "phone-10"


def test_a_draft_may_be_retired_and_a_benefit_created_active(client):
    create(client, phone())
    assert client.post("/v1/benefits/phone-10/status", json={"status": "retired"}).status_code == 200
    assert create(client, pool(status="active"))["status"] == "active"
    r = client.post("/v1/benefits/market-50/status", json={"status": "deleted"})
    assert (r.status_code, r.get_json()["field"]) == (422, "status")
    assert client.post("/v1/benefits/nothing/status", json={"status": "active"}).status_code == 404


def test_an_entitlement_only_benefit(client):
    view = create(
        client,
        phone(
            code="lounge",
            kind="experience",
            fulfilment="bank",
            partner=None,
            points_price=None,
            tier_prices={},
            eligible_tiers=["hnw"],
            entitlements={"hnw": {"quota": 6, "period": "year"}},
            valid_from="2026-07-01T00:00:00+08:00",
            valid_until="2027-07-01T00:00:00+08:00",
        ),
    )
    assert view["points_price"] is None and view["entitlements"] == {"hnw": {"quota": 6, "period": "year"}}
    assert (view["valid_from"], view["valid_until"]) == ("2026-06-30T16:00:00Z", "2027-06-30T16:00:00Z")


# --- validation ----------------------------------------------------------------------------------

BAD = [
    ("code upper case", {"code": "Phone 10"}, "code"),
    ("code missing", {"code": None}, "code"),
    ("code starting with -", {"code": "-phone"}, "code"),
    ("name empty", {"name": ""}, "name"),
    ("name blank", {"name": "   "}, "name"),
    ("name missing", {"name": None}, "name"),
    ("description not text", {"description": 5}, "description"),
    ("kind unknown", {"kind": "cash"}, "kind"),
    ("fulfilment unknown", {"fulfilment": "post"}, "fulfilment"),
    ("pool for a phone credit", {"fulfilment": "pool", "partner": None}, "fulfilment"),
    ("partner fulfilment without partner", {"partner": None}, "partner"),
    ("partner not an id", {"partner": "Tele Com"}, "partner"),
    ("face value negative", {"face_value": -1}, "face_value"),
    ("face value a float", {"face_value": 10.5}, "face_value"),
    ("face value a string", {"face_value": "1000"}, "face_value"),
    ("unit cost a boolean", {"unit_cost": True}, "unit_cost"),
    ("unit cost missing", {"unit_cost": None}, "unit_cost"),
    ("funding source not an id", {"funding_source": "Bank!"}, "funding_source"),
    ("price 0", {"points_price": 0}, "points_price"),
    ("price a float", {"points_price": 99.5}, "points_price"),
    ("no price and no entitlement", {"points_price": None, "tier_prices": {}}, "entitlements"),
    (
        "tier prices without a price",
        {"points_price": None, "entitlements": {"hnw": {"quota": 1, "period": "year"}}},
        "tier_prices",
    ),
    ("tier price of an unknown tier", {"tier_prices": {"gold": 100}}, "tier_prices.gold"),
    ("tier price 0", {"tier_prices": {"hnw": 0}}, "tier_prices.hnw"),
    ("tier prices not an object", {"tier_prices": [800]}, "tier_prices"),
    ("tier price of an ineligible tier", {"eligible_tiers": ["mass"]}, "tier_prices.hnw"),
    ("eligible tier unknown", {"eligible_tiers": ["gold"]}, "eligible_tiers.0"),
    ("eligible tier twice", {"eligible_tiers": ["hnw", "hnw"]}, "eligible_tiers.1"),
    ("eligible tiers not a list", {"eligible_tiers": "hnw"}, "eligible_tiers"),
    ("entitlement quota 0", {"entitlements": {"hnw": {"quota": 0, "period": "year"}}}, "entitlements.hnw.quota"),
    ("entitlement period week", {"entitlements": {"hnw": {"quota": 1, "period": "week"}}}, "entitlements.hnw.period"),
    ("entitlement of an unknown tier", {"entitlements": {"gold": {"quota": 1, "period": "year"}}}, "entitlements.gold"),
    (
        "entitlement with an unknown field",
        {"entitlements": {"hnw": {"quota": 1, "period": "year", "rollover": True}}},
        "entitlements.hnw.rollover",
    ),
    ("entitlement not an object", {"entitlements": {"hnw": 6}}, "entitlements.hnw"),
    ("stock negative", {"stock": -1}, "stock"),
    ("low stock threshold negative", {"low_stock_threshold": -1}, "low_stock_threshold"),
    ("limit per week", {"limits": {"week": 1}}, "limits.week"),
    ("limit 0", {"limits": {"day": 0}}, "limits.day"),
    ("valid from a date", {"valid_from": "2026-07-01"}, "valid_from"),
    ("valid from without offset", {"valid_from": "2026-07-01T00:00:00"}, "valid_from"),
    (
        "valid until before valid from",
        {"valid_from": "2026-07-02T00:00:00Z", "valid_until": "2026-07-01T00:00:00Z"},
        "valid_until",
    ),
    ("cancel hours 721", {"cancel_hours": 721}, "cancel_hours"),
    ("cancel hours negative", {"cancel_hours": -1}, "cancel_hours"),
    ("unknown field", {"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD, ids=[c[0] for c in BAD])
def test_every_bad_field_is_named_and_nothing_is_written(client, engine, case, change, field):
    create(client, phone(code="existing"))
    before = written(engine)
    r = client.post("/v1/benefits", json=phone(**change))
    assert r.status_code == 422, (case, r.get_json())
    assert r.content_type == "application/problem+json"
    assert (r.get_json()["type"], r.get_json()["field"]) == ("/problems/validation_error", field)
    if field != "code":
        replacement = {k: v for k, v in phone(**change).items() if k != "code"}
        r = client.put("/v1/benefits/existing", json=replacement)
        assert (r.status_code, r.get_json()["field"]) == (422, field)
    assert written(engine) == before
    assert client.get("/v1/benefits/existing").get_json()["version"] == 1


def test_a_pool_stock_cannot_be_set_by_hand_and_a_new_benefit_is_draft_or_active(client, engine):
    before = written(engine)
    r = client.post("/v1/benefits", json=pool(stock=100))
    assert (r.status_code, r.get_json()["field"]) == (422, "stock")
    r = client.post("/v1/benefits", json=pool(status="paused"))
    assert (r.status_code, r.get_json()["field"]) == (422, "status")
    assert written(engine) == before


def test_every_bad_field_is_listed_at_once(client):
    r = client.post("/v1/benefits", json=phone(kind="cash", face_value=-1, limits={"week": 1}))
    assert r.status_code == 422
    assert {e["field"] for e in r.get_json()["errors"]} == {"kind", "face_value", "limits.week"}


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": "{}", "content_type": "text/plain"}, 415, "Content-Type"),
        ({"data": "{", "content_type": "application/json"}, 400, "body"),
        ({"json": [phone()]}, 422, "body"),
    ],
    ids=["not JSON", "broken JSON", "not an object"],
)
def test_a_body_that_is_not_a_json_object_is_refused(client, engine, kwargs, status, field):
    before = written(engine)
    r = client.post("/v1/benefits", **kwargs)
    assert (r.status_code, r.get_json()["field"]) == (status, field)
    assert written(engine) == before


def test_an_unknown_status_filter_is_named(client):
    r = client.get("/v1/benefits?status=gone")
    assert (r.status_code, r.get_json()["field"]) == (422, "status")
    assert client.get("/v1/benefits/nothing").status_code == 404
    assert client.get("/v1/benefits/nothing/versions").status_code == 404


# --- scopes and idempotency ------------------------------------------------------------------------


def test_the_catalogue_needs_the_admin_scope(app, runtime, engine):
    admin = ContractClient(app.test_client(), make_key(runtime, "admin"))
    create(admin, pool())
    before = written(engine)
    others = ContractClient(app.test_client(), make_key(runtime, "accrue", "redeem", "read", "finance", "profile"))
    anonymous = ContractClient(app.test_client(), None)
    requests = [
        ("POST", "/v1/benefits", {"json": pool(code="other")}),
        ("GET", "/v1/benefits", {}),
        ("GET", "/v1/benefits/market-50", {}),
        ("PUT", "/v1/benefits/market-50", {"json": pool()}),
        ("POST", "/v1/benefits/market-50/status", {"json": {"status": "active"}}),
        ("GET", "/v1/benefits/market-50/versions", {}),
        ("POST", "/v1/benefits/market-50/codes", {"data": b"ABCD-1234", "content_type": "text/csv"}),
        ("GET", "/v1/benefits/market-50/codes", {}),
    ]
    for method, path, kwargs in requests:
        assert others.open(method, path, **kwargs).status_code == 403, (method, path)
        assert anonymous.open(method, path, **kwargs).status_code == 401, (method, path)
    assert written(engine) == before


def test_an_idempotency_key_creates_and_replaces_once(client, engine):
    headers = {"Idempotency-Key": "create-1"}
    first = client.post("/v1/benefits", json=phone(), headers=headers)
    again = client.post("/v1/benefits", json=phone(), headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    assert client.post("/v1/benefits", json=phone(name="Other"), headers=headers).status_code == 409
    body = {k: v for k, v in phone(points_price=1200).items() if k != "code"}
    headers = {"Idempotency-Key": "replace-1"}
    assert client.put("/v1/benefits/phone-10", json=body, headers=headers).get_json()["version"] == 2
    replayed = client.put("/v1/benefits/phone-10", json=body, headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.get_json()["version"] == 2
    assert len(client.get("/v1/benefits/phone-10/versions").get_json()["versions"]) == 2
    assert written(engine)["benefits"] == 1


# --- voucher code pools --------------------------------------------------------------------------


def dump(engine: sa.Engine) -> str:
    """Every row of every table, as text."""
    with engine.connect() as conn:
        return "\n".join(repr(tuple(row)) for table in metadata.sorted_tables for row in conn.execute(sa.select(table)))


def test_codes_are_added_once_and_stock_grows(client, engine):
    create(client, pool())
    counts = client.get("/v1/benefits/market-50/codes").get_json()
    assert counts == {"benefit_code": "market-50", "stock": 0, "available": 0, "issued": 0}
    first = upload(client, "market-50", f"code\r\n{CODES[0]}\r\n\r\n  {CODES[1]}  \r\n{CODES[0]}\r\n")
    assert first.status_code == 200, first.get_json()
    assert first.get_json() == {"benefit_code": "market-50", "added": 2, "duplicates": 1, "stock": 2}
    second = upload(client, "market-50", f"{CODES[1]}\n{CODES[2]}\n")
    assert second.get_json() == {"benefit_code": "market-50", "added": 1, "duplicates": 1, "stock": 3}
    counts = client.get("/v1/benefits/market-50/codes").get_json()
    assert counts == {"benefit_code": "market-50", "stock": 3, "available": 3, "issued": 0}
    view = client.get("/v1/benefits/market-50").get_json()
    assert (view["stock"], view["version"]) == (3, 1), "uploads change stock, not the definition"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM voucher_codes")).scalar_one() == 3

    entries = audit(client, "market-50")
    assert [e["action"] for e in entries] == ["benefit.codes_added", "benefit.codes_added", "benefit.created"]
    assert entries[1]["before"] == {"stock": 0}
    assert entries[1]["after"] == {"added": 2, "duplicates": 1, "stock": 2}
    assert entries[0]["actor"] == "test"

    # A replacement keeps the pool's stock: it is the codes available.
    body = {k: v for k, v in pool(points_price=5000).items() if k != "code"}
    assert client.put("/v1/benefits/market-50", json=body).get_json()["stock"] == 3


def test_a_dump_of_the_database_reveals_no_code(client, engine):
    create(client, pool())
    responses = [upload(client, "market-50", "\n".join(CODES), headers={"Idempotency-Key": "codes-1"})]
    responses.append(upload(client, "market-50", "\n".join(CODES), headers={"Idempotency-Key": "codes-1"}))
    responses += [
        client.get("/v1/benefits/market-50/codes"),
        client.get("/v1/benefits/market-50"),
        client.get("/v1/audit?limit=500"),
    ]
    assert responses[1].headers["Idempotent-Replayed"] == "true"
    text = dump(engine)
    for code in CODES:
        assert code not in text
        assert code.lower() not in text.lower()
        assert hashlib.sha256(code.encode()).hexdigest() not in text
        for r in responses:
            assert code not in r.get_data(as_text=True)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT digest, secret FROM voucher_codes")).all()
    assert len(rows) == 3
    mine, another = CodeBox(TEST_SECRET_KEY), CodeBox("another-key-0123456789")
    opened = set()
    for digest, secret in rows:
        raw = base64.urlsafe_b64decode(secret)
        assert not any(code.encode() in raw for code in CODES), "the ciphertext holds no plaintext"
        with pytest.raises(InvalidTag):
            another.open("market-50", secret)
        opened.add(mine.open("market-50", secret))
        assert digest != another.digest("market-50", mine.open("market-50", secret))
    assert opened == set(CODES), "the key, and only the key, opens them"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ABCD-1234\nAB\n", "line 2"),
        ("ABCD-1234\nAB CD 1234\n", "line 2"),
        ("ABCD-1234\n" + "X" * 65 + "\n", "line 2"),
        ("ABCD-1234,EFGH-5678\n", "line 1"),
        ('ABCD-1234\n"EFGH\n', "line 2"),
        ("code\n\n", "body"),
        ("", "body"),
    ],
    ids=["too short", "spaces", "too long", "two columns", "open quote", "header only", "empty"],
)
def test_a_bad_code_file_is_refused_whole_naming_the_line_not_the_code(client, engine, text, field):
    create(client, pool())
    before = written(engine)
    r = upload(client, "market-50", text)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["field"] == field
    assert "ABCD" not in r.get_data(as_text=True) and "EFGH" not in r.get_data(as_text=True)
    assert written(engine) == before


def test_codes_only_go_to_a_live_pool_as_csv(client, engine):
    create(client, phone())
    create(client, pool())
    before = written(engine)
    r = upload(client, "phone-10", "ABCD-1234\n")
    assert (r.status_code, r.get_json()["type"], r.get_json()["field"]) == (422, "/problems/not_a_code_pool", "code")
    assert client.get("/v1/benefits/phone-10/codes").status_code == 422
    assert upload(client, "nothing", "ABCD-1234\n").status_code == 404
    r = client.post("/v1/benefits/market-50/codes", data="ABCD-1234", content_type="text/plain")
    assert (r.status_code, r.get_json()["field"]) == (415, "Content-Type")
    r = client.post("/v1/benefits/market-50/codes", data=b"\xff\xfe\x00", content_type="text/csv")
    assert (r.status_code, r.get_json()["field"]) == (400, "body")
    assert written(engine) == before
    client.post("/v1/benefits/market-50/status", json={"status": "retired"})
    r = upload(client, "market-50", "ABCD-1234\n")
    assert (r.status_code, r.get_json()["type"]) == (409, "/problems/benefit_retired")


def test_a_pool_with_codes_stays_a_pool(client):
    create(client, pool())
    upload(client, "market-50", "ABCD-1234\n")
    body = {k: v for k, v in pool(kind="membership", fulfilment="bank").items() if k != "code"}
    r = client.put("/v1/benefits/market-50", json=body)
    assert (r.status_code, r.get_json()["field"]) == (422, "fulfilment")


def test_a_benefit_that_becomes_a_pool_counts_its_stock_from_codes(client):
    create(client, pool(code="gym", fulfilment="bank", stock=40))
    body = {k: v for k, v in pool(code="gym").items() if k != "code"}
    view = client.put("/v1/benefits/gym", json=body).get_json()
    assert (view["fulfilment"], view["stock"]) == ("pool", 0)


def test_without_a_secret_key_codes_are_refused_saying_how_to_fix_it(runtime, settings, clock, client, engine):
    create(client, pool())
    before = written(engine)
    bare = Runtime(
        settings=dataclasses.replace(settings, secret_key=""),
        engine=runtime.engine,
        programmes=runtime.programmes,
        clock=clock,
    )
    unkeyed = ContractClient(create_app(bare).test_client(), client.api_key)
    r = upload(unkeyed, "market-50", "ABCD-1234\n")
    assert r.status_code == 503
    assert (r.get_json()["type"], r.get_json()["field"]) == ("/problems/secret_key_missing", "LOYALTY_SECRET_KEY")
    assert "LOYALTY_SECRET_KEY" in r.get_json()["detail"]
    assert written(engine) == before
    assert unkeyed.get("/v1/benefits/market-50/codes").status_code == 200, "counting needs no key"


# --- the default catalogue -----------------------------------------------------------------------


@pytest.mark.committed
def test_install_default_creates_the_shipped_catalogue_once_and_leaves_changes_alone(database_url, engine, client):
    first = loyalty(database_url, "catalogue", "install-default")
    assert first.returncode == 0, first.stderr
    shipped = [b["code"] for b in default_catalogue()]
    assert f"installed {len(shipped)} benefits" in first.stdout
    listed = client.get("/v1/benefits").get_json()["benefits"]
    assert sorted(b["code"] for b in listed) == sorted(shipped)
    assert all(b["status"] == "active" and b["updated_by"] == "system" for b in listed)
    with engine.connect() as conn:
        accounts = set(conn.execute(sa.text("SELECT code FROM accounts WHERE kind = 'redeemed'")).scalars())
    assert {f"redeemed:{code}" for code in shipped} <= accounts

    lounge = client.get("/v1/benefits/airport-lounge").get_json()
    assert lounge["points_price"] is None and lounge["eligible_tiers"] == ["hnw"]
    assert lounge["entitlements"] == {"hnw": {"quota": 6, "period": "year"}}
    phone10 = client.get("/v1/benefits/phone-credit-10").get_json()
    assert (phone10["partner"], phone10["points_price"], phone10["tier_prices"]["hnw"]) == ("telecom", 1000, 800)

    client.post("/v1/benefits/phone-credit-10/status", json={"status": "paused"})
    second = loyalty(database_url, "catalogue", "install-default")
    assert second.returncode == 0, second.stderr
    assert f"installed 0 benefits; {len(shipped)} already present" in second.stdout
    again = client.get("/v1/benefits/phone-credit-10").get_json()
    assert (again["status"], again["version"]) == ("paused", 2)
    assert len(client.get("/v1/benefits").get_json()["benefits"]) == len(shipped)

    pools = loyalty(database_url, "catalogue", "list", "--fulfilment", "pool", "--quiet")
    assert pools.stdout.split() == sorted(b["code"] for b in default_catalogue() if b["fulfilment"] == "pool")


@pytest.mark.committed
def test_demo_codes_fill_a_pool_without_printing_a_code(database_url, engine, client):
    assert loyalty(database_url, "catalogue", "install-default").returncode == 0
    made = loyalty(database_url, "catalogue", "demo-codes", "starter-gift-pack", "25")
    assert made.returncode == 0, made.stderr
    assert "added 25 demo codes; stock 25" in made.stdout and "DEMO-" not in made.stdout + made.stderr
    skipped = loyalty(database_url, "catalogue", "demo-codes", "--if-empty", "starter-gift-pack", "25")
    assert skipped.returncode == 0 and "25 codes available; no demo codes added" in skipped.stdout
    counts = client.get("/v1/benefits/starter-gift-pack/codes").get_json()
    assert (counts["available"], counts["stock"]) == (25, 25)
    assert "DEMO-" not in dump(engine)

    not_pool = loyalty(database_url, "catalogue", "demo-codes", "phone-credit-10", "5")
    assert not_pool.returncode == 1 and "not from a code pool" in not_pool.stderr
    unkeyed = loyalty(database_url, "catalogue", "demo-codes", "gym-card-10-visits", "5", secret_key="")
    assert unkeyed.returncode == 1 and "LOYALTY_SECRET_KEY" in unkeyed.stderr
    assert client.get("/v1/benefits/gym-card-10-visits/codes").get_json()["available"] == 0


def test_the_shipped_catalogue_follows_the_banks_description():
    shipped = {b["code"]: b for b in default_catalogue()}
    assert shipped["phone-credit-10"]["points_price"] == 1000
    assert {c for c, b in shipped.items() if b["fulfilment"] == "pool"} == {
        "supermarket-card-50",
        "food-delivery-coupon-20",
        "gym-card-10-visits",
        "starter-gift-pack",
    }
    entitlements = {c: b["entitlements"] for c, b in shipped.items() if b.get("points_price") is None}
    assert entitlements == {
        "airport-lounge": {"hnw": {"quota": 6, "period": "year"}},
        "hnw-private-event": {"hnw": {"quota": 4, "period": "year"}},
        "finance-lecture-online": {"potential": {"quota": 2, "period": "month"}},
    }
    for code, benefit in shipped.items():
        if benefit["fulfilment"] == "partner":
            assert benefit["cancel_hours"] == 0, code
        if benefit["kind"] == "voucher":
            assert benefit["cancel_hours"] == 24, code
        if benefit.get("points_price") is not None:
            assert benefit["limits"], f"{code} has a per-member limit"
            hnw = benefit.get("tier_prices", {}).get("hnw", benefit["points_price"])
            assert hnw <= benefit["points_price"], f"{code}: hnw pays no more than others"
