"""Tuning advice on a generated history: the seed's example end to end (a benefit potential-tier
members hardly redeem, a gym card that members like them redeem), and decisions on findings."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.analytics import advice
from loyalty.analytics.models import feedback
from loyalty.app import create_app
from loyalty.audit import audit_log
from loyalty.catalogue import service as catalogue
from loyalty.db import transaction
from loyalty.ledger.models import entry_keys, journal_entries, member_accounts, postings
from loyalty.records.models import member_profiles, members
from loyalty.redemption.models import redemption_refusals, redemptions
from loyalty.runtime import Runtime
from loyalty.tiers.models import tier_changes
from tests.contract import ContractClient
from tests.helpers import BANK_ZONE

TIERS = ("hnw", "potential", "mass", "basic")
JANUARY = dt.datetime(2026, 1, 1, tzinfo=BANK_ZONE).astimezone(dt.UTC)


def member_rows(conn: Any, member_id: str, tier: str) -> None:
    """A member of ``tier`` since January: in the growth stage, born in 1992, enrolled in the app,
    holding a deposit and a wealth product."""
    conn.execute(
        members.insert().values(
            member_id=member_id,
            birth_date=dt.date(1992, 5, 1),
            enrolled_at=JANUARY,
            channel="app",
            created_at=JANUARY,
            tier=tier,
            tier_since=JANUARY,
            lifecycle_stage="growth",
        )
    )
    conn.execute(
        tier_changes.insert().values(
            member_id=member_id,
            id=str(uuid.uuid4()),
            from_tier=None,
            to_tier=tier,
            source="enrolment",
            reason="enrolled",
            changed_at=JANUARY,
        )
    )
    conn.execute(
        member_profiles.insert().values(
            member_id=member_id, aum=5_000_000, products_held=",deposit,wealth,", updated_at=JANUARY
        )
    )


def redemption_row(conn: Any, rid: str, member_id: str, code: str, points: int, at: dt.datetime) -> None:
    conn.execute(
        redemptions.insert().values(
            member_id=member_id,
            id=rid,
            benefit_code=code,
            benefit_version=1,
            quantity=1,
            points=points,
            status="fulfilled",
            created_at=at,
            updated_at=at,
            fulfilled_at=at,
        )
    )


@pytest.fixture
def seed_history(runtime: Runtime) -> None:
    """April to June: 100 potential and 100 mass members alike in stage, age, channel and products.
    Each month one potential member takes 50 CNY of phone credit; 40 mass members take a gym card."""
    with transaction(runtime.engine) as conn:
        catalogue.install_default(conn, TIERS, actor="test", now=JANUARY)
        for i in range(100):
            member_rows(conn, f"p{i:03d}", "potential")
            member_rows(conn, f"m{i:03d}", "mass")
        for month in (4, 5, 6):
            at = dt.datetime(2026, month, 10, 12, tzinfo=dt.UTC)
            redemption_row(conn, f"pc-{month}", f"p{month:03d}", "phone-credit-50", 4500, at)
            for i in range(40):
                redemption_row(conn, f"gym-{month}-{i}", f"m{i:03d}", "gym-card-10-visits", 20000, at)


def low_usage(report: dict[str, Any], tier: str, code: str) -> dict[str, Any]:
    findings = next(t["findings"] for t in report["tiers"] if t["tier"] == tier)
    return next(f for f in findings if f["kind"] == "low_usage" and f["benefit_code"] == code)


def test_the_seeds_example_a_gym_card_replaces_what_potential_members_hardly_use(
    runtime: Runtime, seed_history: None
) -> None:
    report = advice.advice(runtime, "2026-06")
    assert report["periods_considered"] == ["2026-04", "2026-05", "2026-06"]
    finding = low_usage(report, "potential", "phone-credit-50")
    assert finding["figures"]["usage_rates"] == ["0.0100", "0.0100", "0.0100"]
    best = finding["candidates"][0]
    assert best["benefit_code"] == "gym-card-10-visits"
    assert best["similar_members_usage_rate"] == "0.4000" and best["similar_members_compared"] == 100
    assert best["open_to_tier"] is True
    # 100 potential members x 0.40 x 150 CNY a card = 6,000 CNY, against 49.25 CNY of phone credit.
    assert best["projected_cost_fen"] == 600_000
    assert best["cost_difference_fen"] == 600_000 - 4_925 == finding["cost_impact_fen"]
    assert finding["cost_impact_cny"] == "5950.75"
    assert "gym-card-10-visits" in finding["summary"] and "5950.75 CNY" in finding["summary"]
    # The mass tier uses the gym card well: no low-usage finding for it there.
    mass = next(t["findings"] for t in report["tiers"] if t["tier"] == "mass")
    assert not any(f["kind"] == "low_usage" and f["benefit_code"] == "gym-card-10-visits" for f in mass)


def test_a_benefit_used_well_in_one_of_the_periods_is_not_flagged(runtime: Runtime, seed_history: None) -> None:
    with transaction(runtime.engine) as conn:
        at = dt.datetime(2026, 5, 20, tzinfo=dt.UTC)
        for i in range(10, 20):
            redemption_row(conn, f"pc-more-{i}", f"p{i:03d}", "phone-credit-50", 4500, at)
    report = advice.advice(runtime, "2026-06")
    with pytest.raises(StopIteration):
        low_usage(report, "potential", "phone-credit-50")


def test_thresholds_are_settings(runtime: Runtime, seed_history: None) -> None:
    strict = advice.Thresholds.from_env({"LOYALTY_ADVICE_LOW_USAGE_RATE": "0.005"})
    assert strict.low_usage_rate == advice.Decimal("0.005") and strict.consecutive_periods == 3
    with pytest.raises(StopIteration):
        low_usage(advice.advice(runtime, "2026-06", strict), "potential", "phone-credit-50")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOW_USAGE_RATE", "low", "must be a decimal number"),
        ("CONSECUTIVE_PERIODS", "2.5", "must be an integer"),
        ("MINIMUM_ANSWERS", "-1", "must not be negative"),
        ("PRICE_RATIO", "NaN", "must be a finite number"),
    ],
)
def test_a_bad_threshold_setting_is_refused_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"LOYALTY_ADVICE_{name} {message}"):
        advice.Thresholds.from_env({f"LOYALTY_ADVICE_{name}": value})


def test_the_service_does_not_start_with_a_bad_threshold_setting(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOYALTY_ADVICE_LOW_USAGE_RATE", "five percent")
    with pytest.raises(ValueError, match="LOYALTY_ADVICE_LOW_USAGE_RATE"):
        create_app(runtime)


def test_a_finding_is_accepted_then_dismissed_with_notes_and_audited(
    client: ContractClient, runtime: Runtime, seed_history: None
) -> None:
    r = client.get("/v1/analytics/advice?period=2026-06")
    assert r.status_code == 200
    finding = low_usage(r.get_json(), "potential", "phone-credit-50")
    path = f"/v1/analytics/advice/{finding['finding_id']}/decision"
    assert client.post(path, json={"decision": "accepted", "note": "swap in the gym card in July"}).status_code == 200
    second = client.post(path, json={"decision": "dismissed", "note": "budget frozen"})
    assert second.status_code == 200 and second.get_json()["decision"] == "dismissed"
    shown = low_usage(client.get("/v1/analytics/advice?period=2026-06").get_json(), "potential", "phone-credit-50")
    assert shown["decision"]["decision"] == "dismissed" and shown["decision"]["note"] == "budget frozen"
    with transaction(runtime.engine, readonly=True) as conn:
        lines = conn.execute(
            sa.select(audit_log.c.action, audit_log.c.before)
            .where(audit_log.c.object_id == finding["finding_id"])
            .order_by(audit_log.c.id)
        ).all()
    assert [line.action for line in lines] == ["advice.decide", "advice.decide"]
    assert lines[0].before is None and "swap in the gym card" in lines[1].before
    assert (
        client.post("/v1/analytics/advice/nonsense/decision", json={"decision": "accepted", "note": "x"}).status_code
        == 404
    )
    bad = client.post(path, json={"decision": "maybe", "note": "x"})
    assert bad.status_code == 422 and bad.get_json()["field"] == "decision"


def findings_of(report: dict[str, Any], tier: str, kind: str) -> list[dict[str, Any]]:
    return [f for t in report["tiers"] if t["tier"] == tier for f in t["findings"] if f["kind"] == kind]


def test_stock_outs_low_scores_and_hoarding_are_found_with_their_cost(runtime: Runtime, seed_history: None) -> None:
    at = dt.datetime(2026, 6, 12, 4, tzinfo=dt.UTC)
    with transaction(runtime.engine) as conn:
        for i in range(6):  # six mass members turned away from the gym card, one unit each
            conn.execute(
                redemption_refusals.insert().values(
                    member_id=f"m{50 + i:03d}",
                    redemption_id=f"x{i}",
                    benefit_code="gym-card-10-visits",
                    quantity=1,
                    reason="out_of_stock",
                    refused_at=at,
                )
            )
        for i in range(30):  # thirty mass answers about the gym card (150 CNY a unit): 20 detractors
            conn.execute(
                feedback.insert().values(
                    member_id=f"m{i:03d}",
                    feedback_id=f"f{i}",
                    score=2 if i < 20 else 9,
                    benefit_code="gym-card-10-visits",
                    answered_at=at,
                    received_at=at,
                )
            )
        # A potential member earns 20,000 points in June and spends none.
        conn.execute(member_accounts.insert().values(member_id="p050"))
        entry = str(uuid.uuid4())
        key = {"member_id": "p050", "seq": 1, "kind": "accrual", "source_ref": "t", "posted_at": at}
        conn.execute(entry_keys.insert().values(entry_id=entry, **key))
        conn.execute(journal_entries.insert().values(id=entry, points=20_000, balance_after=20_000, **key))
        conn.execute(
            postings.insert(),
            [
                {
                    "member_id": "p050",
                    "entry_id": entry,
                    "line": 1,
                    "account": "issued:bank",
                    "amount": -20_000,
                    "posted_at": at,
                },
                {
                    "member_id": "p050",
                    "entry_id": entry,
                    "line": 2,
                    "account": "member",
                    "amount": 20_000,
                    "posted_at": at,
                },
            ],
        )
    report = advice.advice(runtime, "2026-06")
    [stock_out] = findings_of(report, "mass", "stock_out")
    assert stock_out["benefit_code"] == "gym-card-10-visits"
    assert stock_out["figures"]["stock_needed"] == 6 and stock_out["figures"]["redeemed_units"] == 40
    assert stock_out["cost_impact_fen"] == 6 * 15_000 and stock_out["cost_impact_cny"] == "900.00"
    [expensive] = findings_of(report, "mass", "expensive_low_score")
    assert expensive["figures"]["nps"] == "-33.3" and expensive["cost_impact_fen"] == -40 * 15_000
    [hoarding] = findings_of(report, "potential", "hoarding")
    assert hoarding["figures"]["earned"] == 20_000 and hoarding["figures"]["burned"] == 0
    assert hoarding["cost_impact_fen"] == 20_000  # at the default value of a point, 1 fen
