"""Benefit-usage analytics: each figure of a handmade month reproduced by hand, the roll-ups equal
to the live computation, and the job idempotent."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.analytics import service
from loyalty.analytics.models import benefit_rollups, tier_rollups
from loyalty.db import transaction
from loyalty.jobs.runner import run_job
from loyalty.runtime import Runtime
from tests.conftest import START, Clock, make_key
from tests.contract import ContractClient
from tests.helpers import enrol, txn


def benefit(code: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "code": code,
        "status": "active",
        "name": f"Benefit {code}",
        "kind": "voucher",
        "fulfilment": "bank",
        "face_value": 1000,
        "unit_cost": 50,
        "funding_source": "bank",
        "points_price": 100,
    }
    doc.update(over)
    return doc


def redeem(client: ContractClient, rid: str, member: str, code: str, quantity: int = 1) -> Any:
    return client.post(
        "/v1/redemptions", json={"redemption_id": rid, "member_id": member, "benefit_code": code, "quantity": quantity}
    )


def tier_of(report: dict[str, Any], tier: str) -> dict[str, Any]:
    return next(t for t in report["tiers"] if t["tier"] == tier)


def benefit_of(report: dict[str, Any], tier: str, code: str) -> dict[str, Any]:
    return next(b for b in tier_of(report, tier)["benefits"] if b["benefit_code"] == code)


@pytest.fixture
def june(client: ContractClient, clock: Clock, runtime: Runtime) -> dict[str, Any]:
    """A June in Shanghai: three members; m1 moves from basic to hnw on the 17th; coffee's price
    and cost change on the 16th; scarce runs out; two answers about coffee."""
    for doc in (
        benefit("coffee"),
        benefit("scarce", unit_cost=70, stock=1),
        benefit(
            "lounge",
            kind="experience",
            unit_cost=1000,
            points_price=None,
            eligible_tiers=["hnw"],
            entitlements={"hnw": {"quota": 2, "period": "month"}},
        ),
    ):
        assert client.post("/v1/benefits", json=doc).status_code == 201
    for m in ("m1", "m2", "m3"):
        enrol(client, m)
    earned = {}
    for i, m in enumerate(("m1", "m2")):
        r = client.post("/v1/transactions", json=txn(f"t-{m}", m, amount=20_000 + i, occurred_at=START.isoformat()))
        assert r.status_code == 201, r.get_json()
        earned[m] = r.get_json()["points"]
    assert redeem(client, "r1", "m1", "coffee").status_code == 201  # basic, 100 points, 50 fen
    clock.advance(days=1)
    price = {k: v for k, v in benefit("coffee", points_price=200, unit_cost=60).items() if k not in ("code", "status")}
    changed = client.put("/v1/benefits/coffee", json=price)
    assert changed.status_code == 200, changed.get_json()
    assert redeem(client, "r2", "m2", "coffee", 2).status_code == 201  # basic, 400 points, 120 fen
    assert redeem(client, "r3", "m3", "scarce").status_code == 201  # basic, the last one
    refused = redeem(client, "r4", "m2", "scarce", 1)
    assert refused.status_code == 422 and refused.get_json()["type"].endswith("out_of_stock")
    clock.advance(days=1)
    override = {"tier": "hnw", "until": (START + dt.timedelta(days=90)).isoformat(), "reason": "relationship manager"}
    assert client.put("/v1/members/m1/tier-override", json=override).status_code == 200
    assert redeem(client, "r5", "m1", "lounge").status_code == 201  # hnw entitlement, 1000 fen
    assert redeem(client, "r6", "m1", "coffee").status_code == 201  # hnw, 200 points, 60 fen
    for fid, m, score in (("f1", "m1", 10), ("f2", "m2", 3)):
        r = client.post(
            "/v1/feedback",
            json={
                "feedback_id": fid,
                "member_id": m,
                "score": score,
                "benefit_code": "coffee",
                "answered_at": clock().isoformat(),
            },
        )
        assert r.status_code == 201, r.get_json()
    return {"earned": earned}


def test_a_handmade_month_is_reproduced_by_hand(runtime: Runtime, june: dict[str, Any]) -> None:
    month = service.report(runtime, "2026-06", minimum_answers=1)["periods"][0]
    assert (month["period"], month["kind"], month["source"]) == ("2026-06", "month", "live")
    everyone, basic, hnw = tier_of(month, "*"), tier_of(month, "basic"), tier_of(month, "hnw")
    # m1 held both tiers this month: counted in each, and once in all.
    assert (everyone["members"], basic["members"], hnw["members"]) == (3, 3, 1)
    # m1 and m2 transacted on the 15th, in basic.
    assert (everyone["active_members"], basic["active_members"], hnw["active_members"]) == (2, 2, 0)
    # Coffee: r1 at the old price and cost, r2 at the new, in basic; r6 in hnw.
    coffee = benefit_of(month, "basic", "coffee")
    assert (coffee["eligible"], coffee["redeemers"], coffee["usage_rate"]) == (3, 2, "0.6667")
    assert (coffee["redemptions"], coffee["units"], coffee["points_burned"], coffee["cost_fen"]) == (2, 3, 500, 170)
    assert coffee["cost_by_funding"] == {"bank": 170}
    assert coffee["cost_per_active_member_fen"] == 85
    coffee_hnw = benefit_of(month, "hnw", "coffee")
    assert (coffee_hnw["eligible"], coffee_hnw["redeemers"], coffee_hnw["points_burned"]) == (1, 1, 200)
    assert coffee_hnw["cost_fen"] == 60
    coffee_all = benefit_of(month, "*", "coffee")
    assert (coffee_all["eligible"], coffee_all["redeemers"], coffee_all["units"], coffee_all["cost_fen"]) == (
        3,
        2,
        4,
        230,
    )
    # The lounge: open to hnw only, two a month for the one hnw member, one used.
    lounge = benefit_of(month, "hnw", "lounge")
    assert lounge["quota"] == {"granted": 2, "used": 1, "utilisation": "0.5000"}
    assert lounge["cost_fen"] == 1000 and lounge["points_burned"] == 0
    assert not any(b["benefit_code"] == "lounge" for b in basic["benefits"])
    # Scarce: one redeemed, one turned away for want of stock.
    scarce = benefit_of(month, "basic", "scarce")
    assert scarce["redemptions"] == 1
    assert scarce["stock_outs"] == {"requests": 1, "units": 1}
    assert scarce["refusals"] == {"out_of_stock": {"requests": 1, "units": 1}}
    # NPS: m1 answered as hnw (a promoter), m2 as basic (a detractor).
    assert coffee["nps"]["score"] == "-100.0" and coffee_hnw["nps"]["score"] == "100.0"
    assert coffee_all["nps"] == {"answers": 2, "promoters": 1, "detractors": 1, "score": "0.0", "minimum_answers": 1}
    assert service.report(runtime, "2026-06")["periods"][0]["tiers"][0]["nps"]["score"] is None
    # Points: the welcome bonuses and the two transactions' points were earned in basic.
    assert basic["points"]["earned"] == 3 * 500 + june["earned"]["m1"] + june["earned"]["m2"]
    assert hnw["points"]["earned"] == 0
    assert basic["migrations"] == [{"from": "basic", "to": "hnw", "members": 1, "direction": "up"}]
    assert basic["redemption_rate"] == "1.0000"  # m1 and m2 redeemed coffee as basic, m3 scarce


def test_the_figures_name_the_rows_they_count(runtime: Runtime, june: dict[str, Any]) -> None:
    def ids(metric: str, tier: str = "*", code: str = "*") -> list[str]:
        return service.explain(runtime, "2026-06", metric, tier=tier, benefit=code)["ids"]

    assert ids("redemptions", "basic", "coffee") == ["r1", "r2"]
    assert ids("redeemers", "*", "coffee") == ["m1", "m2"]
    assert ids("members", "hnw") == ["m1"]
    assert ids("eligible", "*", "lounge") == ["m1"]
    assert ids("refusals", "basic", "scarce") == ["r4"]
    assert ids("feedback", "hnw", "coffee") == ["f1"]
    assert ids("active_members") == ["m1", "m2"]


def test_the_rollups_equal_the_live_figures_and_the_job_is_idempotent(
    runtime: Runtime, clock: Clock, june: dict[str, Any]
) -> None:
    live = service.report(runtime, "2026-06", minimum_answers=1)["periods"][0]
    clock.advance(days=30)
    first = run_job(runtime, "analytics", dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    assert first["status"] == "succeeded", first
    with transaction(runtime.engine, readonly=True) as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(benefit_rollups)).scalar_one()
    again = run_job(runtime, "analytics", dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    assert again["status"] == "succeeded"
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(benefit_rollups)).scalar_one() == count
        months = conn.execute(
            sa.select(sa.func.count()).select_from(tier_rollups).where(tier_rollups.c.kind == "month")
        ).scalar_one()
    assert months > 0
    stored = service.report(runtime, "2026-06", minimum_answers=1)["periods"][0]
    assert stored["source"] == "rollup"
    assert {**stored, "source": None, "built_at": None} == {**live, "source": None, "built_at": None}


def test_the_report_over_the_api_as_json_csv_and_xlsx(client: ContractClient, june: dict[str, Any]) -> None:
    r = client.get("/v1/analytics/report?period=2026-06&minimum_answers=1")
    assert r.status_code == 200
    assert benefit_of(r.get_json()["periods"][0], "basic", "coffee")["cost_fen"] == 170
    weeks = client.get("/v1/analytics/report?period=2026-W24&to=2026-W26&tier=basic&benefit_code=coffee")
    assert [p["period"] for p in weeks.get_json()["periods"]] == ["2026-W24", "2026-W25", "2026-W26"]
    assert [t["tier"] for t in weeks.get_json()["periods"][0]["tiers"]] == ["basic"]
    days = client.get("/v1/analytics/report?period=2026-06-15&to=2026-06-17&tier=*&benefit_code=coffee")
    assert [benefit_of(p, "*", "coffee")["units"] for p in days.get_json()["periods"]] == [1, 2, 1]
    csv = client.get("/v1/analytics/report?period=2026-06&format=csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).splitlines()
    assert lines[0].startswith("period,tier,benefit_code,members")
    assert any(line.startswith("2026-06,basic,coffee,3,2,") for line in lines)
    xlsx = client.get("/v1/analytics/report?period=2026-Q2&format=xlsx")
    assert xlsx.status_code == 200 and xlsx.get_data()[:2] == b"PK"
    for query, field in (
        ("period=2026-13", "period"),
        ("period=2026-06&to=2026-Q3", "to"),
        ("period=2026-06&to=2026-05", "to"),
        ("period=2026-06&tier=a%20b", "tier"),
        ("period=2026-06&format=pdf", "format"),
        ("", "period"),
        ("period=0001", "period"),
        ("period=2026-01-01&to=2026-12-31", "to"),
    ):
        bad = client.get(f"/v1/analytics/report?{query}")
        assert bad.status_code == 422 and bad.get_json()["field"] == field, query
    explained = client.get("/v1/analytics/explain?period=2026-06&metric=redemptions&tier=basic&benefit_code=coffee")
    assert explained.get_json()["ids"] == ["r1", "r2"] and explained.get_json()["count"] == 2
    assert client.get("/v1/analytics/explain?period=2026-06&metric=nothing").status_code == 422


def test_feedback_is_idempotent_and_refuses_numbers_in_comments(
    client: ContractClient, runtime: Runtime, june: dict[str, Any]
) -> None:
    body = {
        "feedback_id": "f9",
        "member_id": "m3",
        "score": 8,
        "redemption_id": "r3",
        "comment": "fast, thanks",
        "answered_at": START.isoformat(),
    }
    first = client.post("/v1/feedback", json=body)
    assert first.status_code == 201 and first.get_json()["benefit_code"] == "scarce"
    again = client.post("/v1/feedback", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert client.post("/v1/feedback", json={**body, "score": 2}).status_code == 409
    for over, field in (
        ({"comment": "call me on 13812345678"}, "comment"),
        ({"score": 11}, "score"),
        ({"redemption_id": "r1"}, "redemption_id"),
        ({"benefit_code": "nothing", "redemption_id": None}, "benefit_code"),
        ({"answered_at": (START + dt.timedelta(days=9)).isoformat()}, "answered_at"),
        ({"member_id": "nobody"}, "member_id"),
    ):
        bad = client.post("/v1/feedback", json={**body, "feedback_id": "f10", **over})
        assert bad.status_code == 422 and bad.get_json()["field"] == field, over
    listed = client.get("/v1/feedback?period=2026-06&benefit_code=coffee&minimum_answers=2").get_json()
    assert [f["feedback_id"] for f in listed["feedback"]] == ["f1", "f2"]
    assert [f["tier"] for f in listed["feedback"]] == ["hnw", "basic"]
    assert listed["nps"]["score"] == "0.0"
    hnw = client.get("/v1/feedback?period=2026-06&tier=hnw").get_json()
    assert [f["feedback_id"] for f in hnw["feedback"]] == ["f1"] and hnw["nps"]["score"] is None
    channel = make_key(runtime, "feedback")
    assert client.post("/v1/feedback", key=channel, json={**body, "feedback_id": "f11"}).status_code == 201
    assert client.get("/v1/feedback?period=2026-06", key=channel).status_code == 403
