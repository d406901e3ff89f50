"""Tuning advice: findings per tier from the figures of a period, each with the figures behind it
and a projected cost impact in CNY per period. Deterministic rules over the report's measures, no
model: every threshold is a setting (:class:`Thresholds`, defaults in ``docs/analytics.md``).

Findings (``kind``):

- ``low_usage``: a benefit's usage rate in a tier below ``low_usage_rate`` for
  ``consecutive_periods`` periods in a row, with candidate replacements: benefits
  that members of other tiers who resemble the tier's members (same lifecycle
  stage, age band, enrolment channel and number of products) redeem, weighted
  by how the tier's members spread over those segments, or that an adjacent
  tier uses at ``good_usage_rate`` or more;
- ``stock_out``: demand turned away for want of stock, and the stock that would have met it;
- ``expensive_low_score``: a benefit costing ``expensive_unit_cost_fen`` or more a
  unit with an NPS below ``low_nps`` or a quota used below ``low_utilisation``;
- ``price_out_of_line``: a benefit redeemed ``price_ratio`` times more or less
  than the median of the benefits of similar unit cost (within a factor of 2)
  open to the tier;
- ``hoarding``: a tier whose earn/burn ratio is ``hoarding_earn_burn_ratio`` or
  more, or whose expired points are ``hoarding_expiry_share`` of its earned points or more.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from decimal import ROUND_HALF_UP, Decimal
from statistics import median
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.analytics import catalogue, metrics, periods
from loyalty.analytics.jobs import programme_at
from loyalty.analytics.models import advice_decisions
from loyalty.analytics.periods import Span
from loyalty.analytics.report import NPS_MINIMUM_ANSWERS, load_raw, nps, ratio
from loyalty.calendar import iso
from loyalty.db import transaction
from loyalty.errors import NotFound
from loyalty.records.models import member_profiles, members
from loyalty.redemption.models import redemptions
from loyalty.runtime import Runtime

FINDING_ID = re.compile(r"^[0-9]{4}(-[0-9A-Z]{2,3}){0,2}:[A-Za-z0-9._:\-]{1,64}:[a-z_]{1,32}:[A-Za-z0-9._:\-]{1,64}$")


@dataclass(frozen=True)
class Thresholds:
    """The advice's thresholds; each can be set by ``LOYALTY_ADVICE_<NAME>`` (upper case)."""

    low_usage_rate: Decimal = Decimal("0.05")
    consecutive_periods: int = 3
    minimum_eligible: int = 20
    good_usage_rate: Decimal = Decimal("0.20")
    stock_out_minimum_requests: int = 5
    stock_out_share: Decimal = Decimal("0.10")
    expensive_unit_cost_fen: int = 10_000
    low_nps: Decimal = Decimal("0")
    low_utilisation: Decimal = Decimal("0.30")
    price_ratio: Decimal = Decimal("3")
    hoarding_earn_burn_ratio: Decimal = Decimal("4")
    hoarding_expiry_share: Decimal = Decimal("0.30")
    hoarding_minimum_points: int = 10_000
    minimum_answers: int = NPS_MINIMUM_ANSWERS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Thresholds:
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f"LOYALTY_ADVICE_{f.name.upper()}"
            raw = env.get(var)
            if raw is None:
                continue
            try:
                value: int | Decimal = int(raw) if f.type == "int" else Decimal(raw)
            except (ValueError, ArithmeticError):
                kind = "an integer" if f.type == "int" else "a decimal number"
                raise ValueError(f"{var} must be {kind}, not {raw!r}") from None
            if isinstance(value, Decimal) and not value.is_finite():
                raise ValueError(f"{var} must be a finite number, not {raw!r}")
            if value < 0:
                raise ValueError(f"{var} must not be negative, not {raw!r}")
            values[f.name] = value
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}


def cny(fen: int) -> str:
    """Fen as CNY with two decimals: ``-1234`` is ``-12.34``."""
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def _rate(n: int, d: int) -> Decimal | None:
    return Decimal(n) / Decimal(d) if d else None


