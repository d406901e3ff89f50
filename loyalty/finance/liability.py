"""The points liability: what the points the bank owes at the end of a local day are worth.

Outstanding points are split by funding source (the lots they are in, and the
lots pending holds took them from) and by the tier each member had at the end
of the day (the tier history). Each cell is valued:

    points x value of a point (fen) x expected redemption rate, rounded half up to the fen,

with the inputs in force on that day beside it: the ``point_value`` and
``redemption_rate`` valuation settings of the funding source; without a
setting, the service's ``LOYALTY_POINT_VALUE_FEN`` and the breakage estimate
(or 1, every point redeemed, when there is no estimate yet). Points members
owe back (a balance below zero after a refund of spent points) are in no lot:
they are shown as unfunded debt and not valued.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.finance import breakage, reports, settings, snapshots
from loyalty.tiers.models import tier_changes

UNKNOWN_TIER = "unknown"


def tiers_at(conn: Connection, *, end: dt.datetime) -> dict[str, str]:
    """Each member's tier at ``end``: the last change before it."""
    tc = tier_changes.c
    last = (
        sa.select(tc.member_id, sa.func.max(tc.changed_at).label("at"))
        .where(tc.changed_at < end)
        .group_by(tc.member_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(tc.member_id, tc.to_tier).join(
            last, sa.and_(last.c.member_id == tc.member_id, last.c.at == tc.changed_at)
        )
    )
    return {r.member_id: r.to_tier for r in rows}


def value_fen(points: int, point_value: Decimal, rate: Decimal) -> int:
    return int((Decimal(points) * point_value * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def liability(conn: Connection, *, as_of: dt.date, zone: dt.tzinfo, default_point_value: Decimal) -> dict[str, Any]:
    """The liability at the end of local day ``as_of``, by funding source and by tier, with its inputs."""
    end = calendar.day_of(as_of, zone).end
    owed = snapshots.owed_at(conn, end)
    tier_of = tiers_at(conn, end=end)
    valuation = settings.in_force(conn, as_of)
    estimates: list[str | None] = []

    def breakage_estimate() -> str | None:
        """Read the cohorts (every lot) only when a funding source has no redemption rate set."""
        if not estimates:
            estimates.append(breakage.cohorts(conn, end=end, zone=zone)["estimate"]["ultimate_redemption_rate"])
        return estimates[0]

    def inputs(source: str) -> dict[str, Any]:
        value = valuation.get("point_value", {}).get(source)
        rate = valuation.get("redemption_rate", {}).get(source)
        if rate is not None:
            rate_from = "valuation setting"
        elif (estimate := breakage_estimate()) is not None:
            rate, rate_from = Decimal(estimate), "breakage estimate"
        else:
            rate, rate_from = Decimal(1), "none yet: every point redeemed"
        return {
            "point_value_fen": str(value if value is not None else default_point_value),
            "point_value_from": "valuation setting" if value is not None else "LOYALTY_POINT_VALUE_FEN",
            "redemption_rate": str(rate),
            "redemption_rate_from": rate_from,
        }

    cells: dict[tuple[str, str], int] = defaultdict(int)
    for (member, source), points in owed.items():
        cells[(tier_of.get(member, UNKNOWN_TIER), source)] += points
    sources = {source: inputs(source) for source in sorted({s for _, s in cells})}
    cell_rows: list[dict[str, Any]] = []
    for (tier, source), points in sorted(cells.items()):
        i = sources[source]
        fen = value_fen(points, Decimal(i["point_value_fen"]), Decimal(i["redemption_rate"]))
        cell_rows.append({"tier": tier, "funding_source": source, "points": points, "liability_fen": fen})
    by_source = []
    for source, i in sources.items():
        mine = [c for c in cell_rows if c["funding_source"] == source]
        by_source.append(
            {
                "funding_source": source,
                "points": sum(c["points"] for c in mine),
                **i,
                "liability_fen": sum(c["liability_fen"] for c in mine),
            }
        )
    by_tier = []
    for tier in sorted({c["tier"] for c in cell_rows}):
        mine = [c for c in cell_rows if c["tier"] == tier]
        by_tier.append(
            {
                "tier": tier,
                "points": sum(c["points"] for c in mine),
                "liability_fen": sum(c["liability_fen"] for c in mine),
            }
        )
    in_lots = sum(owed.values())
    debt = debt_at(conn, end=end)
    from_postings = reports.outstanding(conn, end=end)
    return {
        "as_of": as_of.isoformat(),
        "end": calendar.iso(end),
        "by_funding_source": by_source,
        "by_tier": by_tier,
        "cells": cell_rows,
        "unfunded_debt_points": debt,
        "total": {"points": in_lots, "liability_fen": sum(c["liability_fen"] for c in cell_rows)},
        # the lots (less what members owe back) against the postings of the outstanding accounts
        "tie_out": {
            "points_in_lots_less_debt": in_lots - debt,
            "outstanding_from_postings": from_postings,
            "tied": in_lots - debt == from_postings,
        },
    }


def debt_at(conn: Connection, *, end: dt.datetime) -> int:
    """Points members owe back at ``end``: the sum of the balances below zero after each member's
    last entry before it."""
    return sum(-f.balance for f in snapshots.members_at(conn, end).values() if f.balance < 0)
