"""What the API and the admin UI call: reports over a range of periods, and the rows behind a figure.

Every function takes the runtime and returns plain dicts and lists.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loyalty.analytics import catalogue, metrics, periods
from loyalty.analytics.jobs import programme_at
from loyalty.analytics.models import ALL, feedback
from loyalty.analytics.periods import Span
from loyalty.analytics.report import NPS_MINIMUM_ANSWERS, period_report
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.ledger.models import accounts, postings
from loyalty.records.models import transactions
from loyalty.redemption.models import redemption_refusals, redemptions
from loyalty.runtime import Runtime
from loyalty.tiers.models import lifecycle_changes

#: Most ids a drill-down lists.
MAX_IDS = 1000


def report(
    rt: Runtime,
    period: str,
    to: str | None = None,
    *,
    tier: str | None = None,
    benefit: str | None = None,
    minimum_answers: int = NPS_MINIMUM_ANSWERS,
) -> dict[str, Any]:
    """The figures of every period from ``period`` to ``to`` (labels of one kind), per tier and benefit."""
    now = rt.now()
    programme = programme_at(rt, now)
    zone = programme.zone
    spans = periods.spans(period, to, zone)
    with transaction(rt.engine, readonly=True) as conn:
        return {
            "periods": [
                period_report(
                    conn,
                    span,
                    now=now,
                    zone=zone,
                    ladder=programme_at(rt, min(now, span.bounds.end)).ladder,
                    minimum_answers=minimum_answers,
                    tier=tier,
                    benefit=benefit,
                )
                for span in spans
            ]
        }


#: The figures a drill-down can name, and what each lists.
EXPLAINED = {
    "members": "member ids: members who held the tier at some moment of the period (tier_changes)",
    "eligible": "member ids: members of the tier while the benefit was active and open to it",
    "active_members": "member ids: members with a transaction in the period, in the tier in force at it",
    "redemptions": "redemption ids: redemptions created in the period, pending or fulfilled, in the tier then",
    "redeemers": "member ids: members with such a redemption",
    "refusals": "redemption ids: redemptions refused in the period (redemption_refusals), in the tier then",
    "feedback": "feedback ids: answers given in the period, in the tier then",
    "previously_active": "member ids: members with a transaction in the previous period, by tier at this one's start",
    "retained": "member ids: those of previously_active with a transaction in this period",
    "entering_decline": "member ids: lifecycle changes to decline in the period, in the tier then",
    "entering_win_back": "member ids: lifecycle changes to win_back in the period, in the tier then",
    "points": "entry ids: postings to issued, redeemed and expired accounts in the period, in the tier then",
}


def _rows(span: Span, before: Span, metric: str, tier: str, benefit: str, open_to: set[str]) -> sa.Select[Any]:
    """A query of the ids behind ``metric`` for ``tier`` and ``benefit`` (``*``: all); ``open_to``:
    the tiers the benefit was open to in the period."""

    def tier_ok(col: Any) -> sa.ColumnElement[bool]:
        return sa.true() if tier == ALL else col == tier

    def code_ok(col: Any) -> sa.ColumnElement[bool]:
        return sa.true() if benefit == ALL else col == benefit

    tier_at, in_span = metrics.tier_at, metrics.in_span
    if metric in ("members", "eligible"):
        h = metrics.held(span)
        q = sa.select(h.c.member_id.label("id")).where(tier_ok(h.c.tier)).distinct()
        return q.where(h.c.tier.in_(sorted(open_to))) if metric == "eligible" else q
    if metric == "active_members":
        t = transactions.c
        return (
            sa.select(t.member_id.label("id"))
            .where(in_span(t.occurred_at, span), tier_ok(tier_at(t.member_id, t.occurred_at)))
            .distinct()
        )
    if metric in ("redemptions", "redeemers"):
        r = redemptions.c
        q = sa.select((r.id if metric == "redemptions" else r.member_id).label("id")).where(
            in_span(r.created_at, span),
            r.status.in_(metrics.LIVE),
            code_ok(r.benefit_code),
            tier_ok(tier_at(r.member_id, r.created_at)),
        )
        return q.distinct() if metric == "redeemers" else q
    if metric == "refusals":
        rf = redemption_refusals.c
        return sa.select(rf.redemption_id.label("id")).where(
            in_span(rf.refused_at, span), code_ok(rf.benefit_code), tier_ok(tier_at(rf.member_id, rf.refused_at))
        )
    if metric == "feedback":
        fb = feedback.c
        q = sa.select(fb.feedback_id.label("id")).where(
            in_span(fb.answered_at, span), tier_ok(tier_at(fb.member_id, fb.answered_at))
        )
        return q.where(fb.benefit_code == benefit) if benefit != ALL else q
    if metric in ("previously_active", "retained"):
        t = transactions.c
        q = sa.select(t.member_id.label("id")).where(
            in_span(t.occurred_at, before), tier_ok(tier_at(t.member_id, span.bounds.start))
        )
        if metric == "retained":
            again = transactions.alias("again")
            q = q.where(sa.exists().where(again.c.member_id == t.member_id, in_span(again.c.occurred_at, span)))
        return q.distinct()
    if metric in ("entering_decline", "entering_win_back"):
        lc = lifecycle_changes.c
        return sa.select(lc.member_id.label("id")).where(
            in_span(lc.changed_at, span),
            lc.to_stage == metric.removeprefix("entering_"),
            tier_ok(tier_at(lc.member_id, lc.changed_at)),
        )
    p, a = postings.c, accounts.c
    return (
        sa.select(sa.cast(p.entry_id, sa.String).label("id"))
        .join(accounts, a.code == p.account)
        .where(
            in_span(p.posted_at, span),
            a.kind.in_(("issued", "redeemed", "expired")),
            tier_ok(tier_at(p.member_id, p.posted_at)),
        )
        .distinct()
    )


def explain(
    rt: Runtime, period: str, metric: str, *, tier: str = ALL, benefit: str = ALL, limit: int = MAX_IDS
) -> dict[str, Any]:
    """The ids a figure of the report counts (up to ``limit``, in order), how many there are, and
    what they are: recomputing the figure from them gives the report's."""
    if metric not in EXPLAINED:
        raise ValidationError.one("metric", f"must be one of {', '.join(EXPLAINED)}")
    now = rt.now()
    programme = programme_at(rt, now)
    span = periods.parse(period, programme.zone)
    before = periods.previous(span, programme.zone)
    with transaction(rt.engine, readonly=True) as conn:
        tiers = list(programme.ladder.codes)
        open_to = {t for (t, c) in catalogue.offers(catalogue.versions(conn), tiers, span.bounds) if c == benefit}
        rows = _rows(span, before, metric, tier, benefit, open_to).subquery("ids")
        count = conn.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one()
        ids = list(conn.execute(sa.select(rows.c.id).order_by(rows.c.id).limit(limit)).scalars())
    return {
        "period": span.label,
        "metric": metric,
        "tier": tier,
        "benefit_code": benefit,
        "what": EXPLAINED[metric],
        "count": int(count),
        "ids": [str(i) for i in ids],
        "truncated": count > len(ids),
    }