def _fen(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _finding(
    span: Span, tier: str, kind: str, code: str | None, summary: str, impact: int, **extra: Any
) -> dict[str, Any]:
    return {
        "finding_id": f"{span.label}:{tier}:{kind}:{code or '-'}",
        "tier": tier,
        "kind": kind,
        "benefit_code": code,
        "summary": summary,
        "cost_impact_fen": impact,
        "cost_impact_cny": cny(impact),
        "figures": extra.pop("figures"),
        "candidates": extra.pop("candidates", []),
        "decision": None,
    }


def segments(
    conn: Connection, span: Span, zone: dt.tzinfo
) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], list[int]]]:
    """Members per (tier, segment), and redeemers and units per (tier then, segment, benefit), in
    ``span``. A segment is (lifecycle stage, age band of ten years, enrolment channel, products held:
    0, 1 or 2 or more), as the members stand now."""
    m, mp = members.c, member_profiles.c
    year = span.last_day(zone).year
    band = (sa.literal(year) - sa.extract("year", m.birth_date)) / 10
    held = metrics.products_held(mp.products_held)
    products = sa.case((held >= 2, 2), else_=held)
    seg = (
        sa.select(
            m.member_id, m.lifecycle_stage.label("stage"), band.label("band"), m.channel, products.label("products")
        )
        .outerjoin(member_profiles, mp.member_id == m.member_id)
        .subquery("seg")
    )
    s = seg.c
    keys = (s.stage, s.band, s.channel, s.products)
    h = metrics.held(span)
    counts = {
        (r[0], *r[1:5]): int(r[5])
        for r in conn.execute(
            sa.select(h.c.tier, *keys, sa.func.count())
            .join(seg, s.member_id == h.c.member_id)
            .group_by(h.c.tier, *keys)
        )
    }
    rd = redemptions.c
    used = (
        sa.select(
            metrics.tier_at(rd.member_id, rd.created_at).label("tier"), rd.member_id, rd.benefit_code, rd.quantity
        )
        .where(metrics.in_span(rd.created_at, span), rd.status.in_(metrics.LIVE))
        .subquery("used")
    )
    u = used.c
    q = (
        sa.select(u.tier, *keys, u.benefit_code, sa.func.count(sa.distinct(u.member_id)), sa.func.sum(u.quantity))
        .join(seg, s.member_id == u.member_id)
        .group_by(u.tier, *keys, u.benefit_code)
    )
    redeemed = {(r[0], *r[1:5], r[5]): [int(r[6]), int(r[7])] for r in conn.execute(q)}
    return counts, redeemed


def _similar(
    tier: str, counts: dict[tuple[Any, ...], int], redeemed: dict[tuple[Any, ...], list[int]]
) -> dict[str, dict[str, Any]]:
    """Per benefit: its usage rate among members of other tiers, each segment weighted by the
    tier's members in it, and the units per redeemer there."""
    weights: dict[tuple[Any, ...], int] = defaultdict(int)
    others: dict[tuple[Any, ...], int] = defaultdict(int)
    for (t, *key), n in counts.items():
        (weights if t == tier else others)[tuple(key)] += n
    covered = {k: w for k, w in weights.items() if others.get(k)}
    total = sum(covered.values())
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"rate": Decimal(0), "redeemers": 0, "units": 0})
    if not total:
        return {}
    for (t, *key, code), (redeemers, units) in redeemed.items():
        k = tuple(key)
        if t == tier or k not in covered:
            continue
        cell = out[code]
        cell["rate"] += Decimal(covered[k]) / total * Decimal(redeemers) / others[k]
        cell["redeemers"] += redeemers
        cell["units"] += units
    for cell in out.values():
        cell["segments_compared"] = len(covered)
        cell["members_compared"] = sum(others[k] for k in covered)
    return dict(out)


