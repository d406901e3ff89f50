"""Member profiles through the API: ``PUT`` and ``GET /v1/members/{member_id}/profile``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.auth.service import parse_scopes
from tests.conftest import make_key
from tests.helpers import enrol
from tests.test_concurrency import rt  # noqa: F401  (fixture)

FULL = {
    "aum": 1_250_000_00,
    "profit_contribution": -3_500_00,
    "products_held": ["wealth", "deposit", "credit_card"],
    "birth_date": "1985-03-09",
    "occupation": "teacher",
    "region": "310000",
    "preferred_channel": "mini_program",
    "risk_profile": "balanced",
    "as_of": "2026-06-14",
}


def stored(engine: sa.Engine) -> dict[str, Any]:
    """Everything a profile update may write: profiles, birth dates, idempotency records."""
    with engine.connect() as conn:
        return {
            "profiles": [tuple(r) for r in conn.execute(sa.text("SELECT * FROM member_profiles ORDER BY member_id"))],
            "births": conn.execute(sa.text("SELECT member_id, birth_date FROM members ORDER BY member_id")).all(),
            "keys": conn.execute(sa.text("SELECT count(*) FROM idempotency_keys")).scalar_one(),
        }


def put(client: Any, body: Any, member_id: str = "m1", **kwargs: Any) -> Any:
    return client.put(f"/v1/members/{member_id}/profile", json=body, **kwargs)


def test_put_stores_the_profile_and_get_returns_it(client, engine):
    enrol(client)
    r = put(client, FULL)
    assert r.status_code == 200
    expected = {
        "member_id": "m1",
        "as_of": "2026-06-14",
        "aum": 1_250_000_00,
        "profit_contribution": -3_500_00,
        "products_held": ["credit_card", "deposit", "wealth"],
        "birth_date": "1985-03-09",
        "occupation": "teacher",
        "region": "310000",
        "preferred_channel": "mini_program",
        "risk_profile": "balanced",
        "updated_at": "2026-06-15T10:00:00Z",
    }
    assert r.get_json() == expected
    assert client.get("/v1/members/m1/profile").get_json() == expected
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT products_held FROM member_profiles")).scalar_one() == (
            ",credit_card,deposit,wealth,"
        )
        assert str(conn.execute(sa.text("SELECT birth_date FROM members")).scalar_one()) == "1985-03-09"
    assert client.get("/v1/members/m1").get_json()["birth_date"] == "1985-03-09"


def test_a_member_without_a_profile_has_every_field_null(client):
    enrol(client, birth_date="1990-05-01")
    assert client.get("/v1/members/m1/profile").get_json() == {
        "member_id": "m1",
        "as_of": None,
        "aum": None,
        "profit_contribution": None,
        "products_held": None,
        "birth_date": "1990-05-01",
        "occupation": None,
        "region": None,
        "preferred_channel": None,
        "risk_profile": None,
        "updated_at": None,
    }


def test_fields_not_sent_keep_their_values(client, clock):
    enrol(client)
    first = put(client, FULL).get_json()
    clock.advance(days=1)
    r = put(client, {"aum": 7})
    assert r.status_code == 200
    body = r.get_json()
    assert body == {**first, "aum": 7, "as_of": "2026-06-16", "updated_at": "2026-06-16T10:00:00Z"}


def test_null_clears_a_field_and_an_empty_list_means_no_products(client, engine):
    enrol(client)
    put(client, FULL)
    body = put(client, {"occupation": None, "birth_date": None, "aum": None, "products_held": []}).get_json()
    assert (body["occupation"], body["birth_date"], body["aum"], body["products_held"]) == (None, None, None, [])
    assert body["region"] == "310000"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT products_held FROM member_profiles")).scalar_one() == ","
        assert conn.execute(sa.text("SELECT birth_date FROM members")).scalar_one() is None
    assert put(client, {"products_held": None}).get_json()["products_held"] is None


def test_the_widest_amounts_are_accepted(client):
    enrol(client)
    body = put(client, {"aum": 10**15, "profit_contribution": -(10**15)}).get_json()
    assert (body["aum"], body["profit_contribution"]) == (10**15, -(10**15))
    assert put(client, {"aum": 0, "profit_contribution": 10**15}).status_code == 200


def test_as_of_defaults_to_today_in_the_programme_time_zone(client, clock):
    enrol(client)
    clock.now = dt.datetime(2026, 6, 15, 17, 0, tzinfo=dt.UTC)  # 01:00 on the 16th in Shanghai
    assert put(client, {"aum": 1}).get_json()["as_of"] == "2026-06-16"
    assert put(client, {"aum": 2, "as_of": "2026-06-16"}).status_code == 200
    r = put(client, {"aum": 3, "as_of": "2026-06-17"})
    assert r.status_code == 422
    assert r.get_json()["field"] == "as_of"


TOO_MANY = ["deposit", "wealth", "fund", "credit_card", "loan", "insurance", "mortgage", "pension"] * 3
BAD_PROFILES = [
    ("aum as string", {"aum": "100"}, "aum"),
    ("aum as float", {"aum": 100.5}, "aum"),
    ("aum as boolean", {"aum": True}, "aum"),
    ("negative aum", {"aum": -1}, "aum"),
    ("aum beyond 10^15", {"aum": 10**15 + 1}, "aum"),
    ("profit_contribution as string", {"profit_contribution": "5"}, "profit_contribution"),
    ("profit_contribution beyond 10^15", {"profit_contribution": 10**15 + 1}, "profit_contribution"),
    ("profit_contribution below -10^15", {"profit_contribution": -(10**15) - 1}, "profit_contribution"),
    ("products_held as string", {"products_held": "deposit"}, "products_held"),
    ("unknown product", {"products_held": ["deposit", "lottery"]}, "products_held"),
    ("repeated product", {"products_held": ["deposit", "wealth", "deposit"]}, "products_held"),
    ("more than 20 products", {"products_held": TOO_MANY}, "products_held"),
    ("product as number", {"products_held": [1]}, "products_held.0"),
    ("birth_date before 1900", {"birth_date": "1899-12-31"}, "birth_date"),
    ("birth_date tomorrow", {"birth_date": "2026-06-16"}, "birth_date"),
    ("birth_date not a date", {"birth_date": "1990-02-30"}, "birth_date"),
    ("birth_date in basic format", {"birth_date": "19900101"}, "birth_date"),
    ("birth_date as number", {"birth_date": 19900101}, "birth_date"),
    ("empty occupation", {"occupation": ""}, "occupation"),
    ("blank occupation", {"occupation": "   "}, "occupation"),
    ("occupation too long", {"occupation": "x" * 65}, "occupation"),
    ("occupation with a phone number", {"occupation": "call 13800138000"}, "occupation"),
    ("occupation with a line break", {"occupation": "a\nb"}, "occupation"),
    ("occupation as number", {"occupation": 5}, "occupation"),
    ("region with an ID number", {"region": "110101199003074514"}, "region"),
    ("unknown channel", {"preferred_channel": "fax"}, "preferred_channel"),
    ("unknown risk profile", {"risk_profile": "reckless"}, "risk_profile"),
    ("as_of tomorrow", {"as_of": "2026-06-16"}, "as_of"),
    ("as_of null", {"as_of": None}, "as_of"),
    ("as_of not a date", {"as_of": "yesterday"}, "as_of"),
    ("a name", {"name": "张三"}, "name"),
    ("a phone number", {"phone": "13800138000"}, "phone"),
    ("an ID number", {"id_number": "110101199003074514"}, "id_number"),
    ("not an object", ["aum", 1], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_PROFILES, ids=[c[0] for c in BAD_PROFILES])
def test_a_bad_field_is_refused_naming_it_and_nothing_is_written(client, engine, case, body, field):
    enrol(client)
    put(client, FULL)
    before = stored(engine)
    if isinstance(body, dict):
        body = {"aum": 1, "birth_date": "1970-01-01", **body}
    r = put(client, body, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 422, r.get_json()
    assert r.content_type == "application/problem+json"
    problem = r.get_json()
    assert problem["type"] == "/problems/validation_error"
    assert problem["field"] == field
    assert [e["field"] for e in problem["errors"]] == [field]
    assert stored(engine) == before


def test_every_bad_field_is_listed(client):
    enrol(client)
    r = put(client, {"aum": -1, "region": "", "risk_profile": "x", "as_of": "2026-07-01", "phone": "1"})
    assert r.status_code == 422
    assert sorted(e["field"] for e in r.get_json()["errors"]) == ["as_of", "aum", "phone", "region", "risk_profile"]


def test_an_update_older_than_the_stored_one_is_409_and_changes_nothing(client, engine):
    enrol(client)
    put(client, {**FULL, "as_of": "2026-06-10"})
    before = stored(engine)
    r = put(client, {"aum": 1, "birth_date": "2000-01-01", "as_of": "2026-06-09"})
    assert r.status_code == 409
    problem = r.get_json()
    assert (problem["type"], problem["field"]) == ("/problems/stale_profile", "as_of")
    assert "2026-06-10" in problem["detail"]
    assert stored(engine) == before
    same_day = put(client, {"aum": 2, "as_of": "2026-06-10"})
    assert same_day.status_code == 200
    assert same_day.get_json()["aum"] == 2
    assert put(client, {"aum": 3}).get_json()["as_of"] == "2026-06-15"


def test_an_unknown_member_is_404(client, engine):
    for r in (client.get("/v1/members/ghost/profile"), put(client, {"aum": 1}, member_id="ghost")):
        assert r.status_code == 404
        assert r.get_json()["type"] == "/problems/member_not_found"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM member_profiles")).scalar_one() == 0


def test_accrue_or_profile_may_write_and_read_may_read(client, runtime):
    enrol(client)
    accrue, profile, read, redeem = (make_key(runtime, s) for s in ("accrue", "profile", "read", "redeem"))
    assert put(client, {"aum": 1}, key=accrue).status_code == 200
    assert put(client, {"aum": 2}, key=profile).status_code == 200
    for key in (read, redeem):
        r = put(client, {"aum": 3}, key=key)
        assert r.status_code == 403
        assert "'accrue' or 'profile'" in r.get_json()["detail"]
    assert put(client, {"aum": 3}, key=None).status_code == 401
    assert client.get("/v1/members/m1/profile", key=read).get_json()["aum"] == 2
    assert client.get("/v1/members/m1/profile", key=profile).status_code == 403
    assert parse_scopes("profile") == frozenset({"profile"})


def test_idempotency_key_replays_the_first_answer(client, clock, engine):
    enrol(client)
    first = put(client, {"aum": 1}, headers={"Idempotency-Key": "snap-1"})
    assert first.status_code == 200
    clock.advance(minutes=5)
    again = put(client, {"aum": 1}, headers={"Idempotency-Key": "snap-1"})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    other = put(client, {"aum": 2}, headers={"Idempotency-Key": "snap-1"})
    assert other.status_code == 409
    assert other.get_json()["type"] == "/problems/idempotency_conflict"
    now = client.get("/v1/members/m1/profile").get_json()
    assert (now["aum"], now["updated_at"]) == (1, "2026-06-15T10:00:00Z")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM idempotency_keys")).scalar_one() == 1


def tier_of(engine: sa.Engine, member_id: str = "m1") -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(sa.text("SELECT tier FROM members WHERE member_id = :m"), {"m": member_id}).scalar_one()
        )


def test_a_profile_that_qualifies_the_member_upgrades_them_at_once(client, engine):
    enrol(client)
    assert put(client, {"aum": 4_999_999}).status_code == 200
    assert tier_of(engine) == "basic"
    assert put(client, {"aum": 5_000_000}).status_code == 200  # 50,000 CNY: mass
    assert tier_of(engine) == "mass"
    assert put(client, {"aum": 1, "profit_contribution": 5_000_000, "as_of": "2026-06-01"}).status_code == 409
    assert tier_of(engine) == "mass"  # the refused update changed nothing
    assert put(client, {"profit_contribution": 5_000_000}).status_code == 200  # 50,000 CNY a year: hnw
    assert tier_of(engine) == "hnw"
    with engine.connect() as conn:
        changes = conn.execute(
            sa.text("SELECT from_tier, to_tier, source FROM tier_changes WHERE source = 'event' ORDER BY changed_at")
        ).all()
    assert [tuple(c) for c in changes] == [("basic", "mass", "event"), ("mass", "hnw", "event")]


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_profile_updates_and_imports_racing_bookings_neither_deadlock_nor_lose_writes(rt, tmp_path):  # noqa: F811
    """Profile writers lock the member's rows in the order bookings do, so a birth
    date update, an import and a booking of one member wait for each other in turn."""
    from loyalty.db import transaction
    from loyalty.members import profiles
    from loyalty.members.profile_import import import_file
    from tests.test_concurrency import assert_verified, book, race
    from tests.test_concurrency import enrol as enrol_member

    ids = [f"m{i}" for i in range(6)]
    for m in ids:
        enrol_member(rt, m)
    snapshot = tmp_path / "snapshot.csv"
    snapshot.write_text(
        "member_id,as_of,aum,profit_contribution,products_held,birth_date,occupation,region,preferred_channel,"
        "risk_profile\n"
        + "".join(f"{m},2026-06-15,5000000,,deposit|fund,1990-01-0{i + 1},,,,\n" for i, m in enumerate(ids)),
        encoding="utf-8",
    )

    def work(i: int) -> object:
        if i == 0:
            return import_file(rt, snapshot, rejects_path=tmp_path / "rejects.csv", chunk_size=2, progress=False)
        for round_ in range(4):
            for m in ids if i % 2 else reversed(ids):
                if i < 4:
                    with transaction(rt.engine) as conn:
                        cmd = profiles.ProfileUpdate({"birth_date": dt.date(1985, 1, 1 + i), "region": f"r{i}"})
                        profiles.put_profile(conn, m, cmd, programme=rt.programme, now=rt.now())
                else:
                    book(rt, f"t{i}-{round_}-{m}", 1_000, m)
        return None

    results = race(work, 8)
    assert not [r for r in results if isinstance(r, BaseException)], results
    summary = results[0]
    assert (summary.read, summary.rejected) == (len(ids), 0)  # type: ignore[union-attr]
    with rt.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT member_id, aum, as_of FROM member_profiles ORDER BY member_id")).all()
        tiers = set(conn.execute(sa.text("SELECT tier FROM members")).scalars())
        booked = conn.execute(sa.text("SELECT count(*) FROM transactions")).scalar_one()
    assert [(m, aum, str(as_of)) for m, aum, as_of in rows] == [(m, 5_000_000, "2026-06-15") for m in ids]
    assert tiers == {"mass"}
    assert booked == 4 * 4 * len(ids)
    assert_verified(rt)


def test_completing_the_profile_earns_the_programme_bonus_once(client):
    enrol(client)
    partial = {"birth_date": "1990-01-01", "occupation": "engineer", "region": "Shanghai"}
    assert client.put("/v1/members/m1/profile", json=partial).status_code == 200
    assert client.get("/v1/members/m1").get_json()["balance"] == 500
    rest = {"preferred_channel": "app", "risk_profile": "balanced"}
    assert client.put("/v1/members/m1/profile", json=rest).status_code == 200
    assert client.get("/v1/members/m1").get_json()["balance"] == 600
    assert client.put("/v1/members/m1/profile", json={"region": "Beijing"}).status_code == 200
    assert client.get("/v1/members/m1").get_json()["balance"] == 600
    entries = client.get("/v1/members/m1/entries").get_json()["entries"]
    assert [e["source_ref"] for e in entries] == ["profile_completed", "account_opened"]
