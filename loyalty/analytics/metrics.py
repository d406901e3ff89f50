"""The figures of one period, computed from the raw tables in set-based SQL.

:func:`compute` reads the journal, redemptions, refusals, feedback, profiles and
the tier and lifecycle history for one :class:`~loyalty.analytics.periods.Span`
and returns the period's *raw* measures (counts and sums, what the roll-up
tables store); :func:`loyalty.analytics.report.figures` derives the rates.

Which tier a figure counts in (``docs/analytics.md``):

- an event (a redemption, a refusal, a posting, a transaction, an answer, a
  lifecycle change) counts in the tier in force at its moment, from
  ``tier_changes`` (the last change at or before it), not today's tier;
- a member counts in every tier held at some moment of the period, so a member
  who changed tier mid-period is in both, and once in the ``*`` total.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.analytics import catalogue
from loyalty.analytics.models import ALL, feedback
from loyalty.analytics.periods import Span, overlapping, previous
from loyalty.db import UTCDateTime, scratch
from loyalty.ledger.models import accounts, postings
from loyalty.records.models import member_profiles, transactions
from loyalty.redemption.models import redemption_refusals, redemptions
from loyalty.tiers.models import lifecycle_changes, tier_changes

#: Redemptions that count as used: those not given back (failed or cancelled).
LIVE = ("pending", "fulfilled")
PROMOTER, DETRACTOR = 9, 6

TIER_MEASURES = (
    "members",
    "active",
    "earned",
    "burned",
    "expired",
    "previously_active",
    "retained",
    "entering_decline",
    "entering_win_back",
    "profiles",
    "products",
    "multi_product",
    "aum_members",
    "aum_fen",
    "answers",
    "promoters",
    "detractors",
)
BENEFIT_MEASURES = (
    "eligible",
    "redeemers",
    "redemptions",
    "units",
    "points",
    "cost_fen",
    "entitlement_units",
    "quota_granted",
    "answers",
    "promoters",
    "detractors",
)


#: The tier of an event before the member's first tier change (data older than the enrolment).
NO_TIER = "-"


def tier_at(member: Any, moment: Any) -> sa.ColumnElement[Any]:
    """The tier in force for ``member`` at ``moment``: the last change at or before it (of two
    changes at one instant, the enrolment is the earlier); :data:`NO_TIER` before the first."""
    tc = tier_changes.alias("tier_then")
    last = (
        sa.select(tc.c.to_tier)
        .where(tc.c.member_id == member, tc.c.changed_at <= moment)
        .order_by(tc.c.changed_at.desc(), sa.case((tc.c.from_tier.is_(None), 1), else_=0))
        .limit(1)
        .scalar_subquery()
    )
    return sa.func.coalesce(last, NO_TIER)


def held_query(span: Span) -> sa.Select[Any]:
    """``(member_id, tier)`` for every tier a member held at some moment of the period: each tier
    change is in force from its moment to the next change's (of two at one instant, the enrolment
    first), and counts if that overlaps the period."""
    s, e = span.bounds
    tc = tier_changes.c
    order = (tc.changed_at, sa.case((tc.from_tier.is_(None), 0), else_=1))
    spans = (
        sa.select(
            tc.member_id,
            tc.to_tier.label("tier"),
            sa.func.lead(tc.changed_at).over(partition_by=tc.member_id, order_by=order).label("until"),
        )
        .where(tc.changed_at < e)
        .subquery("tier_spans")
    )
    return (
        sa.select(spans.c.member_id, spans.c.tier).where(sa.or_(spans.c.until.is_(None), spans.c.until > s)).distinct()
    )


def held(span: Span) -> sa.Subquery:
    return held_query(span).subquery("held")


HELD_MEASURES = ("members", "profiles", "products", "multi_product", "aum_members", "aum_fen")


@dataclass(frozen=True)
class Held:
    """Who held which tier in one period (:func:`held_query`), summed: per tier and over all
    tiers (``*``, each member once) the members and their profiles' figures
    (:data:`HELD_MEASURES`); and the members who held more than one tier, with those tiers."""

    by_tier: dict[str, dict[str, int]]
    changers: dict[str, set[str]]


def _profile_figures() -> list[tuple[str, Any]]:
    """Each of :data:`HELD_MEASURES` as the figure one member adds (their profile's, if any)."""
    mp = member_profiles.c
    return [
        ("members", sa.literal(1)),
        ("profiles", sa.case((mp.member_id.is_not(None), 1), else_=0)),
        ("products", products_held(mp.products_held)),
        ("multi_product", sa.case((products_held(mp.products_held) >= 2, 1), else_=0)),
        ("aum_members", sa.case((mp.aum.is_not(None), 1), else_=0)),
        ("aum_fen", sa.func.coalesce(mp.aum, 0)),
    ]


def products_held(column: Any) -> sa.ColumnElement[int]:
    """How many products a ``,a,b,``-style list names (0 for none or NULL)."""
    return sa.case(
        (sa.func.coalesce(sa.func.length(column), 0) <= 1, 0),
        else_=sa.func.length(column) - sa.func.length(sa.func.replace(column, ",", "")) - 1,
    )


def held_in(conn: Connection, spans: Sequence[Span]) -> list[Held]:
    """:class:`Held` for each of ``spans`` (of one kind, in order), in one pass over the tier history.

    Each tier change is in force from its moment to the next change's and so covers a run of
    consecutive periods; the runs of one member and tier are merged, and every figure of a period
    is the running sum of the runs starting minus those ended before it. A member holds more than
    one tier in a period only if a change other than their first falls strictly inside it."""
    if not spans:
        return []
    period = scratch(
        conn,
        "analytics_periods",
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("s", UTCDateTime, nullable=False),
        sa.Column("e", UTCDateTime, nullable=False),
    )
    conn.execute(period.insert(), [{"idx": i, "s": sp.bounds.start, "e": sp.bounds.end} for i, sp in enumerate(spans)])
    runs = _tier_runs(conn, period, spans[-1].bounds.end, len(spans) - 1)
    # One more slot than periods: for the runs that end with the last period.
    moves: dict[str, list[dict[str, int]]] = defaultdict(
        lambda: [dict.fromkeys(HELD_MEASURES, 0) for _ in range(len(spans) + 1)]
    )
    for r in _run_deltas(conn, runs):
        for name in HELD_MEASURES:
            moves[r.tier][r.idx][name] += int(getattr(r, name))
    out = [Held({ALL: dict.fromkeys(HELD_MEASURES, 0)}, {}) for _ in spans]
    for tier, deltas in moves.items():
        running = dict.fromkeys(HELD_MEASURES, 0)
        for i, delta in enumerate(deltas[: len(spans)]):
            running = {name: running[name] + delta[name] for name in HELD_MEASURES}
            if running["members"] or tier == ALL:
                out[i].by_tier[tier] = dict(running)
    tiers_of: dict[tuple[int, str], set[str]] = defaultdict(set)
    for idx, member_id, tier in conn.execute(_changers(runs, period)):
        tiers_of[(idx, member_id)].add(tier)
    for (idx, member_id), tiers in tiers_of.items():
        if len(tiers) > 1:
            out[idx].changers[member_id] = tiers
    runs.drop(conn)
    period.drop(conn)
    return out


def _tier_runs(conn: Connection, period: sa.Table, end: dt.datetime, last: int) -> sa.Table:
    """Each tier change before ``end`` with the periods it is in force in, ``first`` to ``last``
    (``first > last`` when none), written to a temporary table."""
    tc, p = tier_changes.c, period.c
    order = (tc.changed_at, sa.case((tc.from_tier.is_(None), 0), else_=1))
    changes = (
        sa.select(
            tc.member_id,
            tc.to_tier.label("tier"),
            tc.changed_at.label("since"),
            sa.func.lead(tc.changed_at).over(partition_by=tc.member_id, order_by=order).label("until"),
            (sa.func.row_number().over(partition_by=tc.member_id, order_by=order) > 1).label("later"),
        )
        .where(tc.changed_at < end)
        .subquery("changes")
    )
    c = changes.c
    first = sa.select(p.idx).where(p.e > c.since).order_by(p.e).limit(1).scalar_subquery()
    last_before = sa.select(p.idx).where(p.s < c.until).order_by(p.s.desc()).limit(1).scalar_subquery()
    runs = scratch(
        conn,
        "analytics_runs",
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.Column("until", UTCDateTime),
        sa.Column("later", sa.Boolean, nullable=False),
        sa.Column("first", sa.Integer),
        sa.Column("last", sa.Integer),
    )
    columns = ["member_id", "tier", "since", "until", "later", "first", "last"]
    last_held = sa.case((c.until.is_(None), last), else_=last_before)
    conn.execute(
        runs.insert().from_select(columns, sa.select(c.member_id, c.tier, c.since, c.until, c.later, first, last_held))
    )
    sa.Index("ix_analytics_runs_member_id", runs.c.member_id).create(conn)
    return runs


def _run_deltas(conn: Connection, runs: sa.Table) -> list[Any]:
    """Per tier (and ``*``) and period index, the figures of the merged runs starting there less
    those of the runs that ended just before: running sums of these are the periods' figures."""
    r = runs.c
    held = r.first <= r.last
    # The runs of one member and tier, merged where they share a period (a member who left a
    # tier and came back within one period is counted in it once).
    reached = sa.func.max(r.last).over(partition_by=(r.member_id, r.tier), order_by=(r.first, r.last), rows=(None, -1))
    marked = (
        sa.select(r.member_id, r.tier, r.first, r.last, sa.case((r.first <= reached, 0), else_=1).label("fresh"))
        .where(held)
        .subquery("marked")
    )
    mk = marked.c
    numbered = sa.select(
        mk.member_id,
        mk.tier,
        mk.first,
        mk.last,
        sa.func.sum(mk.fresh).over(partition_by=(mk.member_id, mk.tier), order_by=(mk.first, mk.last)).label("run"),
    ).subquery("numbered")
    n = numbered.c
    by_tier = sa.select(
        n.member_id, n.tier, sa.func.min(n.first).label("first"), sa.func.max(n.last).label("last")
    ).group_by(n.member_id, n.tier, n.run)
    # A member's changes follow one another, so the periods they held any tier in are one run.
    any_tier = (
        sa.select(r.member_id, sa.literal(ALL).label("tier"), sa.func.min(r.first), sa.func.max(r.last))
        .where(held)
        .group_by(r.member_id)
    )
    merged = sa.union_all(by_tier, any_tier).subquery("merged")
    m = merged.c
    figures = _profile_figures()
    table = scratch(
        conn,
        "analytics_held_runs",
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("first", sa.Integer, nullable=False),
        sa.Column("last", sa.Integer, nullable=False),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name, _ in figures),
    )
    conn.execute(
        table.insert().from_select(
            ["tier", "first", "last", *(name for name, _ in figures)],
            sa.select(m.tier, m.first, m.last, *(value for _, value in figures)).select_from(
                merged.outerjoin(member_profiles, member_profiles.c.member_id == m.member_id)
            ),
        )
    )
    t = table.c
    edges = [
        sa.select(
            t.tier, idx.label("idx"), *(sa.func.sum(t[name] * sign).label(name) for name in HELD_MEASURES)
        ).group_by(t.tier, idx)
        for idx, sign in ((t.first, 1), (t.last + 1, -1))
    ]
    rows = list(conn.execute(sa.union_all(*edges)))
    table.drop(conn)
    return rows


