"""Accrual: turn the bank's transactions and refunds into ledger entries.

Each transaction id and each reversal id posts at most once. The first
statement of every operation claims its key in ``idempotency_keys``; a
concurrent duplicate waits on that row and, once the first commits, finds
the key taken and replays the stored result.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.accrual import context
from loyalty.calendar import iso
from loyalty.errors import NotFound, UnknownMember, ValidationError
from loyalty.events.service import emit
from loyalty.idempotency import Result, claim_key, idempotency_keys, request_hash
from loyalty.ledger import service as ledger
from loyalty.ledger.models import member_accounts, point_lots
from loyalty.records.models import reversals, transactions
from loyalty.tiers import service as tiers
from rules import Award, Programme, evaluate


@dataclass(frozen=True)
class TransactionCommand:
    transaction_id: str
    member_id: str
    type: str
    amount: int
    currency: str
    occurred_at: dt.datetime
    channel: str | None = None
    mcc: str | None = None
    merchant: str | None = None

    def facts(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every value, and this is on the hot path.
        return {name: getattr(self, name) for name in TRANSACTION_FIELDS}


TRANSACTION_FIELDS = tuple(f.name for f in fields(TransactionCommand))


@dataclass(frozen=True)
class ReversalCommand:
    transaction_id: str
    reversal_id: str
    amount: int


INSERT_TRANSACTION = transactions.insert()
#: A claimed transaction key that will name no entry: the transaction earned nothing.
NO_ENTRY = (
    sa.update(idempotency_keys)
    .where(idempotency_keys.c.scope == "transaction", idempotency_keys.c.key == sa.bindparam("k"))
    .values(entry_id=None)
)


def record_transaction(
    conn: Connection,
    cmd: TransactionCommand,
    *,
    programme: Programme,
    now: dt.datetime,
    current: Programme | None = None,
) -> Result:
    """Book one bank transaction under ``programme`` (the version in force when
    it occurred): gather the member's facts, evaluate, post the awards, then
    bring the member's tier and lifecycle stage up to date under ``current``
    (the version in force now; ``programme`` if not given).

    A transaction that earns nothing is still recorded (for refunds, tiers and
    backtests) and counts as activity.
    """
    facts = cmd.facts()
    # The key first, with the member's lock: a replay (or a refused reuse) is answered from its record.
    # The entry id is made now and stored with the key; a transaction that turns out to earn
    # nothing clears it again (rare: a purchase below the first point, a type no rule rewards).
    entry_id: str | None = ledger.new_id()
    existing = claim_key(
        conn,
        "transaction",
        cmd.transaction_id,
        request_hash(facts),
        field="transaction_id",
        member_id=cmd.member_id,
        now=now,
        entry_id=entry_id,
        lock_member=True,
    )
    if existing is not None:
        return Result(transaction_body(conn, existing.member_id, cmd.transaction_id), replayed=True)
    current = current or programme
    booking = context.read_for_booking(
        conn,
        cmd.member_id,
        txn_type=cmd.type,
        moment=cmd.occurred_at,
        programme=programme,
        current=current,
        now=now,
    )
    member = booking.facts
    awards = evaluate(programme, "transaction", {**facts, **member}, booking.used)
    if not awards:
        conn.execute(NO_ENTRY, {"k": cmd.transaction_id})
        entry_id = None
    if awards:
        posted = ledger.accrue(
            conn,
            cmd.member_id,
            awards,
            kind="accrual",
            source_ref=cmd.transaction_id,
            earned_at=cmd.occurred_at,
            expires_at=ledger.lot_expiry(programme, cmd.occurred_at, member["tier"]),
            now=now,
            transaction_id=cmd.transaction_id,
            programme_version=programme.version,
            entry_id=entry_id,
        )
        balance = posted.total_after
    else:
        balance = touch(conn, cmd.member_id, now)
    points = sum(a.points for a in awards)
    conn.execute(
        INSERT_TRANSACTION,
        {
            **facts,
            "points": points,
            "entry_id": entry_id,
            "balance_after": balance,
            "programme_version": programme.version,
            "received_at": now,
        },
    )
    if awards:
        emit(
            conn,
            "points.accrued",
            member_id=cmd.member_id,
            payload={
                "transaction_id": cmd.transaction_id,
                "entry_id": entry_id,
                "points": points,
                "balance": balance,
                "rules": [a.rule_id for a in awards],
            },
            now=now,
        )
    known = None
    if booking.tier_inputs is not None:
        qualifying = sum(a.points for a in awards if a.qualifying)
        known = booking.tier_inputs.after(
            current.ladder, occurred_at=cmd.occurred_at, channel=cmd.channel, qualifying=qualifying
        )
    tiers.after_transaction(
        conn, cmd.member_id, booking.state, occurred_at=cmd.occurred_at, programme=current, now=now, known=known
    )
    return Result(
        _transaction_json(cmd, points, entry_id, balance, programme.version, awards),
        created=True,
        labels={"tier": str(member["tier"] or "unknown")},
    )


def touch(conn: Connection, member_id: str, now: dt.datetime) -> int:
    """Record activity without points; returns the member's balance, held points included
    (the points they own). Locks the member's row."""
    ma = member_accounts.c
    row = conn.execute(
        sa.update(member_accounts)
        .where(ma.member_id == member_id)
        .values(last_activity_at=now)
        .returning(ma.balance, ma.held)
    ).first()
    if row is None:
        raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
    return int(row.balance) + int(row.held)


