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
from collections import defaultdict
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.accrual.context import MemberHistory
from loyalty.calendar import iso
from loyalty.ledger.models import point_lots
from loyalty.records.models import member_profiles, members, transactions
from rules import Programme, evaluate

FETCH = 5_000


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
            m.tier,
            member_profiles.c.products_held,
        )
        .join(members, m.member_id == t.member_id)
        .outerjoin(member_profiles, member_profiles.c.member_id == t.member_id)
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
            member_id, state = (
                row.member_id,
                MemberHistory(row.birth_date, row.enrolled_at, row.tier, row.products_held),
            )
        assert state is not None
        if row.occurred_at >= start:
            facts, used = state.facts(row, candidate)
            awards = evaluate(candidate, "transaction", facts, used)
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
            facts, used = state.facts(row, candidate)
            state.book(row, candidate, evaluate(candidate, "transaction", facts, used))
    actual_by_rule = _actual_by_rule(conn, start, end)
    delta = totals["candidate"] - totals["actual"]
    return {
        "candidate_version": candidate.version,
        "from": iso(start),
        "to": iso(end),
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