def _changers(runs: sa.Table, period: sa.Table) -> sa.Select[Any]:
    """``(period index, member, tier)`` of every member with a later change strictly inside a
    period, for each tier they held in it."""
    r, p = runs.c, period.c
    inside = (
        sa.select(r.member_id, p.idx)
        .join(period, sa.and_(r.since > p.s, r.since < p.e))
        .where(r.later)
        .distinct()
        .subquery("inside")
    )
    other = runs.alias("other")
    o = other.c
    return (
        sa.select(inside.c.idx, inside.c.member_id, o.tier)
        .join(period, p.idx == inside.c.idx)
        .join(other, o.member_id == inside.c.member_id)
        .where(o.since < p.e, sa.or_(o.until.is_(None), o.until > p.s))
        .distinct()
    )


def in_span(column: Any, span: Span) -> sa.ColumnElement[bool]:
    return sa.and_(column >= span.bounds.start, column < span.bounds.end)


def _by_tier_and_all(conn: Connection, rows: sa.Subquery, *measures: tuple[str, Any]) -> dict[str, dict[str, int]]:
    """``measures`` (name, aggregate over ``rows``) grouped by ``rows.tier`` and over all rows."""
    out: dict[str, dict[str, int]] = {}
    cols = [agg.label(name) for name, agg in measures]
    for r in conn.execute(sa.select(rows.c.tier, *cols).group_by(rows.c.tier)):
        out[r.tier] = {name: int(getattr(r, name) or 0) for name, _ in measures}
    total = conn.execute(sa.select(*cols)).one()
    out[ALL] = {name: int(getattr(total, name) or 0) for name, _ in measures}
    return out


