"""The analytics report: the figures of each period, per tier and per benefit, with their rates.

A completed period is read from the roll-ups when the job has built it; the
period in progress (and any not built yet) is computed live from the raw
tables by the same SQL (:mod:`loyalty.analytics.metrics`). ``source`` says which.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy.engine import Connection

from loyalty.analytics import metrics, rollups
from loyalty.analytics.models import ALL
from loyalty.analytics.periods import Span, previous
from loyalty.calendar import iso
from rules.tiers import Ladder

#: NPS is shown only over at least this many answers (``LOYALTY_ANALYTICS_NPS_MINIMUM_ANSWERS``).
NPS_MINIMUM_ANSWERS = 30


def ratio(numerator: int, denominator: int, places: int = 4) -> str | None:
    """``numerator / denominator`` as a decimal string rounded half up; ``None`` over nothing."""
    if not denominator:
        return None
    quantum = Decimal(1).scaleb(-places)
    return str((Decimal(numerator) / Decimal(denominator)).quantize(quantum, rounding=ROUND_HALF_UP))


def per(numerator: int, denominator: int) -> int | None:
    """``numerator / denominator`` rounded half up to a whole number (fen); ``None`` over nothing."""
    if not denominator:
        return None
    return int((Decimal(numerator) / Decimal(denominator)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def nps(values: dict[str, Any], minimum: int) -> dict[str, Any]:
    """Promoters (9-10) minus detractors (0-6), as a share of the answers times 100, one decimal;
    ``score`` is ``None`` below ``minimum`` answers."""
    answers, promoters, detractors = values["answers"], values["promoters"], values["detractors"]
    shown = answers >= minimum and answers > 0
    return {
        "answers": answers,
        "promoters": promoters,
        "detractors": detractors,
        "score": ratio(100 * (promoters - detractors), answers, 1) if shown else None,
        "minimum_answers": minimum,
    }


def load_raw(conn: Connection, span: Span, *, now: dt.datetime, zone: dt.tzinfo, tiers: list[str]) -> dict[str, Any]:
    """The raw measures of ``span``: stored if the period is over and built, else computed live."""
    stored = rollups.load(conn, span) if span.bounds.end <= now else None
    if stored is not None:
        raw, built_at = stored
        return {"raw": raw, "source": "rollup", "built_at": iso(built_at)}
    return {"raw": metrics.compute(conn, span, zone=zone, tiers=tiers), "source": "live", "built_at": None}


def period_report(
    conn: Connection,
    span: Span,
    *,
    now: dt.datetime,
    zone: dt.tzinfo,
    ladder: Ladder,
    minimum_answers: int = NPS_MINIMUM_ANSWERS,
    tier: str | None = None,
    benefit: str | None = None,
) -> dict[str, Any]:
    """Every figure of one period, per tier (``*``: all) and per benefit (``*``: all)."""
    tiers = list(ladder.codes)
    loaded = load_raw(conn, span, now=now, zone=zone, tiers=tiers)
    by_tier, by_benefit = loaded["raw"]
    before = previous(span, zone)
    prior = rollups.load(conn, before) if before.bounds.end <= now else None
    prior_tiers = prior[0][0] if prior else {}
    rank = {code: ladder.rank(code) for code in tiers}
    out_tiers = []
    for code in sorted(by_tier, key=lambda t: (t != ALL, -rank.get(t, -1), t)):
        if tier is not None and code != tier:
            continue
        v = by_tier[code]
        total = by_benefit.get((code, ALL), {})
        cost = total.get("cost_fen", 0)
        average_aum = per(v["aum_fen"], v["aum_members"])
        prior_v = prior_tiers.get(code)
        prior_aum = per(prior_v["aum_fen"], prior_v["aum_members"]) if prior_v else None
        out_tiers.append(
            {
                "tier": code,
                "members": v["members"],
                "active_members": v["active"],
                "points": {
                    "earned": v["earned"],
                    "burned": v["burned"],
                    "expired": v["expired"],
                    "earn_burn_ratio": ratio(v["earned"], v["burned"]),
                },
                "retention": {
                    "previous_period": before.label,
                    "previously_active": v["previously_active"],
                    "retained": v["retained"],
                    "churned": v["previously_active"] - v["retained"],
                    "retention_rate": ratio(v["retained"], v["previously_active"]),
                    "churn_rate": ratio(v["previously_active"] - v["retained"], v["previously_active"]),
                },
                "lifecycle": {"entering_decline": v["entering_decline"], "entering_win_back": v["entering_win_back"]},
                "cross_sell": {
                    "profiles": v["profiles"],
                    "average_products": ratio(v["products"], v["profiles"], 2),
                    "multi_product_share": ratio(v["multi_product"], v["profiles"]),
                },
                "assets": {
                    "members": v["aum_members"],
                    "average_aum_fen": average_aum,
                    "previous_average_aum_fen": prior_aum,
                    "growth_rate": ratio(average_aum - prior_aum, prior_aum)
                    if average_aum is not None and prior_aum
                    else None,
                },
                "migrations": [
                    {**m, "direction": "up" if rank.get(m["to"], 0) > rank.get(m["from"], 0) else "down"}
                    for m in v["migrations"]
                ],
                "redeemers": total.get("redeemers", 0),
                "redemption_rate": ratio(total.get("redeemers", 0), v["members"]),
                "cost_fen": cost,
                "cost_per_active_member_fen": per(cost, v["active"]),
                "nps": nps(v, minimum_answers),
                "benefits": [
                    benefit_figures(c, values, active=v["active"], minimum_answers=minimum_answers)
                    for (t, c), values in sorted(by_benefit.items(), key=lambda kv: (kv[0][1] != ALL, kv[0][1]))
                    if t == code and (benefit is None or c == benefit)
                ],
            }
        )
    return {
        "period": span.label,
        "kind": span.kind,
        "start": span.start.isoformat(),
        "end": span.last_day(zone).isoformat(),
        "source": loaded["source"],
        "built_at": loaded["built_at"],
        "tiers": out_tiers,
    }


def benefit_figures(code: str, v: dict[str, Any], *, active: int, minimum_answers: int) -> dict[str, Any]:
    stock_outs = v["refusals"].get("out_of_stock", {"requests": 0, "units": 0})
    return {
        "benefit_code": code,
        "eligible": v["eligible"],
        "redeemers": v["redeemers"],
        "usage_rate": ratio(v["redeemers"], v["eligible"]),
        "redemptions": v["redemptions"],
        "units": v["units"],
        "points_burned": v["points"],
        "cost_fen": v["cost_fen"],
        "cost_by_funding": dict(sorted(v["cost_by_funding"].items())),
        "cost_per_active_member_fen": per(v["cost_fen"], active),
        "quota": {
            "granted": v["quota_granted"],
            "used": v["entitlement_units"],
            "utilisation": ratio(v["entitlement_units"], v["quota_granted"]),
        },
        "stock_outs": dict(stock_outs),
        "refusals": dict(sorted(v["refusals"].items())),
        "nps": nps(v, minimum_answers),
    }