def _transaction_json(
    cmd: Any, points: int, entry_id: str | None, balance: int, version: str, awards: list[Award]
) -> dict[str, Any]:
    return {
        "transaction_id": cmd.transaction_id,
        "member_id": cmd.member_id,
        "type": cmd.type,
        "amount": int(cmd.amount),
        "currency": cmd.currency,
        "occurred_at": iso(cmd.occurred_at),
        "points": points,
        "entry_id": entry_id,
        "programme_version": version,
        "awards": [award_json(a) for a in awards],
        "balance": balance,
    }


def award_json(a: Award) -> dict[str, Any]:
    """An award as the API shows it: the rule, the points, who pays, whether they count toward tier, why."""
    return {
        "rule_id": a.rule_id,
        "points": a.points,
        "funding_source": a.funding_source,
        "qualifying": a.qualifying,
        "reason": a.reason,
    }


def _body_query() -> sa.Select[Any]:
    t, pl = transactions.c, point_lots.c
    return (
        sa.select(transactions, pl.rule_id, pl.original, pl.funding_source, pl.qualifying, pl.reason)
        .select_from(
            transactions.outerjoin(point_lots, sa.and_(pl.member_id == t.member_id, pl.entry_id == t.entry_id))
        )
        .where(t.member_id == sa.bindparam("member_id"), t.transaction_id == sa.bindparam("transaction_id"))
        .order_by(pl.rule_id)
    )


#: A booked transaction with its lots (one row per award), in one statement.
TRANSACTION_BODY = _body_query()


def transaction_body(conn: Connection, member_id: str, transaction_id: str) -> dict[str, Any]:
    """The response a transaction got when it was first booked, rebuilt from the ledger."""
    rows = conn.execute(TRANSACTION_BODY, {"member_id": member_id, "transaction_id": transaction_id}).all()
    if not rows:
        raise sa.exc.NoResultFound(f"no transaction {transaction_id!r} for member {member_id!r}")
    row = rows[0]
    awards = [
        Award(r.rule_id, int(r.original), r.funding_source, r.qualifying, r.reason)
        for r in rows
        if r.rule_id is not None
    ]
    return _transaction_json(row, int(row.points), row.entry_id, int(row.balance_after), row.programme_version, awards)


def find_transaction_member(conn: Connection, transaction_id: str) -> str:
    """The member a transaction id belongs to, found through its idempotency key."""
    ik = idempotency_keys.c
    member_id = conn.execute(
        sa.select(ik.member_id).where(ik.scope == "transaction", ik.key == transaction_id)
    ).scalar()
    if member_id is None:
        raise NotFound(f"no transaction {transaction_id!r}", field="transaction_id")
    exists = conn.execute(
        sa.select(transactions.c.member_id).where(
            transactions.c.member_id == member_id, transactions.c.transaction_id == transaction_id
        )
    ).first()
    if exists is None:  # the key was claimed by a request still in flight
        raise NotFound(f"no transaction {transaction_id!r}", field="transaction_id")
    return str(member_id)


