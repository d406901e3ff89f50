"""The member's side of a rule evaluation: who they are and what they have done.

A booking reads it once it holds the member's row lock (:func:`read_for_booking`), so
that two transactions of one member racing each other still see each other's counts
and cap usage.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.errors import UnknownMember
from loyalty.ledger.models import member_accounts, point_lots
from loyalty.records.models import member_profiles, members, transactions
from loyalty.tiers.service import STATE_COLUMNS, MemberState, TierInputs, state_of
from loyalty.tiers.sql import Window, tier_parts
from rules import Award, Programme, Usage
from rules.evaluate import compiled
from rules.tiers import Ladder


def member_facts(
    birth: dt.date | None,
    enrolled_at: dt.datetime,
    moment: dt.datetime,
    zone: dt.tzinfo,
    *,
    tier: str,
    products: str | None = None,
) -> dict[str, Any]:
    """Facts about the member that do not depend on their transactions.

    ``products`` is the stored form of the products held (``,deposit,wealth,``)."""
    local_day = calendar.local_date(moment, zone)
    return {
        "tier": tier,
        "age": calendar.age_on(birth, local_day),
        "birthday_month": birth is not None and birth.month == local_day.month,
        "enrolled_days": max(0, calendar.days_between(enrolled_at, moment, zone)),
        "products_held": [p for p in (products or "").split(",") if p],
    }


def _member_query() -> sa.Select[Any]:
    """The member's profile and transaction counts, by bound parameters.

    Built once: a statement object reused across requests keeps its cache key,
    so SQLAlchemy neither rebuilds nor recompiles it on the booking path."""
    t, ma, m = transactions.c, member_accounts.c, members.c
    mine = t.member_id == sa.bindparam("member_id")
    when = sa.bindparam("moment", type_=t.occurred_at.type)
    month_count = sa.select(sa.func.count()).where(
        mine,
        t.occurred_at >= sa.bindparam("month0", type_=t.occurred_at.type),
        t.occurred_at < sa.bindparam("month1", type_=t.occurred_at.type),
    )
    # EXISTS, not count(): it stops at the first match however long the history.
    seen_type = sa.exists().where(mine, t.type == sa.bindparam("txn_type"))
    last_at = sa.select(sa.func.max(t.occurred_at)).where(mine, t.occurred_at <= when)
    return (
        sa.select(
            m.birth_date,
            m.enrolled_at,
            *STATE_COLUMNS,
            member_profiles.c.products_held,
            month_count.scalar_subquery().label("month_count"),
            seen_type.label("seen_type"),
            last_at.scalar_subquery().label("last_at"),
        )
        .select_from(
            member_accounts.join(members, m.member_id == ma.member_id).outerjoin(
                member_profiles, member_profiles.c.member_id == ma.member_id
            )
        )
        .where(ma.member_id == sa.bindparam("member_id"))
    )


MEMBER_FACTS = _member_query()


def read_facts(
    conn: Connection,
    member_id: str,
    *,
    txn_type: str,
    moment: dt.datetime,
    programme: Programme,
) -> tuple[dict[str, Any], MemberState]:
    """The facts rules may test about a transaction of ``txn_type`` at ``moment``, and the
    member's tier and lifecycle state, without a lock (a simulation). Raises :class:`UnknownMember`."""
    month0, month1 = calendar.month(moment, programme.zone)
    params = {"member_id": member_id, "txn_type": txn_type, "moment": moment, "month0": month0, "month1": month1}
    row = conn.execute(MEMBER_FACTS, params).first()
    if row is None:
        raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
    return _facts_of(row, moment, programme), state_of(row)


def _facts_of(row: Any, moment: dt.datetime, programme: Programme) -> dict[str, Any]:
    facts = member_facts(
        row.birth_date, aware(row.enrolled_at), moment, programme.zone, tier=row.tier, products=row.products_held
    )
    last = aware(row.last_at)
    facts.update(
        transactions_this_month=int(row.month_count) + 1,
        first_of_type=not row.seen_type,
        days_since_last_transaction=(
            None if last is None else max(0, calendar.days_between(last, moment, programme.zone))
        ),
    )
    return facts


