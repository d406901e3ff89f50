"""The set-based lapse of many members' points (PostgreSQL's expiry path) writes exactly what the
member-by-member path writes: the same rows with the same values."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import journal_entries, lot_consumptions, member_accounts, point_lots, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from rules import Award
from tests.helpers import BASE
from tests.test_ledger import REDEEMED

pytestmark = pytest.mark.postgres_only

T0 = dt.datetime(2024, 1, 10, 4, 0, tzinfo=dt.UTC)
AS_OF = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)  # before the welcome points lapse
NOW = AS_OF + dt.timedelta(hours=2)


def award(points: int) -> Award:
    return Award("bonus-test", points, "bank", True, "test lot")


def build(conn: Any, n: int) -> list[str]:
    """``n`` members, each with several lots, some lapsed by AS_OF, some not; some lots partly
    spent by captured redemptions, some points held by pending holds, some members with nothing due."""
    ids = []
    for i in range(n):
        member_id = f"s{i:03d}"
        ids.append(member_id)
        members.enrol(conn, Enrolment(member_id), programme=BASE, now=T0)  # 500 points, lapsing after AS_OF
        for k in range(i % 5):
            earned = T0 + dt.timedelta(days=30 * k + i)
            # two of every three lots lapse by AS_OF (the last ones exactly at it)
            expires = AS_OF - dt.timedelta(days=(k % 3) * 7) if k % 3 != 2 else AS_OF + dt.timedelta(days=1)
            ledger.accrue(
                conn,
                member_id,
                [award(100 + 10 * k + i), award(7 + k)],
                kind="bonus",
                source_ref=f"b{k}",
                earned_at=earned,
                expires_at=expires,
                now=earned,
            )
        spend_at = T0 + dt.timedelta(days=200)
        if i % 3 == 0:  # a captured redemption takes the first-expiring lots, partly
            ledger.hold(conn, member_id, f"r{i}", 60 + i, capture_account=REDEEMED, now=spend_at)
            ledger.capture(conn, member_id, f"r{i}", now=spend_at)
        if i % 4 == 1:  # a pending hold: its points stay held through the lapse
            ledger.hold(conn, member_id, f"h{i}", 45 + i, capture_account=REDEEMED, now=spend_at)
    return ids


def snapshot(conn: Any) -> dict[str, Any]:
    """Every ledger row, an entry's id replaced by its member and seq (new ones are random), and
    so its hash, and the chain heads, by whether there is one (``verify`` recomputes them)."""
    je = journal_entries.c
    seq = {(r.member_id, r.id): r.seq for r in conn.execute(sa.select(je.member_id, je.id, je.seq))}

    def rows(table: sa.Table, *key: str) -> list[tuple[Any, ...]]:
        out = []
        for r in conn.execute(sa.select(table)).mappings():
            row = dict(r)
            for sealed in ("chain_hash", "chain_head"):
                if sealed in row:
                    row[sealed] = row[sealed] is not None
            if table is journal_entries:
                row["id"] = row["seq"]
            elif "entry_id" in row:
                row["entry_id"] = seq[(row["member_id"], row["entry_id"])]
            out.append(tuple(sorted(row.items())))
        return sorted(out)

    return {
        "accounts": rows(member_accounts),
        "entries": rows(journal_entries),
        "postings": rows(postings),
        "lots": rows(point_lots),
        "consumptions": rows(lot_consumptions),
    }


def normal(posted: dict[str, ledger.Posted]) -> dict[str, tuple[Any, ...]]:
    return {m: (p.seq, p.points, p.balance_after, p.held_after, p.lots) for m, p in posted.items()}


def test_the_set_based_lapse_writes_what_the_member_by_member_one_writes(runtime):
    with transaction(runtime.engine) as conn:
        ids = build(conn, 60)
        before = snapshot(conn)
        held_before = {r.member_id: r.held for r in conn.execute(sa.select(member_accounts))}
        pl = point_lots.c
        due = sa.and_(pl.expires_at <= AS_OF, pl.remaining > 0)
        due_points = dict(
            conn.execute(sa.select(pl.member_id, sa.func.sum(pl.remaining)).where(due).group_by(pl.member_id)).all()
        )
        assert 40 < len(due_points) < 60

        one_by_one = conn.begin_nested()
        each = {}
        for member_id in ids:
            posted = ledger.expire(conn, member_id, as_of=AS_OF, now=NOW)
            if posted is not None:
                each[member_id] = posted
        by_member = snapshot(conn)
        one_by_one.rollback()
        assert snapshot(conn) == before

        at_once = ledger.expire_members(conn, ids, as_of=AS_OF, now=NOW)
        assert snapshot(conn) == by_member
        assert normal(at_once) == normal(each)
        assert list(at_once) == sorted(at_once)

        # what it did: each member with lots due lost their remainders, and each lot due is now empty
        assert {m: -p.points for m, p in at_once.items()} == due_points
        assert conn.execute(sa.select(sa.func.count()).where(due)).scalar_one() == 0
        lapsed = sum(-p.points for p in at_once.values())
        assert lapsed == sum(lot["points"] for p in at_once.values() for lot in p.lots) > 0
        expired = sa.select(sa.func.sum(postings.c.amount)).where(postings.c.account == "expired")
        assert conn.execute(expired).scalar_one() == lapsed
        # held points stay held
        assert {r.member_id: r.held for r in conn.execute(sa.select(member_accounts))} == held_before
        assert any(held_before.values())
        outcomes = verify.run(conn)
        assert all(o.ok for o in outcomes), verify.report(outcomes)

        # a second run posts nothing
        settled = snapshot(conn)
        assert ledger.expire_members(conn, ids, as_of=AS_OF, now=NOW) == {}
        assert snapshot(conn) == settled