def _active(span: Span) -> sa.Subquery:
    t = transactions.c
    return (
        sa.select(t.member_id, tier_at(t.member_id, t.occurred_at).label("tier"))
        .where(in_span(t.occurred_at, span))
        .distinct()
        .subquery("active")
    )


def tier_measures(conn: Connection, span: Span, zone: dt.tzinfo, held: Held) -> dict[str, dict[str, Any]]:
    """Per tier (and ``*``): every measure of :data:`TIER_MEASURES` and the tier migrations."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(TIER_MEASURES, 0))

    def merge(found: dict[str, dict[str, int]]) -> None:
        for tier, values in found.items():
            out[tier].update(values)

    merge(held.by_tier)
    active = _active(span)
    merge(_by_tier_and_all(conn, active, ("active", sa.func.count(sa.distinct(active.c.member_id)))))

    # Points earned (issued to members), burned (captured to ``redeemed:*``), expired.
    p, a = postings.c, accounts.c
    moves = (
        sa.select(tier_at(p.member_id, p.posted_at).label("tier"), a.kind, p.amount)
        .join(accounts, a.code == p.account)
        .where(in_span(p.posted_at, span), a.kind.in_(("issued", "redeemed", "expired")))
        .subquery("moves")
    )
    mv = moves.c
    merge(
        _by_tier_and_all(
            conn,
            moves,
            ("earned", sa.func.sum(sa.case((sa.and_(mv.kind == "issued", mv.amount < 0), -mv.amount), else_=0))),
            ("burned", sa.func.sum(sa.case((mv.kind == "redeemed", mv.amount), else_=0))),
            ("expired", sa.func.sum(sa.case((mv.kind == "expired", mv.amount), else_=0))),
        )
    )

    # Retention: members active in the previous period, by their tier at this one's start.
    before = previous(span, zone)
    t = transactions.c
    was_active = sa.select(t.member_id).where(in_span(t.occurred_at, before)).distinct().subquery("was_active")
    still = sa.exists().where(t.member_id == was_active.c.member_id, in_span(t.occurred_at, span))
    base = sa.select(
        was_active.c.member_id,
        tier_at(was_active.c.member_id, span.bounds.start).label("tier"),
        sa.case((still, 1), else_=0).label("kept"),
    ).subquery("base")
    merge(_by_tier_and_all(conn, base, ("previously_active", sa.func.count()), ("retained", sa.func.sum(base.c.kept))))

    lc = lifecycle_changes.c
    stages = (
        sa.select(tier_at(lc.member_id, lc.changed_at).label("tier"), lc.to_stage)
        .where(in_span(lc.changed_at, span), lc.to_stage.in_(("decline", "win_back")))
        .subquery("stages")
    )
    merge(
        _by_tier_and_all(
            conn,
            stages,
            ("entering_decline", sa.func.sum(sa.case((stages.c.to_stage == "decline", 1), else_=0))),
            ("entering_win_back", sa.func.sum(sa.case((stages.c.to_stage == "win_back", 1), else_=0))),
        )
    )

    fb = feedback.c
    answers = (
        sa.select(tier_at(fb.member_id, fb.answered_at).label("tier"), fb.score)
        .where(in_span(fb.answered_at, span))
        .subquery("answers")
    )
    merge(_by_tier_and_all(conn, answers, *_nps_measures(answers.c.score)))

    tc = tier_changes.c
    moves_ = conn.execute(
        sa.select(tc.from_tier, tc.to_tier, sa.func.count().label("n"))
        .where(in_span(tc.changed_at, span), tc.from_tier.is_not(None), tc.from_tier != tc.to_tier)
        .group_by(tc.from_tier, tc.to_tier)
        .order_by(tc.from_tier, tc.to_tier)
    )
    migrations: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in moves_:
        item = {"from": r.from_tier, "to": r.to_tier, "members": int(r.n)}
        migrations[r.from_tier].append(item)
        migrations[ALL].append(item)
    for tier in out:
        out[tier]["migrations"] = migrations.get(tier, [])
    return dict(out)


def _nps_measures(score: Any) -> list[tuple[str, Any]]:
    return [
        ("answers", sa.func.count()),
        ("promoters", sa.func.sum(sa.case((score >= PROMOTER, 1), else_=0))),
        ("detractors", sa.func.sum(sa.case((score <= DETRACTOR, 1), else_=0))),
    ]


def _grouped(conn: Connection, rows: sa.Subquery, *measures: tuple[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    """``measures`` over ``rows`` by (tier, benefit), by tier, by benefit and over all."""
    c = rows.c
    cols = [agg.label(name) for name, agg in measures]
    out: dict[tuple[str, str], dict[str, int]] = {}
    for keys in ((c.tier, c.benefit_code), (c.tier,), (c.benefit_code,), ()):
        q = sa.select(*keys, *cols)
        if keys:
            q = q.group_by(*keys)
        for r in conn.execute(q):
            tier = r.tier if "tier" in r._fields else ALL
            code = r.benefit_code if "benefit_code" in r._fields else ALL
            values = {name: int(getattr(r, name) or 0) for name, _ in measures}
            if keys or values.get(measures[0][0]):
                out[(tier, code)] = values
    return out


def benefit_measures(
    conn: Connection,
    span: Span,
    zone: dt.tzinfo,
    tiers: list[str],
    members_by_tier: dict[str, int],
    versions: dict[str, list[catalogue.Version]],
    changers: dict[str, set[str]],
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (tier, benefit), with ``*`` totals: every measure of :data:`BENEFIT_MEASURES`, the
    cost by funding source and the refusals by reason."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(BENEFIT_MEASURES, 0), "cost_by_funding": {}, "refusals": {}}
    )
    offers = catalogue.offers(versions, tiers, span.bounds)

    # Eligible: members of the tier while the benefit was open to it.
    for (tier, code), offer in offers.items():
        eligible = members_by_tier.get(tier, 0)
        out[(tier, code)]["eligible"] = eligible
        if offer.entitlement:
            quota = int(offer.entitlement["quota"]) * overlapping(offer.entitlement["period"], span, zone)
            out[(tier, code)]["quota_granted"] = eligible * quota

    # Over all tiers each member once: the per-tier counts less the extra tiers of the few
    # members who held more than one this period.
    def once(open_tiers: set[str]) -> int:
        total = sum(members_by_tier.get(t, 0) for t in open_tiers)
        return total - sum(max(len(ts & open_tiers) - 1, 0) for ts in changers.values())

    for code in {c for _, c in offers}:
        out[(ALL, code)]["eligible"] = once({t for t, c in offers if c == code})
    for tier in {t for t, _ in offers}:
        out[(tier, ALL)]["eligible"] = members_by_tier.get(tier, 0)
    if offers:
        out[(ALL, ALL)]["eligible"] = once({t for t, _ in offers})
    for tier, code in offers:
        for key in ((tier, ALL), (ALL, code), (ALL, ALL)):
            out[key]["quota_granted"] += out[(tier, code)]["quota_granted"]

    rd, costs = redemptions.c, catalogue.cost_table(versions)
    used = (
        sa.select(
            rd.member_id,
            tier_at(rd.member_id, rd.created_at).label("tier"),
            rd.benefit_code,
            rd.quantity,
            rd.points,
            rd.entitlement,
            (rd.quantity * costs.c.unit_cost).label("cost"),
            costs.c.funding_source,
        )
        .join(costs, sa.and_(costs.c.code == rd.benefit_code, costs.c.version == rd.benefit_version))
        .where(in_span(rd.created_at, span), rd.status.in_(LIVE))
        .subquery("used")
    )
    u = used.c
    found = _grouped(
        conn,
        used,
        ("redemptions", sa.func.count()),
        ("redeemers", sa.func.count(sa.distinct(u.member_id))),
        ("units", sa.func.sum(u.quantity)),
        ("points", sa.func.sum(u.points)),
        ("cost_fen", sa.func.sum(u.cost)),
        ("entitlement_units", sa.func.sum(sa.case((u.entitlement, u.quantity), else_=0))),
    )
    for key, values in found.items():
        out[key].update(values)
    funded = sa.select(u.tier, u.benefit_code, u.funding_source, sa.func.sum(u.cost).label("fen")).group_by(
        u.tier, u.benefit_code, u.funding_source
    )
    for row in conn.execute(funded):
        for key in ((row.tier, row.benefit_code), (row.tier, ALL), (ALL, row.benefit_code), (ALL, ALL)):
            by = out[key]["cost_by_funding"]
            by[row.funding_source] = by.get(row.funding_source, 0) + int(row.fen)

    rf = redemption_refusals.c
    refused = (
        sa.select(tier_at(rf.member_id, rf.refused_at).label("tier"), rf.benefit_code, rf.reason, rf.quantity)
        .where(in_span(rf.refused_at, span))
        .subquery("refused")
    )
    q = sa.select(
        refused.c.tier,
        refused.c.benefit_code,
        refused.c.reason,
        sa.func.count().label("requests"),
        sa.func.sum(refused.c.quantity).label("units"),
    ).group_by(refused.c.tier, refused.c.benefit_code, refused.c.reason)
    for row in conn.execute(q):
        for key in ((row.tier, row.benefit_code), (row.tier, ALL), (ALL, row.benefit_code), (ALL, ALL)):
            cell = out[key]["refusals"].setdefault(row.reason, {"requests": 0, "units": 0})
            cell["requests"] += int(row.requests)
            cell["units"] += int(row.units)

    fb = feedback.c
    answers = (
        sa.select(tier_at(fb.member_id, fb.answered_at).label("tier"), fb.benefit_code, fb.score)
        .where(in_span(fb.answered_at, span), fb.benefit_code.is_not(None))
        .subquery("answers")
    )
    for key, values in _grouped(conn, answers, *_nps_measures(answers.c.score)).items():
        out[key].update(values)
    return dict(out)


def compute(
    conn: Connection, span: Span, *, zone: dt.tzinfo, tiers: list[str], held: Held | None = None
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """The raw measures of ``span`` from the raw tables: per tier, and per (tier, benefit).
    ``held`` is :func:`held_in` of the span where the caller computed it with other periods'."""
    if held is None:
        (held,) = held_in(conn, [span])
    by_tier = tier_measures(conn, span, zone, held)
    all_tiers = list(dict.fromkeys([*tiers, *(t for t in by_tier if t != ALL)]))
    for tier in all_tiers:
        by_tier.setdefault(tier, {**dict.fromkeys(TIER_MEASURES, 0), "migrations": []})
    members_by_tier = {t: v["members"] for t, v in by_tier.items()}
    versions = catalogue.versions(conn)
    by_benefit = benefit_measures(conn, span, zone, all_tiers, members_by_tier, versions, held.changers)
    return by_tier, by_benefit


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