@dataclass(frozen=True)
class Booking:
    """What a booking reads of the member, in one statement, under the member's lock."""

    #: the facts rules may test
    facts: dict[str, Any]
    state: MemberState
    #: points earned per rule in the transaction's local day and month, when a rule has caps
    used: Usage | None
    #: the tier metrics before the booking; ``None`` when nothing can move the tier (pinned, or the top)
    tier_inputs: TierInputs | None


#: Separates rules in the usage text; rule ids are ``[a-z0-9_-]``.
_RULE_SEP, _FIELD_SEP = ";", ":"


@functools.lru_cache(maxsize=32)
def _booking_query(ladder: Ladder, with_usage: bool) -> sa.Select[Any]:
    """:data:`MEMBER_FACTS` with the cap usage (as text) and the tier metrics beside it: the one read
    of an accrual, made once the member is locked (by the claim of the transaction id: a statement
    that waited for the lock itself would read with the snapshot it started with). The tier metrics
    are skipped by the database itself (a ``CASE``) for a member whose tier no transaction can move.
    Built once per ladder, so it keeps its cache key."""
    m = members.c
    skip_tier = sa.or_(
        sa.and_(m.override_tier.is_not(None), m.override_until > sa.bindparam("now", type_=m.override_until.type)),
        m.tier == sa.bindparam("top_tier"),
    )
    parts = tier_parts(ladder)
    columns: list[Any] = [sa.case((skip_tier, sa.null()), else_=part).label(name) for name, part in parts.items()]
    if with_usage:
        u = USAGE.subquery()
        line = u.c.rule_id + _FIELD_SEP + sa.cast(u.c.month, sa.String) + _FIELD_SEP + sa.cast(u.c.day, sa.String)
        columns.append(sa.select(sa.func.aggregate_strings(line, _RULE_SEP)).scalar_subquery().label("usage"))
    else:
        columns.append(sa.null().label("usage"))
    return MEMBER_FACTS.add_columns(*columns)


def read_for_booking(
    conn: Connection,
    member_id: str,
    *,
    txn_type: str,
    moment: dt.datetime,
    programme: Programme,
    current: Programme,
    now: dt.datetime,
) -> Booking:
    """Read, in one statement, what booking a transaction of ``txn_type`` at ``moment`` under
    ``programme`` needs, once the caller holds the member's lock: the facts for the rules, the cap usage, the tier and
    lifecycle state, and the tier metrics under ``current`` (the programme in force ``now``).
    Raises :class:`UnknownMember`."""
    zone = programme.zone
    (day0, day1), (month0, month1) = calendar.day(moment, zone), calendar.month(moment, zone)
    ladder = current.ladder
    window = Window.at(ladder, now, current.zone)
    params = {
        "member_id": member_id,
        "txn_type": txn_type,
        "moment": moment,
        "month0": month0,
        "month1": month1,
        "day0": day0,
        "day1": day1,
        "now": now,
        "top_tier": ladder.tiers[0].code if ladder.tiers else "",
        "as_of": window.as_of,
        "qualifying_since": window.qualifying_since,
        "activity_since": window.activity_since,
    }
    with_usage = compiled(programme).needs_usage
    row = conn.execute(_booking_query(ladder, with_usage), params).first()
    if row is None:
        raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
    used = None
    if with_usage:
        day: dict[str, int] = {}
        month: dict[str, int] = {}
        for line in (row.usage or "").split(_RULE_SEP) if row.usage else ():
            rule_id, in_month, in_day = line.rsplit(_FIELD_SEP, 2)
            month[rule_id] = int(in_month)
            if int(in_day):
                day[rule_id] = int(in_day)
        used = Usage(day=day, month=month)
    inputs = None if row.earned is None else TierInputs.of(row, window)
    return Booking(_facts_of(row, moment, programme), state_of(row), used, inputs)


