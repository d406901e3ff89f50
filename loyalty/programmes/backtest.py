"""Backtest: replay stored transactions under a candidate programme, write nothing.

The transactions are streamed in (member, time) order with a server-side
cursor, so a year of history is never in memory at once; only one member's
running context (this month's count, types seen, last transaction, what the
candidate has awarded per rule in the current day and month) is kept, plus
the aggregates of the report. Transactions before ``start`` are read only to
build that context.

"Actual" is what was awarded when the transactions were booked (before any
refunds); "candidate" is what the candidate programme gives the same
transactions. A member's tier is the tier they have now.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.accrual.context import local_bounds, member_facts
from loyalty.accrual.models import transactions
from loyalty.ledger.models import point_lots
from loyalty.members.models import members
from rules import Programme, Usage, evaluate

FETCH = 5_000


class _Member:
    """One member's running context while their transactions stream past."""

    def __init__(self, birth: dt.date | None, enrolled_at: dt.datetime) -> None:
        self.birth = birth
        self.enrolled_at = enrolled_at
        self.types: set[str] = set()
        self.months: Counter[tuple[int, int]] = Counter()
        self.last: dt.datetime | None = None
        self.day_key: Any = None
        self.month_key: Any = None
        self.day: dict[str, int] = defaultdict(int)
        self.month: dict[str, int] = defaultdict(int)

    def facts(self, row: Any, programme: Programme) -> dict[str, Any]:
        local = row.occurred_at.astimezone(programme.zone)
        facts = member_facts(self.birth, self.enrolled_at, row.occurred_at, programme.zone)
        facts.update(
            type=row.type,
            amount=int(row.amount),
            currency=row.currency,
            channel=row.channel,
            mcc=row.mcc,
            merchant=row.merchant,
            occurred_at=row.occurred_at,
            transactions_this_month=self.months[(local.year, local.month)] + 1,
            first_of_type=row.type not in self.types,
            days_since_last_transaction=None if self.last is None else max(0, (row.occurred_at - self.last).days),
        )
        return facts

    def usage(self, row: Any, programme: Programme) -> Usage:
        day0, _, month0, _ = local_bounds(row.occurred_at, programme.zone)
        if self.month_key != month0:
            self.month_key, self.month = month0, defaultdict(int)
        if self.day_key != day0:
            self.day_key, self.day = day0, defaultdict(int)
        return Usage(day=self.day, month=self.month)

    def book(self, row: Any, programme: Programme, awards: list[Any]) -> None:
        local = row.occurred_at.astimezone(programme.zone)
        self.months[(local.year, local.month)] += 1
        self.types.add(row.type)
        if self.last is None or row.occurred_at > self.last:
            self.last = row.occurred_at
        for a in awards:
            self.day[a.rule_id] += a.points
            self.month[a.rule_id] += a.points


def run(
    conn: Connection,
    candidate: Programme,
    *,
    start: dt.datetime,
    end: dt.datetime,
    point_value_fen: Decimal,
    top: int = 10,
) -> dict[str, Any]:
    """Compare what ``candidate`` would have awarded in ``[start, end)`` with what was awarded."""
    t, m = transactions.c, members.c
    query = (
        sa.select(
            t.member_id,
            t.type,
            t.amount,
            t.currency,
            t.occurred_at,
            t.channel,
            t.mcc,
            t.merchant,
            t.points,
            m.birth_date,
            m.enrolled_at,
        )
        .join(members, m.member_id == t.member_id)
        .where(t.occurred_at < end)
        .order_by(t.member_id, t.occurred_at, t.transaction_id)
    )
    totals = {"transactions": 0, "actual": 0, "candidate": 0}
    by_rule: dict[str, int] = defaultdict(int)
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    by_tier: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    deltas: dict[str, list[int]] = {}
    member_id, state = None, None
    stream = conn.execution_options(stream_results=True, yield_per=FETCH).execute(query)
    for row in stream:
        if row.member_id != member_id:
            member_id, state = row.member_id, _Member(row.birth_date, row.enrolled_at)
        assert state is not None
        if row.occurred_at >= start:
            facts = state.facts(row, candidate)
            awards = evaluate(candidate, "transaction", facts, state.usage(row, candidate))
            new = sum(a.points for a in awards)
            old = int(row.points)
            totals["transactions"] += 1
            totals["actual"] += old
            totals["candidate"] += new
            for a in awards:
                by_rule[a.rule_id] += a.points
            for bucket in (by_type[row.type], by_tier[facts["tier"]]):
                bucket[0] += 1
                bucket[1] += old
                bucket[2] += new
            d = deltas.setdefault(row.member_id, [0, 0])
            d[0] += old
            d[1] += new
            state.book(row, candidate, awards)
        else:
            # History before the period: it shapes the context; count the candidate's
            # awards toward caps the way the candidate would have given them.
            facts = state.facts(row, candidate)
            state.book(row, candidate, evaluate(candidate, "transaction", facts, state.usage(row, candidate)))
    actual_by_rule = _actual_by_rule(conn, start, end)
    delta = totals["candidate"] - totals["actual"]
    return {
        "candidate_version": candidate.version,
        "from": _iso(start),
        "to": _iso(end),
        "transactions": totals["transactions"],
        "points": {"actual": totals["actual"], "candidate": totals["candidate"], "delta": delta},
        "liability_delta_cny": _cny(delta, point_value_fen),
        "point_value_fen": str(point_value_fen),
        "by_rule": [
            {
                "rule_id": r,
                "actual": actual_by_rule.get(r, 0),
                "candidate": by_rule.get(r, 0),
                "delta": by_rule.get(r, 0) - actual_by_rule.get(r, 0),
            }
            for r in sorted(set(by_rule) | set(actual_by_rule))
        ],
        "by_type": _buckets("type", by_type),
        "by_tier": _buckets("tier", by_tier),
        "most_affected": [
            {"member_id": mid, "actual": v[0], "candidate": v[1], "delta": v[1] - v[0]}
            for mid, v in heapq.nlargest(top, deltas.items(), key=lambda kv: (abs(kv[1][1] - kv[1][0]), kv[0]))
        ],
    }


def _actual_by_rule(conn: Connection, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    t, pl = transactions.c, point_lots.c
    rows = conn.execute(
        sa.select(pl.rule_id, sa.func.sum(pl.original))
        .select_from(transactions.join(point_lots, sa.and_(pl.member_id == t.member_id, pl.entry_id == t.entry_id)))
        .where(t.occurred_at >= start, t.occurred_at < end)
        .group_by(pl.rule_id)
    )
    return {rule: int(total) for rule, total in rows}


def _buckets(key: str, data: dict[str, list[int]]) -> list[dict[str, Any]]:
    return [
        {key: k, "transactions": v[0], "actual": v[1], "candidate": v[2], "delta": v[2] - v[1]}
        for k, v in sorted(data.items())
    ]


def _cny(points: int, point_value_fen: Decimal) -> str:
    """Points valued in CNY, to the fen, as a decimal string."""
    return str((Decimal(points) * point_value_fen / 100).quantize(Decimal("0.01")))


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