def advice(rt: Runtime, period: str, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The findings for ``period``, per tier; see the module's description."""
    th = thresholds or Thresholds.from_env()
    now = rt.now()
    programme = programme_at(rt, now)
    zone, ladder = programme.zone, programme.ladder
    span = periods.parse(period, zone)
    history = [span]
    while len(history) < th.consecutive_periods:
        history.insert(0, periods.previous(history[0], zone))
    tiers = list(ladder.codes)
    with transaction(rt.engine, readonly=True) as conn:
        raws = [load_raw(conn, s, now=now, zone=zone, tiers=tiers)["raw"] for s in history]
        by_tier, by_benefit = raws[-1]
        versions = catalogue.versions(conn)
        offers = catalogue.offers(versions, tiers, span.bounds)
        counts, redeemed = segments(conn, span, zone)
        decided = {r.finding_id: r for r in conn.execute(sa.select(advice_decisions))}
    latest = {code: vs[-1] for code, vs in versions.items()}
    findings: dict[str, list[dict[str, Any]]] = {t: [] for t in tiers}

    def usage(raw: Any, tier: str, code: str) -> Decimal | None:
        v = raw[1].get((tier, code))
        return _rate(v["redeemers"], v["eligible"]) if v else None

    for tier in tiers:
        out = findings[tier]
        open_here = sorted(c for (t, c) in offers if t == tier)
        similar = None
        for code in open_here:
            v = by_benefit.get((tier, code))
            if v is None:
                continue
            offer = offers[(tier, code)]
            rates = [usage(raw, tier, code) for raw in raws]
            eligible_ok = all(raw[1].get((tier, code), {}).get("eligible", 0) >= th.minimum_eligible for raw in raws)
            if eligible_ok and all(r is not None and r < th.low_usage_rate for r in rates):
                if similar is None:
                    similar = _similar(tier, counts, redeemed)
                out.append(_low_usage(span, tier, code, v, offer, rates, similar, by_benefit, ladder, latest, th))
            out.extend(_stock_out(span, tier, code, v, offer, th))
            out.extend(_expensive(span, tier, code, v, offer, th))
        out.extend(_price_out_of_line(span, tier, open_here, by_benefit, offers, th))
        out.extend(_hoarding(span, tier, by_tier.get(tier), rt, th))
    for items in findings.values():
        for f in items:
            d = decided.get(f["finding_id"])
            if d is not None:
                f["decision"] = {
                    "finding_id": d.finding_id,
                    "decision": d.decision,
                    "note": d.note,
                    "decided_by": d.decided_by,
                    "decided_at": iso(d.decided_at),
                }
    return {
        "period": span.label,
        "periods_considered": [s.label for s in history],
        "thresholds": th.as_json(),
        "tiers": [{"tier": t, "findings": findings[t]} for t in tiers],
    }


def _low_usage(
    span: Span,
    tier: str,
    code: str,
    v: dict[str, Any],
    offer: catalogue.Offer,
    rates: list[Decimal | None],
    similar: dict[str, dict[str, Any]],
    by_benefit: dict[tuple[str, str], dict[str, Any]],
    ladder: Any,
    latest: dict[str, catalogue.Version],
    th: Thresholds,
) -> dict[str, Any]:
    rank = ladder.rank(tier)
    adjacent = [t for t in ladder.codes if abs(ladder.rank(t) - rank) == 1]
    candidates = []
    for other, version in sorted(latest.items()):
        if other == code or version.doc.get("status") != "active":
            continue
        like = similar.get(other)
        like_rate = like["rate"] if like else Decimal(0)
        next_door = {
            t: by_benefit[(t, other)]
            for t in adjacent
            if (t, other) in by_benefit
            and (_rate(by_benefit[(t, other)]["redeemers"], by_benefit[(t, other)]["eligible"]) or 0)
            >= th.good_usage_rate
        }
        if like_rate < th.good_usage_rate and not next_door:
            continue
        units_per = Decimal(like["units"]) / like["redeemers"] if like and like["redeemers"] else Decimal(1)
        rate = (
            like_rate
            if like_rate >= th.good_usage_rate
            else max(Decimal(n["redeemers"]) / n["eligible"] for n in next_door.values())
        )
        unit_cost = int(version.doc["unit_cost"])
        projected = _fen(Decimal(v["eligible"]) * rate * units_per * unit_cost)
        candidates.append(
            {
                "benefit_code": other,
                "similar_members_usage_rate": str(like_rate.quantize(Decimal("0.0001"))),
                "similar_members_compared": like["members_compared"] if like else 0,
                "adjacent_tiers_using_it": sorted(next_door),
                "open_to_tier": version.eligible(tier),
                "unit_cost_fen": unit_cost,
                "projected_redeemers": _fen(Decimal(v["eligible"]) * rate),
                "projected_cost_fen": projected,
                "cost_difference_fen": projected - v["cost_fen"],
                "cost_difference_cny": cny(projected - v["cost_fen"]),
            }
        )
    candidates.sort(key=lambda c: (-Decimal(c["similar_members_usage_rate"]), c["benefit_code"]))
    candidates = candidates[:3]
    impact = candidates[0]["cost_difference_fen"] if candidates else -v["cost_fen"]
    shown = [None if r is None else str(r.quantize(Decimal("0.0001"))) for r in rates]
    summary = (
        f"{code} is used by {shown[-1]} of eligible {tier} members, below {th.low_usage_rate} for {len(rates)} periods"
    )
    if candidates:
        best = candidates[0]
        summary += (
            f"; similar members redeem {best['benefit_code']} (usage {best['similar_members_usage_rate']}):"
            f" replacing it would change the cost by {best['cost_difference_cny']} CNY a period"
        )
    return _finding(
        span,
        tier,
        "low_usage",
        code,
        summary,
        impact,
        figures={
            "usage_rates": shown,
            "eligible": v["eligible"],
            "redeemers": v["redeemers"],
            "cost_fen": v["cost_fen"],
            "unit_cost_fen": offer.unit_cost,
        },
        candidates=candidates,
    )


def _stock_out(
    span: Span, tier: str, code: str, v: dict[str, Any], offer: catalogue.Offer, th: Thresholds
) -> list[dict[str, Any]]:
    out = v["refusals"].get("out_of_stock")
    if not out:
        return []
    share = Decimal(out["units"]) / (out["units"] + v["units"])
    if out["requests"] < th.stock_out_minimum_requests and share < th.stock_out_share:
        return []
    impact = out["units"] * offer.unit_cost
    return [
        _finding(
            span,
            tier,
            "stock_out",
            code,
            f"{out['requests']} requests for {out['units']} units of {code} were turned away for want of stock"
            f" ({ratio(out['units'], out['units'] + v['units'])} of demand); {out['units']} more units would have met"
            f" them, at {cny(impact)} CNY",
            impact,
            figures={
                "refused_requests": out["requests"],
                "refused_units": out["units"],
                "redeemed_units": v["units"],
                "turned_away_share": ratio(out["units"], out["units"] + v["units"]),
                "stock_needed": out["units"],
                "unit_cost_fen": offer.unit_cost,
            },
        )
    ]


def _expensive(
    span: Span, tier: str, code: str, v: dict[str, Any], offer: catalogue.Offer, th: Thresholds
) -> list[dict[str, Any]]:
    if offer.unit_cost < th.expensive_unit_cost_fen or not v["cost_fen"] and not v["quota_granted"]:
        return []
    score = nps(v, th.minimum_answers)["score"]
    utilisation = _rate(v["entitlement_units"], v["quota_granted"])
    low_score = score is not None and Decimal(score) < th.low_nps
    low_use = utilisation is not None and utilisation < th.low_utilisation
    if not (low_score or low_use):
        return []
    why = []
    if low_score:
        why.append(f"an NPS of {score} (below {th.low_nps})")
    if low_use:
        why.append(f"its quota used {ratio(v['entitlement_units'], v['quota_granted'])} (below {th.low_utilisation})")
    return [
        _finding(
            span,
            tier,
            "expensive_low_score",
            code,
            f"{code} costs {cny(offer.unit_cost)} CNY a unit and has "
            + " and ".join(why)
            + f"; it cost {cny(v['cost_fen'])} CNY this period",
            -v["cost_fen"],
            figures={
                "unit_cost_fen": offer.unit_cost,
                "cost_fen": v["cost_fen"],
                "nps": score,
                "answers": v["answers"],
                "quota_granted": v["quota_granted"],
                "quota_used": v["entitlement_units"],
                "utilisation": ratio(v["entitlement_units"], v["quota_granted"]),
            },
        )
    ]


def _price_out_of_line(
    span: Span,
    tier: str,
    codes: list[str],
    by_benefit: dict[tuple[str, str], dict[str, Any]],
    offers: dict[tuple[str, str], catalogue.Offer],
    th: Thresholds,
) -> list[dict[str, Any]]:
    priced = {
        c: (offers[(tier, c)], by_benefit[(tier, c)])
        for c in codes
        if offers[(tier, c)].points_price
        and offers[(tier, c)].unit_cost
        and by_benefit.get((tier, c), {}).get("eligible")
    }
    out = []
    for code, (offer, v) in sorted(priced.items()):
        peers = [
            (c, o, pv)
            for c, (o, pv) in priced.items()
            if c != code and offer.unit_cost <= 2 * o.unit_cost and o.unit_cost <= 2 * offer.unit_cost
        ]
        if len(peers) < 2:
            continue
        rate = Decimal(v["redeemers"]) / v["eligible"]
        middle = Decimal(median([Decimal(pv["redeemers"]) / pv["eligible"] for _, _, pv in peers]))
        if middle == 0 or th.price_ratio * middle > rate > middle / th.price_ratio:
            continue
        units_per = Decimal(v["units"]) / v["redeemers"] if v["redeemers"] else Decimal(1)
        impact = _fen((middle - rate) * v["eligible"] * units_per * offer.unit_cost)
        direction = "more" if rate > middle else "less"
        out.append(
            _finding(
                span,
                tier,
                "price_out_of_line",
                code,
                f"{code} ({offer.points_price} points, {cny(offer.unit_cost)} CNY a unit) is redeemed by"
                f" {rate.quantize(Decimal('0.0001'))} of eligible members, far {direction} than the"
                f" {middle.quantize(Decimal('0.0001'))} of benefits of similar cost; bringing it to that rate"
                f" would change the cost by {cny(impact)} CNY a period",
                impact,
                figures={
                    "usage_rate": str(rate.quantize(Decimal("0.0001"))),
                    "peer_median_usage_rate": str(middle.quantize(Decimal("0.0001"))),
                    "points_price": offer.points_price,
                    "unit_cost_fen": offer.unit_cost,
                    "peers": sorted(c for c, _, _ in peers),
                },
            )
        )
    return out


def _hoarding(span: Span, tier: str, v: dict[str, Any] | None, rt: Runtime, th: Thresholds) -> list[dict[str, Any]]:
    if v is None or v["earned"] < th.hoarding_minimum_points:
        return []
    ratio_ = _rate(v["earned"], v["burned"])
    expiry = Decimal(v["expired"]) / v["earned"]
    hoarding = ratio_ is None or ratio_ >= th.hoarding_earn_burn_ratio
    if not (hoarding or expiry >= th.hoarding_expiry_share):
        return []
    kept = v["earned"] - v["burned"] - v["expired"]
    impact = _fen(Decimal(kept) * rt.settings.point_value_fen)
    return [
        _finding(
            span,
            tier,
            "hoarding",
            None,
            f"{tier} members earned {v['earned']} points and burned {v['burned']} (ratio"
            f" {ratio(v['earned'], v['burned']) or 'with nothing burned'}); {v['expired']} expired; the {kept} points"
            f" kept add {cny(impact)} CNY to the liability at face value",
            impact,
            figures={
                "earned": v["earned"],
                "burned": v["burned"],
                "expired": v["expired"],
                "earn_burn_ratio": ratio(v["earned"], v["burned"]),
                "expired_share": ratio(v["expired"], v["earned"]),
                "point_value_fen": str(rt.settings.point_value_fen),
            },
        )
    ]


class FindingNotFound(NotFound):
    code = "finding_not_found"
    title = "No such finding"


def decide(
    conn: Connection, finding_id: str, decision: str, note: str, *, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Mark a finding accepted or dismissed, with a note; audited. The latest decision stands."""
    if not FINDING_ID.fullmatch(finding_id):
        raise FindingNotFound(f"{finding_id!r} is not the id of a finding", field="finding_id")
    a = advice_decisions.c
    before = conn.execute(sa.select(advice_decisions).where(a.finding_id == finding_id)).first()
    after = {"decision": decision, "note": note, "decided_by": actor, "decided_at": iso(now)}
    if before is None:
        conn.execute(advice_decisions.insert().values(finding_id=finding_id, **{**after, "decided_at": now}))
    else:
        conn.execute(advice_decisions.update().where(a.finding_id == finding_id).values(**{**after, "decided_at": now}))
    audit.record(
        conn,
        actor=actor,
        action="advice.decide",
        object_type="advice_finding",
        object_id=finding_id,
        before=None if before is None else {"decision": before.decision, "note": before.note},
        after=after,
        now=now,
    )
    return {"finding_id": finding_id, **after}
