"""Breakage: what became of each month's points, and how many of today's will ever be redeemed.

A cohort is the points earned in one local month (by their earning date). Each
lot's points end in one place, read from what took them out of the lot
(``lot_consumptions`` and the entry that took them):

- redeemed: taken by a hold that was captured;
- held: taken by a hold still pending (still owed);
- expired, reversed (refund clawbacks), adjusted: taken by those entries;
- outstanding: left in the lot, plus held.

A voided hold and the void that gave its points back cancel out. So for every
cohort: issued = redeemed + expired + reversed + adjusted + outstanding.

The ultimate redemption rate is estimated by the chain-ladder method over the
cohorts' cumulative redemption curves by months since earning: for each age k
the development factor is the ratio of the cumulative redemptions at k + 1 to
those at k, over the cohorts old enough to have both; a cohort's expected
ultimate redemptions are its redemptions to date carried forward by the
factors of the ages it has not reached. The estimated rate is the sum of the
ultimate redemptions over the sum of the points issued.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.ledger.models import holds, journal_entries, lot_consumptions, point_lots

#: Factors and rates are shown to this many decimal places.
PLACES = Decimal("0.000001")
METHOD = (
    "chain-ladder over cumulative redemptions by months since earning: development factor per age = "
    "sum of cumulative redemptions at age k+1 / at age k over the cohorts observed at both; "
    "ultimate = redeemed to date x the factors of the ages not yet reached; rate = sum of ultimates / sum issued"
)


def _month(moment: dt.datetime, zone: dt.tzinfo) -> str:
    return calendar.local_date(moment, zone).strftime("%Y-%m")


def _age(cohort: str, month: str) -> int:
    (cy, cm), (y, m) = (map(int, cohort.split("-")), map(int, month.split("-")))
    return (y - cy) * 12 + (m - cm)


def cohorts(conn: Connection, *, end: dt.datetime, zone: dt.tzinfo) -> dict[str, Any]:
    """The cohorts of points earned before ``end``, their fates and redemption curves, and the
    estimated ultimate redemption rate with the data behind it."""
    pl, lc, je, h = point_lots.c, lot_consumptions.c, journal_entries.c, holds.c
    issued: dict[str, int] = defaultdict(int)
    lot_cohort: dict[tuple[str, str], str] = {}
    for r in conn.execute(
        sa.select(pl.member_id, pl.id, pl.original, pl.earned_at)
        .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
        .where(je.posted_at < end)
    ):
        cohort = _month(r.earned_at, zone)
        issued[cohort] += int(r.original)
        lot_cohort[(r.member_id, r.id)] = cohort
    fates: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    curve: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    resolved_before_end = sa.and_(h.resolved_at.is_not(None), h.resolved_at < end)
    hold_state = sa.case(
        (sa.and_(h.status == "captured", resolved_before_end), "captured"),
        (sa.and_(h.status == "voided", resolved_before_end), "voided"),
        else_="pending",
    )
    rows = conn.execute(
        sa.select(lc.member_id, lc.lot_id, lc.points, je.kind, hold_state.label("hold_state"), h.resolved_at)
        .select_from(
            lot_consumptions.join(
                journal_entries, sa.and_(je.member_id == lc.member_id, je.id == lc.entry_id)
            ).outerjoin(holds, sa.and_(h.member_id == je.member_id, h.hold_entry_id == je.id))
        )
        .where(je.posted_at < end)
    )
    for r in rows:
        of = lot_cohort.get((r.member_id, r.lot_id))
        if of is None:
            continue
        points = int(r.points)
        if r.kind == "hold":
            if r.hold_state == "captured":
                fates[of]["redeemed"] += points
                curve[of][_age(of, _month(r.resolved_at, zone))] += points
            elif r.hold_state == "pending":
                fates[of]["held"] += points
            else:
                fates[of]["voided"] += points
        elif r.kind == "void":
            fates[of]["voided"] += points  # negative: gives back what the voided hold took
        elif r.kind == "expiry":
            fates[of]["expired"] += points
        elif r.kind == "reversal":
            fates[of]["reversed"] += points
        else:
            fates[of]["adjusted"] += points
    now_month = _month(end - dt.timedelta(microseconds=1), zone)
    out = []
    for cohort in sorted(issued):
        f = fates[cohort]
        taken = f["redeemed"] + f["held"] + f["expired"] + f["reversed"] + f["adjusted"] + f["voided"]
        remaining = issued[cohort] - taken
        age = _age(cohort, now_month)
        cumulative, running = [], 0
        for k in range(age + 1):
            running += curve[cohort].get(k, 0)
            cumulative.append(running)
        out.append(
            {
                "cohort": cohort,
                "issued": issued[cohort],
                "redeemed": f["redeemed"],
                "expired": f["expired"],
                "reversed": f["reversed"],
                "adjusted": f["adjusted"],
                "outstanding": remaining + f["held"],
                "age_months": age,
                "cumulative_redeemed_by_age": cumulative,
            }
        )
    factors, rate, ultimates = estimate(out)
    for row, ultimate in zip(out, ultimates, strict=True):
        row["expected_ultimate_redeemed"] = ultimate
    return {
        "as_of": calendar.iso(end),
        "cohorts": out,
        "estimate": {
            "method": METHOD,
            "development_factors": [str(f) for f in factors],
            "ultimate_redemption_rate": None if rate is None else str(rate),
        },
    }


def estimate(rows: list[dict[str, Any]]) -> tuple[list[Decimal], Decimal | None, list[int]]:
    """Development factors by age, the estimated ultimate redemption rate (``None`` without points
    issued), and each cohort's expected ultimate redemptions (whole points, half up)."""
    oldest = max((r["age_months"] for r in rows), default=0)
    factors: list[Decimal] = []
    for k in range(oldest):
        at_next = [r for r in rows if r["age_months"] >= k + 1]
        before = sum(r["cumulative_redeemed_by_age"][k] for r in at_next)
        after = sum(r["cumulative_redeemed_by_age"][k + 1] for r in at_next)
        factors.append((Decimal(after) / Decimal(before)).quantize(PLACES) if before else Decimal(1))
    ultimates = []
    for r in rows:
        value = Decimal(r["cumulative_redeemed_by_age"][-1])
        for f in factors[r["age_months"] :]:
            value *= f
        ultimates.append(int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP)))
    total_issued = sum(r["issued"] for r in rows)
    if not total_issued:
        return factors, None, ultimates
    rate = min(Decimal(1), Decimal(sum(ultimates)) / Decimal(total_issued)).quantize(PLACES)
    return factors, rate, ultimates
