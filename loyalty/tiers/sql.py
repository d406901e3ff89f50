"""Tier criteria as SQL: the member metrics of :mod:`rules.tiers`, computed for many members in one query.

:func:`metrics_query` gives one row per member with the metrics tier
criteria test; :func:`criterion` turns a criterion into a boolean SQL
expression over that row with the same meaning as
:func:`rules.tiers.matches` (a test on a missing value is false, and there
is no ``not``, so SQL's NULL logic agrees with Python's). A test proves the
two agree on random members.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from loyalty import calendar
from loyalty.ledger.models import point_lots
from loyalty.records.models import member_profiles, members, reversals, transactions
from rules.conditions import Condition
from rules.tiers import Ladder, Lifecycle, StageBounds, describe


@dataclass(frozen=True)
class Window:
    """The instants metrics are measured between, for one as-of moment."""

    as_of: dt.datetime
    #: the local date ages are computed on
    local_day: dt.date
    #: qualifying points earned after this count
    qualifying_since: dt.datetime
    #: transactions after this count as recent activity
    activity_since: dt.datetime

    @classmethod
    def at(cls, ladder: Ladder, as_of: dt.datetime, zone: dt.tzinfo) -> Window:
        return cls(
            as_of=as_of,
            local_day=calendar.local_date(as_of, zone),
            qualifying_since=calendar.add_months(as_of, -ladder.qualifying_months, zone),
            activity_since=calendar.add_days(as_of, -ladder.activity_days, zone),
        )


def stage_bounds(lifecycle: Lifecycle, as_of: dt.datetime, zone: dt.tzinfo) -> StageBounds:
    """The lifecycle's days and months counted back from ``as_of`` by the bank's calendar."""
    return StageBounds(
        activation_since=calendar.add_days(as_of, -lifecycle.activation_days, zone),
        decline_before=calendar.add_months(as_of, -lifecycle.decline_months, zone),
        churn_before=calendar.add_months(as_of, -lifecycle.churn_months, zone),
        maturity_before=calendar.add_months(as_of, -lifecycle.maturity_months, zone),
    )


#: A range of member ids: those greater than the first (``None``: from the first member)
#: up to and including the second (``None``: to the last).
KeyRange = tuple[str | None, str | None]


def in_range(column: Any, key_range: KeyRange | None) -> sa.ColumnElement[bool]:
    """``column`` (a member id) lies in ``key_range``; always true without a range."""
    after, upto = key_range or (None, None)
    return sa.and_(
        sa.true(),
        *([column > after] if after is not None else []),
        *([column <= upto] if upto is not None else []),
    )


def metrics_query(
    ladder: Ladder, window: Window, members_filter: Any, key_range: KeyRange | None = None
) -> sa.Subquery:
    """One row per member matching ``members_filter`` (a condition on ``members``) with
    its current tier state and every metric of :data:`rules.tiers.METRICS`.

    ``key_range``, when every member ``members_filter`` selects lies in it, is repeated
    on each table the metrics are read from, so that each is read through its
    member_id index over that range only. Without it PostgreSQL, which cannot
    carry a range from ``members`` over the joins, reads a job's chunk by hashing
    the whole of ``point_lots``, ``transactions`` and ``member_profiles``: every
    table once per chunk."""
    m, p, pl, r, t = members.c, member_profiles.c, point_lots.c, reversals.c, transactions.c
    chosen = sa.select(m.member_id).where(members_filter)
    earned = (
        sa.select(pl.member_id, sa.func.sum(pl.original).label("points"))
        .where(
            pl.member_id.in_(chosen),
            in_range(pl.member_id, key_range),
            pl.qualifying.is_(True),
            pl.earned_at > window.qualifying_since,
            pl.earned_at <= window.as_of,
        )
        .group_by(pl.member_id)
        .subquery("earned")
    )
    refunded = (
        sa.select(r.member_id, sa.func.sum(r.qualifying_points).label("points"))
        .where(
            r.member_id.in_(chosen),
            in_range(r.member_id, key_range),
            r.created_at > window.qualifying_since,
            r.created_at <= window.as_of,
        )
        .group_by(r.member_id)
        .subquery("refunded")
    )
    digital = sa.case((t.channel.in_(ladder.digital_channels), 1), else_=0)
    activity = (
        sa.select(
            t.member_id,
            sa.func.count().label("n"),
            sa.func.sum(digital).label("digital"),
        )
        .where(
            t.member_id.in_(chosen),
            in_range(t.member_id, key_range),
            t.occurred_at > window.activity_since,
            t.occurred_at <= window.as_of,
        )
        .group_by(t.member_id)
        .subquery("activity")
    )
    n = sa.func.coalesce(activity.c.n, 0)
    products = sa.func.coalesce(p.products_held, "")
    return (
        sa.select(
            m.member_id,
            m.tier,
            m.override_tier,
            m.override_until,
            m.birth_date,
            sa.func.coalesce(p.aum, 0).label("aum"),
            sa.func.coalesce(p.profit_contribution, 0).label("profit_contribution"),
            (sa.func.coalesce(earned.c.points, 0) - sa.func.coalesce(refunded.c.points, 0)).label("qualifying_points"),
            n.label("transactions_90d"),
            sa.case((n == 0, sa.null()), else_=activity.c.digital * 100 / n).label("digital_share"),
            products.label("products_held"),
            sa.case(
                (products == "", 0),
                else_=sa.func.length(products) - sa.func.length(sa.func.replace(products, ",", "")) - 1,
            ).label("product_count"),
        )
        .select_from(
            members.outerjoin(member_profiles, sa.and_(p.member_id == m.member_id, in_range(p.member_id, key_range)))
            .outerjoin(earned, earned.c.member_id == m.member_id)
            .outerjoin(refunded, refunded.c.member_id == m.member_id)
            .outerjoin(activity, activity.c.member_id == m.member_id)
        )
        .where(members_filter)
        .subquery("metrics")
    )


def criterion(c: Condition, row: Any, window: Window) -> sa.ColumnElement[bool]:
    """``c`` as a boolean SQL expression over the columns of :func:`metrics_query`."""
    if c.kind in ("all", "any"):
        parts = [criterion(ch, row, window) for ch in c.children]
        return sa.and_(*parts) if c.kind == "all" else sa.or_(*parts)
    var, op, value = c.var or "", c.op, c.value
    if var == "age":
        return _age(op or "", value, row.birth_date, window.local_day)
    if var == "products_held":  # contains
        return row.products_held.like(f"%,{value},%")
    col = row[var]
    match op:
        case "equals":
            return col == value  # type: ignore[no-any-return]
        case "not_equals":
            return col != value  # type: ignore[no-any-return]
        case "in":
            return col.in_(value)  # type: ignore[no-any-return]
        case "not_in":
            return col.not_in(value)  # type: ignore[no-any-return]
        case "gt":
            return col > value  # type: ignore[no-any-return]
        case "gte":
            return col >= value  # type: ignore[no-any-return]
        case "lt":
            return col < value  # type: ignore[no-any-return]
        case "lte":
            return col <= value  # type: ignore[no-any-return]
        case "between":
            return col.between(value[0], value[1])  # type: ignore[no-any-return]
    raise AssertionError(f"operator {op} is not allowed in tier criteria")


def _age(op: str, value: Any, birth: Any, day: dt.date) -> sa.ColumnElement[bool]:
    """A test on age as a test on the birth date: age >= n exactly when born on or before ``day`` less n years."""

    def at_least(n: int) -> sa.ColumnElement[bool]:
        return birth <= calendar.years_before(day, n)  # type: ignore[no-any-return]

    def below(n: int) -> sa.ColumnElement[bool]:
        return birth > calendar.years_before(day, n)  # type: ignore[no-any-return]

    def exactly(n: int) -> sa.ColumnElement[bool]:
        return sa.and_(at_least(n), below(n + 1))

    match op:
        case "gte":
            return at_least(value)
        case "gt":
            return at_least(value + 1)
        case "lt":
            return below(value)
        case "lte":
            return below(value + 1)
        case "between":
            return sa.and_(at_least(value[0]), below(value[1] + 1))
        case "equals":
            return exactly(value)
        case "not_equals":
            return sa.or_(below(value), at_least(value + 1))
        case "in":
            return sa.or_(*[exactly(v) for v in value])
        case "not_in":
            return sa.and_(*[sa.or_(below(v), at_least(v + 1)) for v in value])
    raise AssertionError(f"operator {op} is not allowed on age")


def qualification(ladder: Ladder, row: Any, window: Window) -> tuple[sa.ColumnElement[int], sa.ColumnElement[str]]:
    """The rank of the first tier each row qualifies for, and the criterion it met (as text)."""
    ranks, reasons = [], []
    for t in ladder.tiers:
        for alternative in t.alternatives:
            test = criterion(alternative, row, window)
            ranks.append((test, ladder.rank(t.code)))
            reasons.append((test, describe(alternative)))
    if not ranks:
        return sa.literal(0), sa.literal("the floor tier")
    return sa.case(*ranks, else_=0), sa.case(*reasons, else_="the floor tier")


def rank_of(ladder: Ladder, column: Any) -> sa.ColumnElement[int]:
    """A tier code column as its rank (unknown codes rank as the floor)."""
    return sa.case({code: ladder.rank(code) for code in ladder.codes}, value=column, else_=0)


def code_of(ladder: Ladder, rank: Any) -> sa.ColumnElement[str]:
    return sa.case({ladder.rank(code): code for code in ladder.codes}, value=rank, else_=ladder.floor)


def tier_parts(ladder: Ladder) -> dict[str, Any]:
    """The inputs of one member's tier metrics (``:member_id``) as scalar expressions over each
    table's member index, for a query that selects from ``members`` joined to ``member_profiles``:
    ``aum``, ``profit_contribution``, ``earned`` and ``refunded`` qualifying points, and ``recent``
    and ``digital`` transactions in the activity window. :func:`one_member_query` and the
    booking's read (:mod:`loyalty.accrual.context`) select them.

    Bound parameters: ``member_id``, ``as_of``, ``qualifying_since``, ``activity_since``."""
    m, p, pl, r, t = members.c, member_profiles.c, point_lots.c, reversals.c, transactions.c
    stamp = pl.earned_at.type
    member = sa.bindparam("member_id", type_=m.member_id.type)
    as_of = sa.bindparam("as_of", type_=stamp)
    qualifying_since = sa.bindparam("qualifying_since", type_=stamp)
    activity_since = sa.bindparam("activity_since", type_=stamp)
    earned = sa.select(sa.func.coalesce(sa.func.sum(pl.original), 0)).where(
        pl.member_id == member, pl.qualifying.is_(True), pl.earned_at > qualifying_since, pl.earned_at <= as_of
    )
    refunded = sa.select(sa.func.coalesce(sa.func.sum(r.qualifying_points), 0)).where(
        r.member_id == member, r.created_at > qualifying_since, r.created_at <= as_of
    )
    recent = sa.and_(t.member_id == member, t.occurred_at > activity_since, t.occurred_at <= as_of)
    return {
        "aum": sa.func.coalesce(p.aum, 0),
        "profit_contribution": sa.func.coalesce(p.profit_contribution, 0),
        "earned": earned.scalar_subquery(),
        "refunded": refunded.scalar_subquery(),
        "recent": sa.select(sa.func.count()).where(recent).scalar_subquery(),
        "digital": sa.select(sa.func.count()).where(recent, t.channel.in_(ladder.digital_channels)).scalar_subquery(),
    }


def one_member_query(ladder: Ladder) -> sa.Select[Any]:
    """The metrics of :func:`metrics_query` for one member (``:member_id``), as plain
    scalar subqueries over each table's member index (:func:`tier_parts`): the form a
    single member's reassessment runs, cheaper to plan and run than the grouped form
    built for many members.

    Bound parameters: ``member_id``, ``as_of``, ``qualifying_since``, ``activity_since``."""
    m, p = members.c, member_profiles.c
    parts = tier_parts(ladder)
    n = parts["recent"]
    products = sa.func.coalesce(p.products_held, "")
    return (
        sa.select(
            m.member_id,
            m.tier,
            m.birth_date,
            parts["aum"].label("aum"),
            parts["profit_contribution"].label("profit_contribution"),
            (parts["earned"] - parts["refunded"]).label("qualifying_points"),
            n.label("transactions_90d"),
            sa.case((n == 0, sa.null()), else_=parts["digital"] * 100 / n).label("digital_share"),
            products.label("products_held"),
            sa.case(
                (products == "", 0),
                else_=sa.func.length(products) - sa.func.length(sa.func.replace(products, ",", "")) - 1,
            ).label("product_count"),
        )
        .select_from(members.outerjoin(member_profiles, p.member_id == m.member_id))
        .where(m.member_id == sa.bindparam("member_id", type_=m.member_id.type))
    )
