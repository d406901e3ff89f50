"""The analytics report as one table (a row per period, tier and benefit), for CSV and XLSX."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Table = tuple[Sequence[str], list[Sequence[Any]]]

HEADER = (
    "period",
    "tier",
    "benefit_code",
    "members",
    "active_members",
    "points_earned",
    "points_burned_tier",
    "points_expired",
    "earn_burn_ratio",
    "retention_rate",
    "churn_rate",
    "entering_decline",
    "entering_win_back",
    "average_products",
    "multi_product_share",
    "average_aum_fen",
    "aum_growth_rate",
    "tier_nps",
    "eligible",
    "redeemers",
    "usage_rate",
    "redemptions",
    "units",
    "points_burned",
    "cost_fen",
    "cost_per_active_member_fen",
    "quota_granted",
    "quota_used",
    "quota_utilisation",
    "stock_out_requests",
    "stock_out_units",
    "refused_requests",
    "benefit_nps",
    "nps_answers",
)


def report_table(report: dict[str, Any]) -> Table:
    rows: list[Sequence[Any]] = []
    for period in report["periods"]:
        for t in period["tiers"]:
            tier_part = (
                t["members"],
                t["active_members"],
                t["points"]["earned"],
                t["points"]["burned"],
                t["points"]["expired"],
                t["points"]["earn_burn_ratio"],
                t["retention"]["retention_rate"],
                t["retention"]["churn_rate"],
                t["lifecycle"]["entering_decline"],
                t["lifecycle"]["entering_win_back"],
                t["cross_sell"]["average_products"],
                t["cross_sell"]["multi_product_share"],
                t["assets"]["average_aum_fen"],
                t["assets"]["growth_rate"],
                t["nps"]["score"],
            )
            for b in t["benefits"]:
                rows.append(
                    (
                        period["period"],
                        t["tier"],
                        b["benefit_code"],
                        *tier_part,
                        b["eligible"],
                        b["redeemers"],
                        b["usage_rate"],
                        b["redemptions"],
                        b["units"],
                        b["points_burned"],
                        b["cost_fen"],
                        b["cost_per_active_member_fen"],
                        b["quota"]["granted"],
                        b["quota"]["used"],
                        b["quota"]["utilisation"],
                        b["stock_outs"]["requests"],
                        b["stock_outs"]["units"],
                        sum(r["requests"] for r in b["refusals"].values()),
                        b["nps"]["score"],
                        b["nps"]["answers"],
                    )
                )
            if not t["benefits"]:
                rows.append((period["period"], t["tier"], "", *tier_part, *([""] * 16)))
    return HEADER, rows
