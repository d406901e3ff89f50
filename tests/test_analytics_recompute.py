"""Every figure of the analytics recomputed in plain Python from the raw rows of a random history
(tier changes, transactions, postings, redemptions of benefits whose price and cost change,
refusals, answers, lifecycle changes, profiles), and compared with the SQL's, live and rolled up."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections import defaultdict
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.analytics import catalogue as analytics_catalogue
from loyalty.analytics import metrics, periods, rollups
from loyalty.analytics.models import ALL, feedback
from loyalty.catalogue import service as catalogue
from loyalty.db import transaction
from loyalty.ledger.models import accounts, entry_keys, journal_entries, member_accounts, postings
from loyalty.records.models import member_profiles, members, transactions
from loyalty.redemption.models import redemption_refusals, redemptions
from loyalty.runtime import Runtime
from loyalty.tiers.models import lifecycle_changes, tier_changes
from tests.helpers import BANK_ZONE

TIERS = ["hnw", "potential", "mass", "basic"]
START = dt.datetime(2026, 4, 1, tzinfo=BANK_ZONE).astimezone(dt.UTC)
DAYS = 92


def moment(rng: random.Random) -> dt.datetime:
    return START + dt.timedelta(minutes=rng.randrange(DAYS * 24 * 60))


def benefit_doc(code: str, rng: random.Random) -> dict[str, Any]:
    entitled = rng.random() < 0.3
    return {
        "code": code,
        "status": "active",
        "name": code,
        "kind": "voucher",
        "fulfilment": "bank",
        "face_value": 1000,
        "unit_cost": rng.randrange(10, 500),
        "funding_source": rng.choice(["bank", "partner-a"]),
        "points_price": None if entitled else rng.randrange(50, 500),
        "eligible_tiers": (["hnw"] if entitled else rng.sample(TIERS, rng.randrange(1, 3)))
        if rng.random() < 0.5
        else [],
        "entitlements": {"hnw": {"quota": 2, "period": rng.choice(["day", "month", "year"])}} if entitled else {},
    }


def record_tiers(conn: Any, member_id: str, changes: list[tuple[dt.datetime, str]]) -> None:
    """The member's tier history: an enrolment in the first tier, then a change to each next one
    (sorted by moment; of changes at one instant, in the order given)."""
    previous = None
    for when, to in sorted(changes, key=lambda c: c[0]):
        conn.execute(
            tier_changes.insert().values(
                member_id=member_id,
                id=str(uuid.uuid4()),
                from_tier=previous,
                to_tier=to,
                source="enrolment" if previous is None else "event",
                reason="r",
                changed_at=when,
            )
        )
        previous = to


def history(rt: Runtime, seed: int) -> None:
    rng = random.Random(seed)
    with transaction(rt.engine) as conn:
        docs = [benefit_doc(f"b{i}", rng) for i in range(5)]
        for doc in docs:
            catalogue.create(conn, catalogue.parse_new(doc, TIERS), actor="test", now=START - dt.timedelta(days=1))
        # Prices, costs and eligibility change mid-history.
        for doc in rng.sample(docs, 2):
            change = {k: v for k, v in benefit_doc(doc["code"], rng).items() if k not in ("code", "status")}
            when = moment(rng)
            catalogue.replace(
                conn, doc["code"], catalogue.parse_replacement(change, doc["code"], TIERS), actor="t", now=when
            )
            conn.execute(
                sa.text("UPDATE benefit_versions SET changed_at = :when WHERE code = :code AND version = 2"),
                {"when": when, "code": doc["code"]},
            )
        codes = [d["code"] for d in docs]
        for m in range(25):
            mid = f"m{m:02d}"
            enrolled = START - dt.timedelta(days=30) if rng.random() < 0.7 else moment(rng)
            tier = rng.choice(TIERS)
            conn.execute(members.insert().values(member_id=mid, enrolled_at=enrolled, created_at=enrolled, tier=tier))
            conn.execute(member_accounts.insert().values(member_id=mid))
            changes = [(enrolled, tier)]
            for _ in range(rng.randrange(0, 3)):
                changes.append((max(moment(rng), enrolled + dt.timedelta(minutes=1)), rng.choice(TIERS)))
            record_tiers(conn, mid, changes)
            if rng.random() < 0.8:
                products = rng.sample(["deposit", "wealth", "loan", "card"], rng.randrange(0, 4))
                conn.execute(
                    member_profiles.insert().values(
                        member_id=mid,
                        aum=rng.choice([None, rng.randrange(10**6)]),
                        products_held=f",{','.join(sorted(products))}," if products else None,
                        updated_at=START,
                    )
                )
            for t in range(rng.randrange(0, 6)):
                when = max(moment(rng) - dt.timedelta(days=30), enrolled)
                conn.execute(
                    transactions.insert().values(
                        member_id=mid,
                        transaction_id=f"{mid}-t{t}",
                        type="card_purchase",
                        amount=100,
                        currency="CNY",
                        occurred_at=when,
                        points=0,
                        balance_after=0,
                        programme_version="v",
                        received_at=when,
                    )
                )
            for seq in range(1, rng.randrange(1, 6)):
                entry, when = str(uuid.uuid4()), moment(rng)
                points = rng.randrange(1, 300)
                account = rng.choice(["issued:bank", f"redeemed:{rng.choice(codes)}", "expired", "adjustments"])
                key = {"member_id": mid, "seq": seq, "kind": "adjustment", "source_ref": f"s{seq}", "posted_at": when}
                conn.execute(entry_keys.insert().values(entry_id=entry, **key))
                conn.execute(journal_entries.insert().values(id=entry, points=points, balance_after=0, **key))
                sign = -1 if account.startswith("issued") else 1
                conn.execute(
                    postings.insert(),
                    [
                        {
                            "member_id": mid,
                            "entry_id": entry,
                            "line": 1,
                            "account": account,
                            "amount": sign * points,
                            "posted_at": when,
                        },
                        {
                            "member_id": mid,
                            "entry_id": entry,
                            "line": 2,
                            "account": "member",
                            "amount": -sign * points,
                            "posted_at": when,
                        },
                    ],
                )
            for r in range(rng.randrange(0, 6)):
                code, when = rng.choice(codes), moment(rng)
                version = (
                    2
                    if conn.execute(
                        sa.text(
                            "SELECT count(*) FROM benefit_versions WHERE code = :c AND version = 2 AND changed_at <= :w"
                        ),
                        {"c": code, "w": when},
                    ).scalar()
                    else 1
                )
                conn.execute(
                    redemptions.insert().values(
                        member_id=mid,
                        id=f"{mid}-r{r}",
                        benefit_code=code,
                        benefit_version=version,
                        quantity=rng.randrange(1, 3),
                        points=rng.randrange(0, 500),
                        entitlement=rng.random() < 0.3,
                        status=rng.choice(["pending", "fulfilled", "fulfilled", "failed", "cancelled"]),
                        created_at=when,
                        updated_at=when,
                    )
                )
            for r in range(rng.randrange(0, 3)):
                conn.execute(
                    redemption_refusals.insert().values(
                        member_id=mid,
                        redemption_id=f"{mid}-x{r}",
                        benefit_code=rng.choice(codes),
                        quantity=rng.randrange(1, 3),
                        reason=rng.choice(["out_of_stock", "limit_reached"]),
                        refused_at=moment(rng),
                    )
                )
            for f in range(rng.randrange(0, 3)):
                conn.execute(
                    feedback.insert().values(
                        member_id=mid,
                        feedback_id=f"{mid}-f{f}",
                        score=rng.randrange(0, 11),
                        benefit_code=rng.choice([None, *codes]),
                        answered_at=moment(rng),
                        received_at=START,
                    )
                )
            for _ in range(rng.randrange(0, 3)):
                conn.execute(
                    lifecycle_changes.insert().values(
                        member_id=mid,
                        id=str(uuid.uuid4()),
                        from_stage="growth",
                        to_stage=rng.choice(["decline", "win_back", "growth"]),
                        source="job",
                        changed_at=moment(rng),
                    )
                )


def by_hand(conn: Any, span: periods.Span) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """The raw measures of ``span``, from plain reads of every table and Python."""
    s, e = span.bounds
    inside = lambda t: s <= t < e  # noqa: E731
    changes: dict[str, list[Any]] = defaultdict(list)
    for r in conn.execute(sa.select(tier_changes)):
        changes[r.member_id].append(r)

    def tier_at(member: str, when: dt.datetime) -> str | None:
        before = [c for c in changes[member] if c.changed_at <= when]
        before.sort(key=lambda c: (c.changed_at, c.from_tier is not None))
        return before[-1].to_tier if before else metrics.NO_TIER

    held = set()
    for member, cs in changes.items():
        if tier_at(member, s) != metrics.NO_TIER:
            held.add((member, tier_at(member, s)))
        held |= {(member, c.to_tier) for c in cs if s < c.changed_at < e}
    tiers: dict[str, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(metrics.TIER_MEASURES, 0))

    def count(pairs: set[tuple[str, Any]], name: str) -> None:
        for _, tier in pairs:
            tiers[tier][name] += 1
        tiers[ALL][name] = len({m for m, _ in pairs})

    count(held, "members")
    txs = list(conn.execute(sa.select(transactions)))
    count({(t.member_id, tier_at(t.member_id, t.occurred_at)) for t in txs if inside(t.occurred_at)}, "active")
    kinds = dict(conn.execute(sa.select(accounts.c.code, accounts.c.kind)).all())
    for p in conn.execute(sa.select(postings)):
        kind = kinds[p.account]
        if not inside(p.posted_at) or kind not in ("issued", "redeemed", "expired"):
            continue
        name = {"issued": "earned", "redeemed": "burned", "expired": "expired"}[kind]
        amount = -p.amount if kind == "issued" else p.amount
        if kind == "issued" and p.amount > 0:
            continue
        for tier in (tier_at(p.member_id, p.posted_at), ALL):
            tiers[tier][name] += amount
    before = periods.previous(span, BANK_ZONE)
    was = {t.member_id for t in txs if before.bounds.start <= t.occurred_at < before.bounds.end}
    now_active = {t.member_id for t in txs if inside(t.occurred_at)}
    for member in was:
        for tier in (tier_at(member, s), ALL):
            tiers[tier]["previously_active"] += 1
            tiers[tier]["retained"] += member in now_active
    for c in conn.execute(sa.select(lifecycle_changes)):
        if inside(c.changed_at) and c.to_stage in ("decline", "win_back"):
            for tier in (tier_at(c.member_id, c.changed_at), ALL):
                tiers[tier][f"entering_{c.to_stage}"] += 1
    profiles = {p.member_id: p for p in conn.execute(sa.select(member_profiles))}

    def add_profile(tier: str, p: Any) -> None:
        products = len([x for x in (p.products_held or "").split(",") if x])
        tiers[tier]["profiles"] += 1
        tiers[tier]["products"] += products
        tiers[tier]["multi_product"] += products >= 2
        if p.aum is not None:
            tiers[tier]["aum_members"] += 1
            tiers[tier]["aum_fen"] += p.aum

    for member, tier in held:
        if member in profiles:
            add_profile(tier, profiles[member])
    for member in {m for m, _ in held}:
        if member in profiles:
            add_profile(ALL, profiles[member])
    answers = [f for f in conn.execute(sa.select(feedback)) if inside(f.answered_at)]
    for f in answers:
        for tier in (tier_at(f.member_id, f.answered_at), ALL):
            tiers[tier]["answers"] += 1
            tiers[tier]["promoters"] += f.score >= 9
            tiers[tier]["detractors"] += f.score <= 6
    moves: dict[tuple[str, str], int] = defaultdict(int)
    for cs in changes.values():
        for c in cs:
            if inside(c.changed_at) and c.from_tier is not None and c.from_tier != c.to_tier:
                moves[(c.from_tier, c.to_tier)] += 1
    for tier in list(tiers):
        tiers[tier]["migrations"] = [
            {"from": f, "to": t, "members": n} for (f, t), n in sorted(moves.items()) if tier in (ALL, f)
        ]

    # Benefits.
    versions = analytics_catalogue.versions(conn)
    all_tiers = sorted({t for _, t in held} | set(TIERS))
    offers = analytics_catalogue.offers(versions, all_tiers, span.bounds)
    cells: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(metrics.BENEFIT_MEASURES, 0), "cost_by_funding": {}, "refusals": {}}
    )
    members_of = defaultdict(set)
    for member, tier in held:
        members_of[tier].add(member)
    for (tier, code), offer in offers.items():
        cells[(tier, code)]["eligible"] = len(members_of[tier])
        cells[(tier, ALL)]["eligible"] = len(members_of[tier])
        if offer.entitlement:
            quota = offer.entitlement["quota"] * periods.overlapping(offer.entitlement["period"], span, BANK_ZONE)
            for key in ((tier, code), (tier, ALL), (ALL, code), (ALL, ALL)):
                cells[key]["quota_granted"] += len(members_of[tier]) * quota
    for code in {c for _, c in offers}:
        cells[(ALL, code)]["eligible"] = len({m for t, c in offers if c == code for m in members_of[t]})
    if offers:
        cells[(ALL, ALL)]["eligible"] = len({m for t, _ in offers for m in members_of[t]})
    docs = {(code, v.version): v.doc for code, vs in versions.items() for v in vs}
    redeemers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in conn.execute(sa.select(redemptions)):
        if not inside(r.created_at) or r.status not in ("pending", "fulfilled"):
            continue
        tier, doc = tier_at(r.member_id, r.created_at), docs[(r.benefit_code, r.benefit_version)]
        cost = r.quantity * doc["unit_cost"]
        for key in ((tier, r.benefit_code), (tier, ALL), (ALL, r.benefit_code), (ALL, ALL)):
            cell = cells[key]
            cell["redemptions"] += 1
            cell["units"] += r.quantity
            cell["points"] += r.points
            cell["cost_fen"] += cost
            cell["entitlement_units"] += r.quantity if r.entitlement else 0
            cell["cost_by_funding"][doc["funding_source"]] = (
                cell["cost_by_funding"].get(doc["funding_source"], 0) + cost
            )
            redeemers[key].add(r.member_id)
    for key, who in redeemers.items():
        cells[key]["redeemers"] = len(who)
    for r in conn.execute(sa.select(redemption_refusals)):
        if inside(r.refused_at):
            tier = tier_at(r.member_id, r.refused_at)
            for key in ((tier, r.benefit_code), (tier, ALL), (ALL, r.benefit_code), (ALL, ALL)):
                cell = cells[key]["refusals"].setdefault(r.reason, {"requests": 0, "units": 0})
                cell["requests"] += 1
                cell["units"] += r.quantity
    for f in answers:
        if f.benefit_code is not None:
            tier = tier_at(f.member_id, f.answered_at)
            for key in ((tier, f.benefit_code), (tier, ALL), (ALL, f.benefit_code), (ALL, ALL)):
                cells[key]["answers"] += 1
                cells[key]["promoters"] += f.score >= 9
                cells[key]["detractors"] += f.score <= 6
    return dict(tiers), dict(cells)


def normal(raw: Any) -> Any:
    """Raw measures with empty rows and tiers dropped, for comparison."""
    by_tier, by_benefit = raw
    zero = dict.fromkeys(metrics.TIER_MEASURES, 0)
    tiers = {t: v for t, v in by_tier.items() if {k: v[k] for k in zero} != zero or v["migrations"]}
    cells = {
        k: v
        for k, v in by_benefit.items()
        if any(v[m] for m in metrics.BENEFIT_MEASURES) or v["refusals"] or v["cost_by_funding"]
    }
    return json.loads(
        json.dumps({"tiers": tiers, "cells": {f"{t}|{c}": v for (t, c), v in cells.items()}}, default=int)
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_figure_recomputed_from_the_raw_rows(runtime: Runtime, seed: int) -> None:
    history(runtime, seed)
    for label in ("2026-04", "2026-05", "2026-06", "2026-Q2", "2026-W20", "2026-05-17"):
        span = periods.parse(label, BANK_ZONE)
        with transaction(runtime.engine) as conn:
            computed = metrics.compute(conn, span, zone=BANK_ZONE, tiers=TIERS)
            expected = by_hand(conn, span)
            assert normal(computed) == normal(expected), label
            rollups.store(conn, span, computed, now=START)
            stored = rollups.load(conn, span)
            assert stored is not None and normal(stored[0]) == normal(expected), label


def back_and_forth(rt: Runtime) -> None:
    """A member who leaves a tier and comes back within one day and again within one week, and one
    enrolled and moved at the same instant."""
    local = lambda day, hour: dt.datetime(2026, 5, day, hour, tzinfo=BANK_ZONE).astimezone(dt.UTC)  # noqa: E731
    histories = {
        "mz": [
            (START - dt.timedelta(days=30), "basic"),
            (local(12, 10), "mass"),
            (local(12, 12), "basic"),
            (local(14, 9), "mass"),
        ],
        "my": [(local(20, 8), "mass"), (local(20, 8), "hnw")],
    }
    with transaction(rt.engine) as conn:
        for mid, changes in histories.items():
            conn.execute(members.insert().values(member_id=mid, enrolled_at=changes[0][0], created_at=changes[0][0]))
            conn.execute(member_accounts.insert().values(member_id=mid))
            conn.execute(
                member_profiles.insert().values(member_id=mid, aum=5000, products_held=",card,loan,", updated_at=START)
            )
            record_tiers(conn, mid, changes)


@pytest.mark.parametrize("seed", [4, 5])
def test_periods_computed_together_equal_each_computed_alone(runtime: Runtime, seed: int) -> None:
    """The analytics job computes who held which tier for all the periods of a kind in one pass
    (``held_in``); every period's figures so computed equal the recomputation by hand, for
    consecutive periods and for periods with gaps between them (those already built)."""
    history(runtime, seed)
    back_and_forth(runtime)
    ranges = {"day": ("2026-05-01", "2026-05-31"), "week": ("2026-W14", "2026-W27"), "month": ("2026-04", "2026-06")}
    for first, last in ranges.values():
        every = periods.spans(first, last, BANK_ZONE)
        for spans in (every, every[::3]):
            with transaction(runtime.engine) as conn:
                together = metrics.held_in(conn, spans)
                assert len(together) == len(spans)
                for span, held in zip(spans, together, strict=True):
                    computed = metrics.compute(conn, span, zone=BANK_ZONE, tiers=TIERS, held=held)
                    assert normal(computed) == normal(by_hand(conn, span)), span.label
    with transaction(runtime.engine) as conn:
        (day,) = metrics.held_in(conn, [periods.parse("2026-05-12", BANK_ZONE)])
        assert day.changers["mz"] == {"basic", "mass"}
        (week,) = metrics.held_in(conn, [periods.parse("2026-W20", BANK_ZONE)])
        assert week.changers["mz"] == {"basic", "mass"}
        (enrolled,) = metrics.held_in(conn, [periods.parse("2026-05-20", BANK_ZONE)])
        assert enrolled.changers["my"] == {"mass", "hnw"}
