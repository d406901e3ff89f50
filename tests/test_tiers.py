"""Tiers end to end: upgrades on events, the quarterly review, overrides, history, progress, events."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import calendar
from loyalty.accrual import service as accrual
from loyalty.db import transaction
from loyalty.jobs.runner import run_job
from loyalty.ledger import service as ledger
from loyalty.records.models import member_profiles, members
from loyalty.runtime import Runtime
from loyalty.tiers import service as tiers
from loyalty.tiers import sql as tsql
from tests.conftest import START
from tests.helpers import enrol as enrol_member
from tests.helpers import txn

CNY = 100  # fen
YOUNG = "1996-03-10"  # 30 at START
OLD = "1960-03-10"


@pytest.fixture(autouse=True)
def ticking(clock: Any) -> Any:
    """Each call below happens a second after the previous one, so histories have an order."""
    global TICK
    TICK = clock
    yield
    TICK = None


TICK: Any = None


def enrol(client: Any, member_id: str = "m1", **over: Any) -> Any:
    TICK.advance(seconds=1)
    return enrol_member(client, member_id, **over)


def set_profile(rt: Runtime, member_id: str, **values: Any) -> None:
    """Write a profile row directly (the profile API has its own tests)."""
    if "products_held" in values:
        values["products_held"] = "," + ",".join(sorted(values["products_held"])) + ","
    with transaction(rt.engine) as conn:
        p = member_profiles.c
        exists = conn.execute(sa.select(p.member_id).where(p.member_id == member_id)).first()
        if exists:
            conn.execute(member_profiles.update().where(p.member_id == member_id).values(**values))
        else:
            conn.execute(member_profiles.insert().values(member_id=member_id, updated_at=rt.now(), **values))


def tier_of(client: Any, member_id: str = "m1") -> dict[str, Any]:
    body = client.get(f"/v1/members/{member_id}").get_json()
    return body["tier"]  # type: ignore[no-any-return]


def buy(client: Any, tid: str, cny: int, member_id: str = "m1", channel: str = "app", **over: Any) -> dict[str, Any]:
    TICK.advance(seconds=1)
    r = client.post("/v1/transactions", json=txn(tid, member_id, cny * CNY, channel=channel, **over))
    assert r.status_code == 201, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def events_of(rt: Runtime, type_: str, member_id: str = "m1") -> list[dict[str, Any]]:
    with rt.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT payload FROM events WHERE type = :t AND member_id = :m ORDER BY id"),
            {"t": type_, "m": member_id},
        ).all()
    return [json.loads(r.payload) for r in rows]


def changes(client: Any, member_id: str = "m1") -> list[tuple[str | None, str, str]]:
    body = client.get(f"/v1/members/{member_id}/history").get_json()
    return [(c["from"], c["to"], c["source"]) for c in reversed(body["tiers"])]


def review(rt: Runtime, as_of: dt.datetime) -> dict[str, Any]:
    run = run_job(rt, "tier_review", as_of)
    assert run["status"] == "succeeded", run
    return run


# ---- enrolment and upgrades on events ------------------------------------------------------------------------------


def test_a_new_member_starts_in_the_floor_tier_with_its_history(client, runtime):
    enrol(client, birth_date=YOUNG)
    tier = tier_of(client)
    assert tier["code"] == "basic"
    assert tier["since"] == "2026-06-15T10:00:01Z"
    assert tier["override"] is None
    assert changes(client) == [(None, "basic", "enrolment")]
    assert events_of(runtime, "member.enrolled")[0]["channel"] is None
    assert [e["to"] for e in events_of(runtime, "tier.changed")] == ["basic"]


def test_qualifying_points_upgrade_a_young_digital_member_to_potential_at_once(client, runtime):
    enrol(client, birth_date=YOUNG)
    buy(client, "t1", 11_999)
    assert tier_of(client)["code"] == "basic"  # 11,999 qualifying points: one short
    buy(client, "t2", 1)
    tier = tier_of(client)
    assert tier["code"] == "potential"
    assert tier["metrics"]["qualifying_points"] == 12_000
    assert tier["metrics"]["digital_share"] == 100
    history = client.get("/v1/members/m1/history").get_json()["tiers"]
    assert history[0]["to"] == "potential"
    assert history[0]["source"] == "event"
    assert history[0]["reason"] == "age 20 to 40 and digital share ≥ 60% and qualifying points ≥ 12,000"
    assert events_of(runtime, "tier.changed")[-1] == {
        "from": "basic",
        "to": "potential",
        "source": "event",
        "reason": history[0]["reason"],
    }


def test_the_tier_feeds_the_rules_multiplier_from_the_next_transaction(client):
    enrol(client, birth_date=YOUNG)
    upgrading = buy(client, "t1", 12_000)
    assert upgrading["points"] == 12_000  # earned as basic: no multiplier yet
    after = buy(client, "t2", 100)
    assert {a["rule_id"]: a["points"] for a in after["awards"]} == {"card-spend-base": 100, "tier-multiplier": 50}


def test_branch_transactions_do_not_make_a_member_digital(client):
    enrol(client, birth_date=YOUNG)
    buy(client, "t1", 12_000, channel="branch")
    tier = tier_of(client)
    assert tier["metrics"]["digital_share"] == 0
    assert tier["code"] == "basic"
    assert tier["progress"]["next_tier"] == "mass"


def test_assets_upgrade_to_hnw_when_the_next_event_arrives(client, runtime):
    enrol(client, birth_date=OLD)
    set_profile(runtime, "m1", aum=2_000_000 * CNY)
    assert tier_of(client)["code"] == "basic"  # nothing has happened yet
    buy(client, "t1", 10, channel="branch")
    assert tier_of(client)["code"] == "hnw"
    assert changes(client)[-1] == ("basic", "hnw", "event")


def test_reassess_upgrades_on_a_profile_change(client, runtime):
    enrol(client, birth_date=OLD)
    set_profile(runtime, "m1", aum=60_000 * CNY)
    with transaction(runtime.engine) as conn:
        change = tiers.reassess(conn, "m1", programme=runtime.programme, now=runtime.now())
        assert tiers.reassess(conn, "m1", programme=runtime.programme, now=runtime.now()) is None
    assert change == {"from": "basic", "to": "mass", "source": "event", "reason": "assets ≥ 50,000 CNY"}


def test_stable_activity_with_two_products_makes_a_member_mass(client, runtime):
    enrol(client, birth_date=OLD)
    set_profile(runtime, "m1", products_held=["deposit", "credit_card"])
    for i in range(8):
        buy(client, f"t{i}", 10, channel="branch")
    assert tier_of(client)["code"] == "basic"
    assert tier_of(client)["progress"]["missing"] == "needs 50,000 CNY more assets or 1 more transactions in 90 days"
    buy(client, "t8", 10, channel="branch")
    assert tier_of(client)["code"] == "mass"


# ---- progress -----------------------------------------------------------------------------------------------------


def test_progress_names_what_is_missing_for_the_next_tier(client, runtime):
    enrol(client, birth_date=YOUNG)
    set_profile(runtime, "m1", aum=60_000 * CNY)
    buy(client, "t1", 3_000)
    tier = tier_of(client)
    assert tier["code"] == "mass"
    assert tier["progress"] == {
        "next_tier": "potential",
        "criteria": [
            {"criterion": "age 20 to 40 and digital share ≥ 60% and qualifying points ≥ 12,000", "met": False},
            {"criterion": "age 20 to 40 and digital share ≥ 60% and assets ≥ 200,000 CNY", "met": False},
        ],
        "missing": "needs 9,000 more qualifying points or 140,000 CNY more assets",
    }


def test_the_top_tier_has_nothing_above_it(client, runtime):
    enrol(client)
    set_profile(runtime, "m1", profit_contribution=50_000 * CNY)
    buy(client, "t1", 1)
    assert tier_of(client)["progress"] == {"next_tier": None, "criteria": [], "missing": None}


# ---- downgrades: only at the review, one step at a time ------------------------------------------------------------


def hnw_member(client: Any, runtime: Runtime) -> None:
    enrol(client, birth_date=OLD)
    set_profile(runtime, "m1", aum=3_000_000 * CNY)
    buy(client, "t1", 10, channel="branch")
    assert tier_of(client)["code"] == "hnw"


def test_losing_the_criteria_never_downgrades_on_an_event(client, runtime):
    hnw_member(client, runtime)
    set_profile(runtime, "m1", aum=0)
    buy(client, "t2", 10, channel="branch")
    with transaction(runtime.engine) as conn:
        assert tiers.reassess(conn, "m1", programme=runtime.programme, now=runtime.now()) is None
    assert tier_of(client)["code"] == "hnw"


def test_the_review_steps_down_one_tier_per_quarter(client, runtime, clock):
    hnw_member(client, runtime)
    set_profile(runtime, "m1", aum=0)
    q3 = dt.datetime(2026, 7, 1, 2, tzinfo=dt.UTC)
    run = review(runtime, q3)
    assert run["rows"] == 1
    assert run["detail"] == "2026Q3: 1 members reviewed, 1 changed tier"
    assert tier_of(client)["code"] == "potential"
    assert review(runtime, q3 + dt.timedelta(days=3))["rows"] == 0  # the same quarter: done already
    assert tier_of(client)["code"] == "potential"
    review(runtime, dt.datetime(2026, 10, 1, 2, tzinfo=dt.UTC))
    assert tier_of(client)["code"] == "mass"
    review(runtime, dt.datetime(2027, 1, 1, 2, tzinfo=dt.UTC))
    assert tier_of(client)["code"] == "basic"
    review(runtime, dt.datetime(2027, 4, 1, 2, tzinfo=dt.UTC))
    assert changes(client)[1:] == [
        ("basic", "hnw", "event"),
        ("hnw", "potential", "review"),
        ("potential", "mass", "review"),
        ("mass", "basic", "review"),
    ]
    history = client.get("/v1/members/m1/history").get_json()["tiers"]
    assert history[0]["reason"] == "quarterly review: no longer meets the criteria of mass"


def test_the_review_keeps_members_who_still_qualify_and_upgrades_who_now_do(client, runtime):
    hnw_member(client, runtime)
    enrol(client, "m2", birth_date=OLD)
    set_profile(runtime, "m2", aum=100_000 * CNY)  # qualifies for mass, has had no event yet
    review(runtime, dt.datetime(2026, 7, 1, 2, tzinfo=dt.UTC))
    assert tier_of(client)["code"] == "hnw"
    assert tier_of(client, "m2")["code"] == "mass"
    assert changes(client, "m2")[-1] == ("basic", "mass", "review")


def test_spending_points_never_lowers_the_tier(client, runtime):
    enrol(client, birth_date=YOUNG)
    buy(client, "t1", 12_000)
    assert tier_of(client)["code"] == "potential"
    with transaction(runtime.engine) as conn:
        ledger.hold(conn, "m1", "h1", 12_400, capture_account="redeemed:unspecified", now=runtime.now())
    with transaction(runtime.engine) as conn:
        ledger.capture(conn, "m1", "h1", now=runtime.now())
    body = client.get("/v1/members/m1").get_json()
    assert body["balance"] == 100
    assert body["tier"]["metrics"]["qualifying_points"] == 12_000
    review(runtime, dt.datetime(2026, 7, 1, 2, tzinfo=dt.UTC))
    assert tier_of(client)["code"] == "potential"


def test_a_refund_takes_back_the_qualifying_points_it_earned(client, runtime):
    enrol(client, birth_date=YOUNG)
    buy(client, "t1", 12_000)
    r = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "r1", "amount": 6_000 * CNY})
    assert r.status_code == 201, r.get_json()
    tier = tier_of(client)
    assert tier["metrics"]["qualifying_points"] == 6_000
    assert tier["code"] == "potential"  # until the review
    assert events_of(runtime, "points.reversed")[0]["points"] == 6_000
    review(runtime, dt.datetime(2026, 7, 1, 2, tzinfo=dt.UTC))
    assert tier_of(client)["code"] == "mass"


def test_qualifying_points_leave_the_window_after_twelve_months(client, runtime):
    enrol(client, birth_date=YOUNG)
    buy(client, "t1", 12_000)
    with transaction(runtime.engine, readonly=True) as conn:
        later = tiers.metrics(conn, "m1", programme=runtime.programme, now=START + dt.timedelta(days=366))
        assert later["qualifying_points"] == 0
        assert later["transactions_90d"] == 0
        assert later["digital_share"] is None


# ---- overrides ----------------------------------------------------------------------------------------------------


def test_an_override_pins_the_tier_until_it_ends(client, runtime, clock):
    enrol(client, birth_date=OLD)
    clock.advance(seconds=1)
    r = client.put(
        "/v1/members/m1/tier-override",
        json={"tier": "hnw", "until": "2026-12-31T16:00:00Z", "reason": "private banking referral"},
    )
    assert r.status_code == 200, r.get_json()
    tier = tier_of(client)
    assert tier["code"] == "hnw"
    assert tier["override"] == {"tier": "hnw", "until": "2026-12-31T16:00:00Z", "reason": "private banking referral"}
    assert changes(client)[-1] == ("basic", "hnw", "override")
    review(runtime, dt.datetime(2026, 10, 1, 2, tzinfo=dt.UTC))  # in force: left alone
    assert tier_of(client)["code"] == "hnw"
    audit = client.get("/v1/audit").get_json()
    assert any(e["action"] == "tier.override" and e["object_id"] == "m1" for e in audit["entries"])
    clock.now = dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
    review(runtime, dt.datetime(2027, 1, 2, 2, tzinfo=dt.UTC))  # ended: one step down, override cleared
    tier = tier_of(client)
    assert (tier["code"], tier["override"]) == ("potential", None)


def test_an_override_to_a_lower_tier_holds_against_upgrades(client, runtime):
    enrol(client, birth_date=OLD)
    set_profile(runtime, "m1", aum=3_000_000 * CNY)
    r = client.put(
        "/v1/members/m1/tier-override",
        json={"tier": "basic", "until": "2026-09-01T00:00:00Z", "reason": "under fraud review"},
    )
    assert r.status_code == 200
    buy(client, "t1", 10)
    assert tier_of(client)["code"] == "basic"
    assert client.delete("/v1/members/m1/tier-override").status_code == 204
    buy(client, "t2", 10)
    assert tier_of(client)["code"] == "hnw"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tier": "gold", "until": "2026-12-31T00:00:00Z", "reason": "vip"}, "tier"),
        ({"tier": "hnw", "until": "2026-01-01T00:00:00Z", "reason": "vip"}, "until"),
        ({"tier": "hnw", "until": "2026-12-31", "reason": "vip"}, "until"),
        ({"tier": "hnw", "until": "2026-12-31T00:00:00Z"}, "reason"),
        ({"tier": "hnw", "until": "2026-12-31T00:00:00Z", "reason": "vip", "extra": 1}, "extra"),
    ],
)
def test_a_bad_override_is_refused_naming_the_field(client, body, field):
    enrol(client)
    r = client.put("/v1/members/m1/tier-override", json=body)
    assert r.status_code == 422
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.get_json()["field"] == field
    assert tier_of(client)["code"] == "basic"
    assert changes(client) == [(None, "basic", "enrolment")]


def test_overrides_need_the_admin_scope(app, runtime, client):
    from tests.conftest import make_key
    from tests.contract import ContractClient

    enrol(client)
    reader = ContractClient(app.test_client(), make_key(runtime, "read", "accrue"))
    body = {"tier": "hnw", "until": "2026-12-31T00:00:00Z", "reason": "vip"}
    assert reader.put("/v1/members/m1/tier-override", json=body).status_code == 403
    assert reader.delete("/v1/members/m1/tier-override").status_code == 403
    assert client.put("/v1/members/nobody/tier-override", json=body).status_code == 404


# ---- the outbox is atomic with its change -------------------------------------------------------------------------


def test_a_failed_transaction_leaves_no_event(client, runtime):
    enrol(client, birth_date=YOUNG)
    before = {t: len(events_of(runtime, t)) for t in ("points.accrued", "tier.changed", "lifecycle.changed")}
    cmd = accrual.TransactionCommand("t1", "m1", "card_purchase", 12_000 * CNY, "CNY", START - dt.timedelta(hours=1))
    with pytest.raises(RuntimeError), transaction(runtime.engine) as conn:
        accrual.record_transaction(conn, cmd, programme=runtime.programme, now=runtime.now())
        assert len(events_of_conn(conn, "points.accrued")) == before["points.accrued"] + 1  # written ...
        raise RuntimeError("the request fails after booking")
    after = {t: len(events_of(runtime, t)) for t in before}
    assert after == before  # ... and gone with the rollback
    assert tier_of(client)["code"] == "basic"


def events_of_conn(conn: Any, type_: str) -> list[Any]:
    return conn.execute(sa.text("SELECT id FROM events WHERE type = :t"), {"t": type_}).all()


# ---- SQL and Python decide alike --------------------------------------------------------------------------------


def test_the_set_based_decision_equals_the_python_one(client, runtime):
    rng = random.Random(7)
    births = ["1986-06-15", "1986-06-16", "2006-06-15", "2006-06-16", "2000-02-29", "1970-01-01", None]
    for i in range(24):
        member_id = f"r{i}"
        birth = rng.choice(births)
        enrol(client, member_id, **({"birth_date": birth} if birth else {}))
        set_profile(
            runtime,
            member_id,
            aum=rng.choice([0, 49_999 * CNY, 50_000 * CNY, 199_999 * CNY, 200_000 * CNY, 2_000_000 * CNY]),
            profit_contribution=rng.choice([0, 49_999 * CNY, 50_000 * CNY]),
            products_held=rng.sample(["deposit", "wealth", "fund", "credit_card", "loan"], rng.randint(0, 3)),
        )
        for j in range(rng.choice([0, 1, 8, 9, 10])):
            buy(client, f"{member_id}-{j}", rng.choice([1, 1_200, 11_999]), member_id, rng.choice(["app", "branch"]))
    programme = runtime.programme
    for as_of in (runtime.now(), runtime.now() + dt.timedelta(days=45)):
        window = tsql.Window.at(programme.ladder, as_of, programme.zone)
        row = tsql.metrics_query(programme.ladder, window, sa.true()).c
        rank, reason = tsql.qualification(programme.ladder, row, window)
        with runtime.engine.connect() as conn:
            in_sql = {
                r.member_id: (r.rank, r.reason)
                for r in conn.execute(sa.select(row.member_id, rank.label("rank"), reason.label("reason")))
            }
            in_python = {}
            for member_id in in_sql:
                tier, why = programme.ladder.qualify(tiers.metrics(conn, member_id, programme=programme, now=as_of))
                in_python[member_id] = (programme.ladder.rank(tier), why)
        assert in_sql == in_python
        assert len({rank for rank, _ in in_sql.values()}) >= 3  # the sample spans several tiers


def test_age_bounds_in_sql_follow_birthdays_including_29_february():
    day = dt.date(2027, 2, 28)
    assert calendar.years_before(dt.date(2028, 2, 29), 1) == dt.date(2027, 2, 28)
    assert calendar.years_before(day, 20) == dt.date(2007, 2, 28)


# ---- members table state ---------------------------------------------------------------------------------------------


def test_members_carry_their_first_and_latest_transaction(client, runtime):
    enrol(client)
    buy(client, "t1", 10, occurred_at="2026-06-10T00:00:00+00:00")
    buy(client, "t2", 10, occurred_at="2026-06-01T00:00:00+00:00")  # late
    buy(client, "t3", 10, occurred_at="2026-06-12T00:00:00+00:00")
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(members.c.first_transaction_at, members.c.last_transaction_at)).one()
    assert row.first_transaction_at == dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    assert row.last_transaction_at == dt.datetime(2026, 6, 12, tzinfo=dt.UTC)