def reverse(conn: Connection, cmd: ReversalCommand, *, policy: str, now: dt.datetime) -> Result:
    """Refund all or part of a transaction: claw back points in proportion.

    Cumulative refunds never exceed the amount, and the points taken back
    never exceed what the transaction earned: after refunds of ``r`` out of
    ``amount`` the transaction has given back ``floor(points * r / amount)``.
    """
    member_id = find_transaction_member(conn, cmd.transaction_id)
    existing = claim_key(
        conn, "reversal", cmd.reversal_id, request_hash(asdict(cmd)), field="reversal_id", member_id=member_id, now=now
    )
    if existing is not None:
        return Result(reversal_body(conn, existing.member_id, cmd.reversal_id), replayed=True)
    t = transactions.c
    row = conn.execute(
        sa.update(transactions)
        .where(
            t.member_id == member_id,
            t.transaction_id == cmd.transaction_id,
            t.reversed_amount + cmd.amount <= t.amount,
        )
        .values(reversed_amount=t.reversed_amount + cmd.amount)
        .returning(t.amount, t.points, t.reversed_amount, t.entry_id)
    ).first()
    if row is None:
        left = conn.execute(
            sa.select(t.amount - t.reversed_amount).where(
                t.member_id == member_id, t.transaction_id == cmd.transaction_id
            )
        ).scalar_one()
        raise ValidationError.one("amount", f"exceeds the unrefunded amount of the transaction ({left})")
    # In Python, not SQL: points * amount can pass 2**63 (PostgreSQL refuses it,
    # SQLite silently falls back to floating point). The row is locked by now.
    points, amount, refunded = int(row.points), int(row.amount), int(row.reversed_amount)
    reversed_points = points * refunded // amount
    due = reversed_points - points * (refunded - cmd.amount) // amount
    conn.execute(
        sa.update(transactions)
        .where(t.member_id == member_id, t.transaction_id == cmd.transaction_id)
        .values(reversed_points=reversed_points)
    )
    posted, refunded_qualifying = None, 0
    if due > 0:
        pl = point_lots.c
        funding: dict[str, int] = defaultdict(int)
        qualifying = 0
        for r in conn.execute(
            sa.select(pl.funding_source, pl.qualifying, sa.func.sum(pl.original).label("original"))
            .where(pl.member_id == member_id, pl.entry_id == row.entry_id)
            .group_by(pl.funding_source, pl.qualifying)
        ):
            funding[r.funding_source] += int(r.original)
            qualifying += int(r.original) if r.qualifying else 0
        # The qualifying share of what is taken back stops counting toward tier.
        refunded_qualifying = qualifying * refunded // amount - qualifying * (refunded - cmd.amount) // amount
        posted = ledger.claw_back(
            conn,
            member_id,
            due,
            funding=funding,
            source_ref=cmd.reversal_id,
            related_entry_id=row.entry_id,
            policy=policy,
            now=now,
            transaction_id=cmd.transaction_id,
        )
    balance = posted.total_after if posted else touch(conn, member_id, now)
    taken = -posted.points if posted else 0
    conn.execute(
        reversals.insert(),
        {
            "member_id": member_id,
            "reversal_id": cmd.reversal_id,
            "transaction_id": cmd.transaction_id,
            "amount": cmd.amount,
            "points_due": due,
            "points": taken,
            "qualifying_points": refunded_qualifying,
            "entry_id": posted.entry_id if posted else None,
            "balance_after": balance,
            "created_at": now,
        },
    )
    if posted:
        conn.execute(
            sa.update(idempotency_keys)
            .where(idempotency_keys.c.scope == "reversal", idempotency_keys.c.key == cmd.reversal_id)
            .values(entry_id=posted.entry_id)
        )
        emit(
            conn,
            "points.reversed",
            member_id=member_id,
            payload={
                "transaction_id": cmd.transaction_id,
                "reversal_id": cmd.reversal_id,
                "entry_id": posted.entry_id,
                "points": taken,
                "balance": balance,
            },
            now=now,
        )
    return Result(reversal_body(conn, member_id, cmd.reversal_id), created=True)


def reversal_body(conn: Connection, member_id: str, reversal_id: str) -> dict[str, Any]:
    r = reversals.c
    row = conn.execute(sa.select(reversals).where(r.member_id == member_id, r.reversal_id == reversal_id)).one()
    return {
        "reversal_id": row.reversal_id,
        "transaction_id": row.transaction_id,
        "member_id": row.member_id,
        "amount": int(row.amount),
        "points_due": int(row.points_due),
        "points_reversed": int(row.points),
        "entry_id": row.entry_id,
        "balance": int(row.balance_after),
        "created_at": iso(row.created_at),
    }