def aware(value: Any) -> Any:
    """An aware UTC datetime from what a driver returned."""
    # Scalar subqueries bypass the column type, so SQLite hands back text or naive values.
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _usage_query() -> sa.Select[Any]:
    pl = point_lots.c
    stamp = pl.earned_at.type
    in_day = sa.and_(
        pl.earned_at >= sa.bindparam("day0", type_=stamp), pl.earned_at < sa.bindparam("day1", type_=stamp)
    )
    return (
        sa.select(
            pl.rule_id,
            sa.func.sum(pl.original).label("month"),
            sa.func.sum(sa.case((in_day, pl.original), else_=0)).label("day"),
        )
        .where(
            pl.member_id == sa.bindparam("member_id"),
            pl.earned_at >= sa.bindparam("month0", type_=stamp),
            pl.earned_at < sa.bindparam("month1", type_=stamp),
        )
        .group_by(pl.rule_id)
    )


USAGE = _usage_query()


def usage(conn: Connection, member_id: str, *, moment: dt.datetime, programme: Programme) -> Usage:
    """Points the member earned per rule in the local day and month of ``moment`` (for caps)."""
    (day0, day1), (month0, month1) = calendar.day(moment, programme.zone), calendar.month(moment, programme.zone)
    rows = conn.execute(USAGE, {"member_id": member_id, "day0": day0, "day1": day1, "month0": month0, "month1": month1})
    day, month = {}, {}
    for r in rows:
        month[r.rule_id] = int(r.month)
        if r.day:
            day[r.rule_id] = int(r.day)
    return Usage(day=day, month=month)


#: The transaction's own facts, as attributes of a command or a stored row.
TRANSACTION_FACTS = ("type", "amount", "currency", "occurred_at", "channel", "mcc", "merchant")


class MemberHistory:
    """One member's facts kept in memory while many of their transactions pass
    (the importer, the backtest): the same facts :func:`read_for_booking` and
    :func:`usage` read from the database for one transaction."""

    def __init__(self, birth: dt.date | None, enrolled_at: dt.datetime, tier: str, products: str | None = None) -> None:
        self.birth = birth
        self.enrolled_at = enrolled_at
        self.tier = tier
        self.products = products
        self.types: set[str] = set()
        self.months: Counter[dt.datetime] = Counter()  # local month start -> transactions
        self.last: dt.datetime | None = None
        self.day_usage: dict[dt.datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.month_usage: dict[dt.datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def facts(self, txn: Any, programme: Programme) -> tuple[dict[str, Any], Usage]:
        """Facts and cap usage for ``txn`` (anything with the transaction's attributes)."""
        moment = txn.occurred_at
        day0, month0 = calendar.day(moment, programme.zone).start, calendar.month(moment, programme.zone).start
        facts = {name: getattr(txn, name) for name in TRANSACTION_FACTS}
        facts["amount"] = int(facts["amount"])
        facts.update(
            member_facts(self.birth, self.enrolled_at, moment, programme.zone, tier=self.tier, products=self.products)
        )
        facts.update(
            transactions_this_month=self.months[month0] + 1,
            first_of_type=txn.type not in self.types,
            days_since_last_transaction=(
                None if self.last is None else max(0, calendar.days_between(self.last, moment, programme.zone))
            ),
        )
        return facts, Usage(day=self.day_usage[day0], month=self.month_usage[month0])

    def record(self, occurred_at: dt.datetime, txn_type: str, zone: dt.tzinfo) -> None:
        """Count a transaction of the member's."""
        self.months[calendar.month(occurred_at, zone).start] += 1
        self.types.add(txn_type)
        if self.last is None or occurred_at > self.last:
            self.last = occurred_at

    def earned(self, rule_id: str, points: int, earned_at: dt.datetime, zone: dt.tzinfo) -> None:
        """Count points toward the rule's day and month usage."""
        day0, month0 = calendar.day(earned_at, zone).start, calendar.month(earned_at, zone).start
        self.day_usage[day0][rule_id] += points
        self.month_usage[month0][rule_id] += points

    def book(self, txn: Any, programme: Programme, awards: list[Award]) -> None:
        self.record(txn.occurred_at, txn.type, programme.zone)
        for a in awards:
            self.earned(a.rule_id, a.points, txn.occurred_at, programme.zone)
