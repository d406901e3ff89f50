"""Ledger operations: every change of points goes through here.

Each function runs inside the caller's transaction (it never commits) and
holds the ledger's invariants: entries balance, the member's stored balance
moves only together with its postings by one atomic conditional update, and
lots record who consumed what so it can be undone.

Lock order: a member's request locks that member's ``member_accounts`` row
and nothing else that other members share. Capture and void lock the hold
row first, then the member row; hold locks the member row, then inserts the
new hold. Neither waits on the other's first lock, so they cannot deadlock.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.db import UTCDateTime, is_postgres
from loyalty.errors import HoldNotPending, InsufficientPoints, NotFound, PeriodClosed, UnknownMember
from loyalty.ledger import chain
from loyalty.ledger.lots import OpenLot, check_balanced, fifo_order, take
from loyalty.ledger.models import (
    closed_periods,
    entry_keys,
    holds,
    journal_entries,
    lot_consumptions,
    member_accounts,
    point_lots,
    postings,
)
from rules import Award, Programme

MEMBER = "member"
HOLDS = "holds"
EXPIRED = "expired"
#: The system account manual adjustments post against, and the funding source of the lots they credit.
ADJUSTMENTS = "adjustments"
ADJUSTMENT_FUNDING = "adjustment"

#: What a refund does when the member has already spent the points:
#: ``negative`` takes them all back, letting the balance go below zero;
#: ``available`` takes back only what the member still has.
CLAWBACK_POLICIES = ("negative", "available")


@dataclass(frozen=True)
class Line:
    account: str
    amount: int
    rule_id: str | None = None


@dataclass
class Posted:
    """What an operation posted.

    ``balance_after`` is the member account's balance after it (the points the member can
    spend); ``held_after`` the points pending holds reserve then. What the API calls the
    member's balance, the points they own, is their sum: :attr:`total_after`."""

    entry_id: str
    seq: int
    points: int
    balance_after: int
    held_after: int
    lots: list[dict[str, object]] = field(default_factory=list)

    @property
    def total_after(self) -> int:
        """The points the member owns after this entry, held ones included."""
        return self.balance_after + self.held_after


def new_id() -> str:
    return str(uuid.uuid4())


def _bump_statement(covered: bool) -> sa.Update:
    ma = member_accounts.c
    stmt = (
        sa.update(member_accounts)
        .where(ma.member_id == sa.bindparam("m"))
        .values(
            balance=ma.balance + sa.bindparam("delta", type_=sa.BigInteger),
            held=ma.held + sa.bindparam("held_delta", type_=sa.BigInteger),
            entry_seq=ma.entry_seq + 1,
            last_activity_at=sa.func.coalesce(sa.bindparam("now", type_=ma.last_activity_at.type), ma.last_activity_at),
            # SET expressions read the row as it was: the head before, the counter and balance before.
            chain_head=chain.next_head(
                ma.chain_head,
                sa.bindparam("digest", type_=sa.LargeBinary),
                ma.entry_seq + 1,
                ma.balance + sa.bindparam("delta", type_=sa.BigInteger),
            ),
        )
        .returning(ma.balance, ma.held, ma.entry_seq, ma.chain_head)
    )
    if covered:
        stmt = stmt.where(ma.balance >= sa.bindparam("cover", type_=sa.BigInteger))
    return stmt


# Built once and reused: a constant statement keeps its cache key, so the
# booking path does not rebuild and re-key it on every request.
BUMP = _bump_statement(covered=False)
BUMP_COVERED = _bump_statement(covered=True)
INSERT_KEY = entry_keys.insert()
INSERT_ENTRY = journal_entries.insert()


def _key_and_entry_statement() -> sa.TextClause:
    """On PostgreSQL, an entry's key and the entry in one statement (a data-modifying CTE): the
    entry's foreign key to its key is checked at the statement's end, when the key is there."""
    je = journal_entries.c
    names = [c.name for c in journal_entries.columns]
    key = "member_id, entry_id, seq, kind, source_ref, posted_at"
    key_values = ":member_id, :id, :seq, :kind, :source_ref, :posted_at"
    sql = (
        f"WITH entry_key AS (INSERT INTO entry_keys ({key}) VALUES ({key_values})) "
        f"INSERT INTO journal_entries ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
    )
    return sa.text(sql).bindparams(*(sa.bindparam(n, type_=je[n].type) for n in names))


INSERT_KEY_AND_ENTRY = _key_and_entry_statement()
INSERT_POSTINGS = postings.insert()
INSERT_LOTS = point_lots.insert()
INSERT_CONSUMPTIONS = lot_consumptions.insert()


def _bump_account(
    conn: Connection,
    member_id: str,
    *,
    delta: int,
    digest: bytes,
    held_delta: int = 0,
    now: dt.datetime | None = None,
    require_cover: int = 0,
) -> tuple[int, int, int, bytes]:
    """Move the member's stored balance by ``delta`` and its chain by an entry of ``digest``
    (:func:`chain.entry_digest`) in one conditional UPDATE.

    With ``require_cover`` the update only happens if the balance covers that
    many points. Returns ``(balance_after, held_after, entry_seq, chain_head)``; locks the row.
    """
    ma = member_accounts.c
    params = {
        "m": member_id,
        "delta": delta,
        "held_delta": held_delta,
        "now": now,
        "cover": require_cover,
        "digest": digest,
    }
    row = conn.execute(BUMP_COVERED if require_cover else BUMP, params).first()
    if row is None:
        exists = conn.execute(sa.select(ma.member_id).where(ma.member_id == member_id)).first()
        if exists is None:
            raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
        raise InsufficientPoints(
            f"member {member_id!r} does not have {require_cover} points available",
            required=require_cover,
        )
    return int(row.balance), int(row.held), int(row.entry_seq), bytes(row.chain_head)


def entry_rows(
    *,
    member_id: str,
    entry_id: str,
    kind: str,
    source_ref: str,
    lines: Sequence[Line],
    now: dt.datetime,
    transaction_id: str | None = None,
    related_entry_id: str | None = None,
    programme_version: str | None = None,
    memo: str | None = None,
    occurred_at: dt.datetime | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The journal entry row and its posting rows, but for what the member's account gives the
    entry when it is booked (``seq``, ``balance_after``, ``chain_hash``); refuses an unbalanced entry."""
    check_balanced(line.amount for line in lines)
    entry = {
        "member_id": member_id,
        "id": entry_id,
        "kind": kind,
        "source_ref": source_ref,
        "points": sum(line.amount for line in lines if line.account == MEMBER),
        "transaction_id": transaction_id,
        "related_entry_id": related_entry_id,
        "programme_version": programme_version,
        "memo": memo,
        "posted_at": now,
        "occurred_at": occurred_at,
    }
    rows: list[dict[str, Any]] = [
        {
            "member_id": member_id,
            "entry_id": entry_id,
            "line": i,
            "account": line.account,
            "amount": line.amount,
            "rule_id": line.rule_id,
            "posted_at": now,
        }
        for i, line in enumerate(lines, start=1)
    ]
    return entry, rows


def key_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The :data:`~loyalty.ledger.models.entry_keys` row of a booked entry (one with its ``seq``):
    written in the same transaction as the entry, before it."""
    return {
        "member_id": entry["member_id"],
        "entry_id": entry["id"],
        "seq": entry["seq"],
        "kind": entry["kind"],
        "source_ref": entry["source_ref"],
        "posted_at": entry["posted_at"],
    }


#: Seconds a process trusts what it read of the closed periods before it reads them again. Months
#: close only well after they end, so only a clock running that far behind could meet a stale read.
CLOSED_PERIODS_TTL = 30.0
#: database URL -> (when read, the closed periods' spans)
_closed: dict[str, tuple[float, tuple[Any, ...]]] = {}


def forget_closed_periods() -> None:
    """Read the closed periods again at the next posting (this process closed or reopened one)."""
    _closed.clear()


def check_open(conn: Connection, posted_at: dt.datetime) -> None:
    """Refuse a posting date inside a closed period with :class:`PeriodClosed`."""
    database = str(conn.engine.url)
    loaded_at, spans = _closed.get(database, (float("-inf"), ()))
    if time.monotonic() - loaded_at > CLOSED_PERIODS_TTL:
        cp = closed_periods.c
        spans = tuple(conn.execute(sa.select(cp.period, cp.starts_at, cp.ends_at)).all())
        _closed[database] = (time.monotonic(), spans)
    for period, starts_at, ends_at in spans:
        if starts_at <= posted_at < ends_at:
            raise PeriodClosed(f"{period} is closed: no entry may be posted on {posted_at.isoformat()}", period=period)


def _post(
    conn: Connection,
    entry: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    held_delta: int = 0,
    activity: dt.datetime | None = None,
    require_cover: int = 0,
) -> tuple[int, int, int]:
    """Book an entry built by :func:`entry_rows`: move the member's account by its points (and
    held points by ``held_delta``; last activity to ``activity`` if given; refused unless the
    balance covers ``require_cover``), seal it on the member's chain, and write it with its
    postings. Returns ``(balance_after, held_after, seq)``."""
    balance_after, held_after, seq, head = _bump_account(
        conn,
        entry["member_id"],
        delta=entry["points"],
        digest=chain.entry_digest(entry, rows),
        held_delta=held_delta,
        now=activity,
        require_cover=require_cover,
    )
    entry.update(seq=seq, balance_after=balance_after, chain_hash=head)
    check_open(conn, entry["posted_at"])
    if is_postgres(conn):
        conn.execute(INSERT_KEY_AND_ENTRY, entry)
    else:
        conn.execute(INSERT_KEY, key_row(entry))
        conn.execute(INSERT_ENTRY, entry)
    conn.execute(INSERT_POSTINGS, rows)
    return balance_after, held_after, seq


def award_lines(awards: Iterable[Award]) -> list[Line]:
    """Credit the member per award; debit ``issued:<funding>`` per funding source."""
    awards = list(awards)
    lines = [Line(MEMBER, a.points, a.rule_id) for a in awards]
    by_funding: dict[str, int] = defaultdict(int)
    for a in awards:
        by_funding[a.funding_source] += a.points
    lines += [Line(f"issued:{src}", -pts) for src, pts in sorted(by_funding.items())]
    return lines


def _open_lots(conn: Connection, member_id: str) -> list[OpenLot]:
    """The member's lots with points left."""
    pl = point_lots.c
    q = sa.select(pl.id, pl.remaining, pl.expires_at, pl.earned_at).where(pl.member_id == member_id, pl.remaining > 0)
    return [OpenLot(r.id, int(r.remaining), r.expires_at, r.earned_at) for r in conn.execute(q)]


def _consume(conn: Connection, member_id: str, entry_id: str, plan: Sequence[tuple[str, int]]) -> None:
    """Apply a consumption plan: lower each lot, record who took what.

    A negative amount gives points back to a lot (a void or a refund)."""
    if not plan:
        return
    conn.execute(LOWER_LOT, [{"m": member_id, "lot": lot, "n": n} for lot, n in plan])
    conn.execute(
        INSERT_CONSUMPTIONS,
        [{"member_id": member_id, "entry_id": entry_id, "lot_id": lot, "points": n} for lot, n in plan],
    )


LOWER_LOT = (
    sa.update(point_lots)
    .where(point_lots.c.member_id == sa.bindparam("m"), point_lots.c.id == sa.bindparam("lot"))
    .values(remaining=point_lots.c.remaining - sa.bindparam("n"))
)


#: The expiry of points that never lapse: later than any real one, so they are spent last.
NEVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


def lot_expiry(programme: Programme, earned_at: dt.datetime, tier: str | None) -> dt.datetime:
    """When points a member of ``tier`` earns at ``earned_at`` under ``programme`` lapse, by the
    bank's local calendar: ``rolling`` N months later at the same local time; ``end_of_year``
    at local midnight when the N-th year after the year of earning ends; or :data:`NEVER`."""
    policy = programme.expiry_for(tier)
    zone = programme.zone
    if policy.policy == "rolling":
        return calendar.add_months(earned_at, policy.months, zone)
    if policy.policy == "end_of_year":
        return calendar.start_of(dt.date(calendar.local_date(earned_at, zone).year + policy.years + 1, 1, 1), zone)
    return NEVER


def accrue(
    conn: Connection,
    member_id: str,
    awards: Sequence[Award],
    *,
    kind: str,
    source_ref: str,
    earned_at: dt.datetime,
    expires_at: dt.datetime,
    now: dt.datetime,
    transaction_id: str | None = None,
    programme_version: str | None = None,
    entry_id: str | None = None,
) -> Posted:
    """Credit ``awards`` to the member: one entry, one lot per award."""
    entry, posting_rows = accrual_entry(
        member_id,
        awards,
        entry_id=entry_id or new_id(),
        kind=kind,
        source_ref=source_ref,
        earned_at=earned_at,
        now=now,
        transaction_id=transaction_id,
        programme_version=programme_version,
    )
    balance_after, held_after, seq = _post(conn, entry, posting_rows, activity=now)
    lots, consumptions = accrual_lots(
        member_id, awards, entry_id=entry["id"], balance_after=balance_after, earned_at=earned_at, expires_at=expires_at
    )
    conn.execute(INSERT_LOTS, lots)
    if consumptions:
        conn.execute(INSERT_CONSUMPTIONS, consumptions)
    return Posted(entry["id"], seq, entry["points"], balance_after, held_after, lots)


@dataclass
class AccrualRows:
    entry: dict[str, Any]
    postings: list[dict[str, Any]]
    lots: list[dict[str, object]]
    consumptions: list[dict[str, object]]


def accrual_entry(
    member_id: str,
    awards: Sequence[Award],
    *,
    entry_id: str,
    kind: str,
    source_ref: str,
    earned_at: dt.datetime,
    now: dt.datetime,
    transaction_id: str | None = None,
    programme_version: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An accrual's entry and postings, as :func:`entry_rows` gives them (pure)."""
    if not awards or any(a.points <= 0 for a in awards):
        raise ValueError("an accrual needs positive awards")
    return entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind=kind,
        source_ref=source_ref,
        lines=award_lines(awards),
        now=now,
        transaction_id=transaction_id,
        programme_version=programme_version,
        occurred_at=earned_at,
    )


def accrual_lots(
    member_id: str,
    awards: Sequence[Award],
    *,
    entry_id: str,
    balance_after: int,
    earned_at: dt.datetime,
    expires_at: dt.datetime,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """An accrual's lots, one per award, given the balance it leaves, and what it consumes of
    them (pure).

    If the balance before it was negative, the new lots pay that debt first:
    this entry consumes them for the debt's amount.
    """
    debt = max(0, -(balance_after - sum(a.points for a in awards)))
    lots: list[dict[str, object]] = []
    consumptions: list[dict[str, object]] = []
    for a in awards:
        lot_id = new_id()
        settle = min(debt, a.points)
        debt -= settle
        lots.append(
            {
                "member_id": member_id,
                "id": lot_id,
                "entry_id": entry_id,
                "rule_id": a.rule_id,
                "reason": a.reason,
                "funding_source": a.funding_source,
                "qualifying": a.qualifying,
                "original": a.points,
                "remaining": a.points - settle,
                "earned_at": earned_at,
                "expires_at": expires_at,
            }
        )
        if settle:
            consumptions.append({"member_id": member_id, "entry_id": entry_id, "lot_id": lot_id, "points": settle})
    return lots, consumptions


def accrual_rows(
    member_id: str,
    awards: Sequence[Award],
    *,
    entry_id: str,
    seq: int,
    balance_after: int,
    prev_hash: bytes | None,
    kind: str,
    source_ref: str,
    earned_at: dt.datetime,
    expires_at: dt.datetime,
    now: dt.datetime,
    transaction_id: str | None = None,
    programme_version: str | None = None,
) -> AccrualRows:
    """Every row one accrual writes, given the ``seq`` and balance it leaves and the hash of the
    member's entry before it (``prev_hash``, the account's ``chain_head``), sealed as the booking
    seals it (pure): for writers that move the account themselves, such as the importer."""
    entry, posting_rows = accrual_entry(
        member_id,
        awards,
        entry_id=entry_id,
        kind=kind,
        source_ref=source_ref,
        earned_at=earned_at,
        now=now,
        transaction_id=transaction_id,
        programme_version=programme_version,
    )
    entry.update(
        seq=seq,
        balance_after=balance_after,
        chain_hash=chain.chain_link(prev_hash, chain.entry_digest(entry, posting_rows), seq, balance_after),
    )
    lots, consumptions = accrual_lots(
        member_id, awards, entry_id=entry_id, balance_after=balance_after, earned_at=earned_at, expires_at=expires_at
    )
    return AccrualRows(entry, posting_rows, lots, consumptions)


def claw_back(
    conn: Connection,
    member_id: str,
    points_due: int,
    *,
    funding: dict[str, int],
    source_ref: str,
    related_entry_id: str,
    policy: str,
    now: dt.datetime,
    transaction_id: str | None = None,
) -> Posted | None:
    """Take back up to ``points_due`` points earned by ``related_entry_id``.

    The related entry's own lots are drawn first, then the others
    first-expiring-first. Under the ``negative`` policy the full amount is
    taken even if that makes the balance negative; under ``available`` only
    what the member still has. ``funding`` splits ``points_due`` between the
    funding sources credited back. Returns ``None`` when nothing is taken.
    """
    if policy not in CLAWBACK_POLICIES:
        raise ValueError(f"unknown clawback policy {policy!r}")
    if points_due <= 0:
        return None
    ma = member_accounts.c
    if policy == "available":
        # Lock first, then decide how much to take; the lock makes this safe.
        row = conn.execute(sa.select(ma.balance).where(ma.member_id == member_id).with_for_update()).first()
        if row is None:
            raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
        points = min(points_due, max(0, int(row.balance)))
        if points == 0:
            return None
    else:
        points = points_due
    # Credit back the funding sources in proportion, the rounding remainder to the largest.
    shares = _split(points, funding)
    lines = [Line(MEMBER, -points)] + [Line(f"issued:{src}", n) for src, n in shares.items() if n]
    entry_id = new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="reversal",
        source_ref=source_ref,
        lines=lines,
        now=now,
        transaction_id=transaction_id,
        related_entry_id=related_entry_id,
    )
    balance_after, held_after, seq = _post(conn, entry, rows, activity=now)
    own = conn.execute(
        sa.select(point_lots.c.id).where(point_lots.c.member_id == member_id, point_lots.c.entry_id == related_entry_id)
    ).scalars()
    _consume(conn, member_id, entry_id, take(_open_lots(conn, member_id), points, prefer=own))
    return Posted(entry_id, seq, -points, balance_after, held_after)


def expire(conn: Connection, member_id: str, *, as_of: dt.datetime, now: dt.datetime) -> Posted | None:
    """Post the lapse of the member's points whose expiry is at or before ``as_of``: one
    ``expiry`` entry from the member to ``expired`` for the remaining points of every such lot,
    taken first-expiring-first. Returns ``None`` when nothing has lapsed, so running it again
    posts nothing. Locks the member's account before reading the lots, as every spend does.

    Held points are not in any lot (a hold took them out), so they stay held; voided later,
    they go back to their lots and lapse at the next run."""
    ma = member_accounts.c
    # The lock an UPDATE of the account takes, as bookings and spends take it: foreign-key checks
    # of other transactions' inserts that reference the account do not wait on it.
    # The counter, read under that lock, numbers the entry (its source names it) before it is sealed.
    counted = conn.execute(
        sa.select(ma.entry_seq).where(ma.member_id == member_id).with_for_update(key_share=True)
    ).scalar()
    lapsed = fifo_order([lot for lot in _open_lots(conn, member_id) if lot.expires_at <= as_of])
    points = sum(lot.remaining for lot in lapsed)
    if points <= 0:
        return None
    entry_id = new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="expiry",
        source_ref=f"expiry:{(counted or 0) + 1}",
        lines=[Line(MEMBER, -points), Line(EXPIRED, points)],
        now=now,
    )
    balance_after, held_after, seq = _post(conn, entry, rows)
    _consume(conn, member_id, entry_id, [(lot.id, lot.remaining) for lot in lapsed])
    return Posted(
        entry_id,
        seq,
        -points,
        balance_after,
        held_after,
        [{"id": lot.id, "points": lot.remaining, "expires_at": lot.expires_at} for lot in lapsed],
    )


#: The digest of an ``expiry`` entry as :data:`EXPIRE_SET` builds it, from the row of
#: ``member_accounts`` (``ma``) before the entry and its member's total (``t``): the same
#: content :func:`expire` seals, put in canonical form in SQL (:func:`chain.sql_digest`).
_EXPIRY_DIGEST = chain.sql_digest(
    {
        "member_id": "ma.member_id",
        "id": "CAST(t.entry_id AS text)",
        "kind": "'expiry'",
        "source_ref": "'expiry:' || CAST(ma.entry_seq + 1 AS text)",
        "points": "CAST(-t.points AS text)",
        "posted_at": "CAST(:now_us AS text)",
        "occurred_at": "NULL",
        "transaction_id": "NULL",
        "related_entry_id": "NULL",
        "programme_version": "NULL",
        "memo": "NULL",
    },
    [
        {
            "line": "'1'",
            "account": "CAST(:member AS text)",
            "amount": "CAST(-t.points AS text)",
            "rule_id": "NULL",
            "posted_at": "CAST(:now_us AS text)",
        },
        {
            "line": "'2'",
            "account": "CAST(:expired AS text)",
            "amount": "CAST(t.points AS text)",
            "rule_id": "NULL",
            "posted_at": "CAST(:now_us AS text)",
        },
    ],
)

#: One statement posting the lapse of a set of locked members' lots, on PostgreSQL: per member
#: with lapsed points, what :func:`expire` writes (the account bumped and its chain moved on, one
#: ``expiry`` entry with its key and its two postings, sealed, a consumption per lot) but for emptying the lots
#: (:data:`EMPTY_LAPSED`, next); returns the lapsed lots, each with its member's entry,
#: first-expiring-first per member.
EXPIRE_SET = (
    sa.text(
        f"""
    WITH lapsed AS MATERIALIZED (
        SELECT member_id, id, remaining, expires_at, earned_at FROM point_lots
        WHERE member_id = ANY(:members) AND remaining > 0 AND expires_at <= :as_of
    ), totals AS MATERIALIZED (
        SELECT member_id, CAST(sum(remaining) AS bigint) AS points, gen_random_uuid() AS entry_id
        FROM lapsed GROUP BY member_id
    ), bumped AS (
        UPDATE member_accounts AS ma SET balance = ma.balance - t.points, entry_seq = ma.entry_seq + 1,
            chain_head = {chain.sql_link("ma.chain_head", _EXPIRY_DIGEST, "ma.entry_seq + 1", "ma.balance - t.points")}
        FROM totals AS t WHERE ma.member_id = t.member_id
        RETURNING ma.member_id, ma.balance, ma.held, ma.entry_seq, ma.chain_head, t.points, t.entry_id
    ), keys AS (
        INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at)
        SELECT member_id, entry_id, entry_seq, 'expiry', 'expiry:' || entry_seq, :now FROM bumped
    ), entries AS (
        INSERT INTO journal_entries (member_id, id, seq, kind, source_ref, points, balance_after, posted_at,
                                     chain_hash)
        SELECT member_id, entry_id, entry_seq, 'expiry', 'expiry:' || entry_seq, -points, balance, :now, chain_head
        FROM bumped
    ), lines AS (
        INSERT INTO postings (member_id, entry_id, line, account, amount, posted_at)
        SELECT member_id, entry_id, 1, :member, -points, :now FROM bumped
        UNION ALL SELECT member_id, entry_id, 2, :expired, points, :now FROM bumped
    ), consumed AS (
        INSERT INTO lot_consumptions (member_id, entry_id, lot_id, points)
        SELECT l.member_id, t.entry_id, l.id, l.remaining FROM lapsed AS l JOIN totals AS t USING (member_id)
    )
    SELECT b.member_id, CAST(b.entry_id AS text) AS entry_id, b.entry_seq, b.points, b.balance, b.held,
           CAST(l.id AS text) AS lot_id, l.remaining, l.expires_at
    FROM bumped AS b JOIN lapsed AS l USING (member_id)
    ORDER BY b.member_id, l.expires_at, l.earned_at, l.id
    """
    )
    .bindparams(sa.bindparam("as_of", type_=UTCDateTime()), sa.bindparam("now", type_=UTCDateTime()))
    .columns(expires_at=UTCDateTime())
)


#: The lots :data:`EXPIRE_SET` lapsed, emptied. A statement of its own, after it: the foreign-key
#: check of each new consumption then finds its lot as it was, where in the same statement it had
#: to find the lot's new version among the old ones (a check five times as costly, a third of the
#: job's time).
EMPTY_LAPSED = sa.text(
    "UPDATE point_lots SET remaining = 0 WHERE member_id = ANY(:members) AND remaining > 0 AND expires_at <= :as_of"
).bindparams(sa.bindparam("as_of", type_=UTCDateTime()))


def expire_members(
    conn: Connection, member_ids: Sequence[str], *, as_of: dt.datetime, now: dt.datetime
) -> dict[str, Posted]:
    """:func:`expire` for many members at once, set-based (PostgreSQL only): the same rows with
    the same values, in three statements whatever the number of members or lots: one locks the
    members' accounts in member id order (as :func:`expire` does one by one), one posts every
    lapse (:data:`EXPIRE_SET`), one empties the lots (:data:`EMPTY_LAPSED`). Each entry's
    ``posted_at`` is ``now``. Returns what was posted per member that had points lapse (by member
    id, in member id order)."""
    ma = member_accounts.c
    locked = list(
        conn.execute(
            sa.select(ma.member_id)
            .where(ma.member_id.in_(member_ids))
            .order_by(ma.member_id)
            .with_for_update(key_share=True)
        ).scalars()
    )
    if not locked:
        return {}
    check_open(conn, now)
    params = {
        "members": locked,
        "as_of": as_of,
        "now": now,
        "now_us": chain.micros(now),
        "member": MEMBER,
        "expired": EXPIRED,
    }
    posted: dict[str, Posted] = {}
    for r in conn.execute(EXPIRE_SET, params):
        p = posted.get(r.member_id)
        if p is None:
            p = posted[r.member_id] = Posted(r.entry_id, int(r.entry_seq), -int(r.points), int(r.balance), int(r.held))
        p.lots.append({"id": r.lot_id, "points": int(r.remaining), "expires_at": r.expires_at})
    conn.execute(EMPTY_LAPSED, {"members": locked, "as_of": as_of})
    return posted


def adjust(
    conn: Connection,
    member_id: str,
    points: int,
    *,
    source_ref: str,
    reason: str,
    expires_at: dt.datetime,
    now: dt.datetime,
) -> Posted:
    """Post a manual adjustment of ``points`` (signed, not zero) between the member and
    ``adjustments``: one ``adjustment`` entry whose ``source_ref`` makes it once per member.

    A positive one credits the member and opens one lot (funding source ``adjustment``) expiring
    at ``expires_at``; if the balance was below zero, the lot pays that debt first, as an accrual's
    does. A negative one needs the member's available points to cover it with points that have
    not expired by ``now`` (refused with :class:`InsufficientPoints` otherwise) and takes them from
    the unexpired lots first-expiring-first, as a redemption does. Not member activity: the
    member's last activity stays as it was."""
    if points == 0:
        raise ValueError("an adjustment needs non-zero points")
    entry_id = new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="adjustment",
        source_ref=source_ref,
        lines=[Line(MEMBER, points), Line(ADJUSTMENTS, -points)],
        now=now,
        memo=reason[:500],
    )
    balance_after, held_after, seq = _post(conn, entry, rows, require_cover=max(0, -points))
    if points < 0:
        _spend_lots(conn, member_id, entry_id, -points, now=now)
        return Posted(entry_id, seq, points, balance_after, held_after)
    lot = {
        "member_id": member_id,
        "id": new_id(),
        "entry_id": entry_id,
        "rule_id": "manual-adjustment",
        "reason": reason[:200],
        "funding_source": ADJUSTMENT_FUNDING,
        "qualifying": False,
        "original": points,
        "remaining": points,
        "earned_at": now,
        "expires_at": expires_at,
    }
    conn.execute(INSERT_LOTS, [lot])
    debt = min(points, max(0, points - balance_after))
    if debt:
        _consume(conn, member_id, entry_id, [(str(lot["id"]), debt)])
    return Posted(entry_id, seq, points, balance_after, held_after, [lot])


def _split(points: int, weights: dict[str, int]) -> dict[str, int]:
    total = sum(weights.values())
    if total <= 0:
        return {"bank": points}
    shares = {k: points * w // total for k, w in weights.items()}
    largest = max(weights, key=lambda k: (weights[k], k))
    shares[largest] += points - sum(shares.values())
    return shares


def hold(
    conn: Connection,
    member_id: str,
    hold_id: str,
    points: int,
    *,
    capture_account: str,
    now: dt.datetime,
) -> Posted:
    """Move ``points`` from the member's account to ``holds`` (first phase of a spend).

    Refused with :class:`InsufficientPoints` unless the balance covers them with
    points that have not expired by ``now``: expired points are never spent, even
    before the expiry job has posted their lapse. The points come out of the
    unexpired lots first-expiring-first.
    """
    if points <= 0:
        raise ValueError("a hold needs positive points")
    entry_id = new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="hold",
        source_ref=hold_id,
        lines=[Line(MEMBER, -points), Line(HOLDS, points)],
        now=now,
    )
    balance_after, held_after, seq = _post(conn, entry, rows, held_delta=points, activity=now, require_cover=points)
    conn.execute(
        holds.insert(),
        {
            "member_id": member_id,
            "id": hold_id,
            "points": points,
            "status": "pending",
            "capture_account": capture_account,
            "hold_entry_id": entry_id,
            "created_at": now,
        },
    )
    _spend_lots(conn, member_id, entry_id, points, now=now)
    return Posted(entry_id, seq, -points, balance_after, held_after)


def spend(conn: Connection, member_id: str, source_ref: str, points: int, *, account: str, now: dt.datetime) -> Posted:
    """Move ``points`` from the member straight to ``account`` (``redeemed:<benefit>``) in one
    ``capture`` entry: a redemption that cannot be cancelled needs no hold. Refused as :func:`hold`
    refuses, with :class:`InsufficientPoints`."""
    if points <= 0:
        raise ValueError("a spend needs positive points")
    entry_id = new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="capture",
        source_ref=source_ref,
        lines=[Line(MEMBER, -points), Line(account, points)],
        now=now,
    )
    balance_after, held_after, seq = _post(conn, entry, rows, activity=now, require_cover=points)
    _spend_lots(conn, member_id, entry_id, points, now=now)
    return Posted(entry_id, seq, -points, balance_after, held_after)


def _spendable_query() -> sa.Select[Any]:
    """The member's unexpired open lots that pay for ``:points``, first-expiring-first: each lot
    whose predecessors in that order leave something to pay. A member's old lots stay in the
    database; only the few a spend takes come back."""
    pl = point_lots.c
    order = (pl.expires_at, pl.earned_at, pl.id)
    before = sa.func.sum(pl.remaining).over(order_by=order, rows=(None, -1))
    lots = (
        sa.select(pl.id, pl.remaining, pl.expires_at, pl.earned_at, before.label("before"))
        .where(
            pl.member_id == sa.bindparam("member_id"),
            pl.remaining > 0,
            pl.expires_at > sa.bindparam("now", type_=pl.expires_at.type),
        )
        .subquery()
    )
    return (
        sa.select(lots.c.id, lots.c.remaining, lots.c.expires_at, lots.c.earned_at)
        .where(sa.func.coalesce(lots.c.before, 0) < sa.bindparam("points", type_=sa.BigInteger))
        .order_by(lots.c.expires_at, lots.c.earned_at, lots.c.id)
    )


SPENDABLE = _spendable_query()


def _spend_lots(conn: Connection, member_id: str, entry_id: str, points: int, *, now: dt.datetime) -> None:
    """Take ``points`` out of the member's unexpired lots, first-expiring-first, for ``entry_id``.

    The balance has already covered them; if it counts points that have expired and not lapsed yet,
    the lots cannot, and the spend is refused with :class:`InsufficientPoints`."""
    lots = [
        OpenLot(r.id, int(r.remaining), r.expires_at, r.earned_at)
        for r in conn.execute(SPENDABLE, {"member_id": member_id, "now": now, "points": points})
    ]
    plan = take(lots, points)
    spendable = sum(n for _, n in plan)
    if spendable != points:
        raise InsufficientPoints(
            f"member {member_id!r} does not have {points} points available: some have expired",
            required=points,
            available=spendable,
        )
    _consume(conn, member_id, entry_id, plan)


def _pending_hold(conn: Connection, member_id: str, hold_id: str) -> Any:
    """Lock a pending hold and read it; refuses one that does not exist or is already resolved.

    Its resolution is written after the entry that resolves it (:func:`_resolved`), so that the
    hold never names an entry that does not exist yet: its foreign key is checked at once."""
    h = holds.c
    row = conn.execute(
        sa.select(h.points, h.capture_account, h.hold_entry_id, h.status)
        .where(h.member_id == member_id, h.id == hold_id)
        .with_for_update(key_share=True)
    ).first()
    if row is None:
        raise NotFound(f"no hold {hold_id!r} for member {member_id!r}")
    if row.status != "pending":
        raise HoldNotPending(f"hold {hold_id!r} is already {row.status}", status=row.status)
    return row


def _resolved(conn: Connection, member_id: str, hold_id: str, status: str, entry_id: str, now: dt.datetime) -> None:
    h = holds.c
    conn.execute(
        sa.update(holds)
        .where(h.member_id == member_id, h.id == hold_id, h.status == "pending")
        .values(status=status, resolved_at=now, resolution_entry_id=entry_id)
    )


def capture(conn: Connection, member_id: str, hold_id: str, *, now: dt.datetime) -> Posted:
    """Second phase, success: the held points go to the hold's capture account."""
    hold = _pending_hold(conn, member_id, hold_id)
    points, entry_id = int(hold.points), new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="capture",
        source_ref=hold_id,
        lines=[Line(HOLDS, -points), Line(hold.capture_account, points)],
        now=now,
        related_entry_id=hold.hold_entry_id,
    )
    balance_after, held_after, seq = _post(conn, entry, rows, held_delta=-points)
    _resolved(conn, member_id, hold_id, "captured", entry_id, now)
    return Posted(entry_id, seq, 0, balance_after, held_after)


def void(conn: Connection, member_id: str, hold_id: str, *, now: dt.datetime) -> Posted:
    """Second phase, failure: the held points go back to the member and to
    the lots they came from (a lot whose expiry has passed meanwhile gets
    them back too).

    If a refund made the balance negative meanwhile, the returned points pay
    that debt first and only the rest goes back into lots.
    """
    hold = _pending_hold(conn, member_id, hold_id)
    points, hold_entry_id, entry_id = int(hold.points), hold.hold_entry_id, new_id()
    entry, rows = entry_rows(
        member_id=member_id,
        entry_id=entry_id,
        kind="void",
        source_ref=hold_id,
        lines=[Line(HOLDS, -points), Line(MEMBER, points)],
        now=now,
        related_entry_id=hold_entry_id,
    )
    balance_after, held_after, seq = _post(conn, entry, rows, held_delta=-points)
    _resolved(conn, member_id, hold_id, "voided", entry_id, now)
    restore = min(points, max(0, balance_after))
    lc = lot_consumptions.c
    taken = conn.execute(
        sa.select(lc.lot_id, lc.points, point_lots.c.expires_at)
        .join(point_lots, sa.and_(point_lots.c.member_id == lc.member_id, point_lots.c.id == lc.lot_id))
        .where(lc.member_id == member_id, lc.entry_id == hold_entry_id)
        .order_by(point_lots.c.expires_at.desc(), lc.lot_id)
    ).all()
    # Give back the latest-expiring points; a debt absorbs the soonest-expiring.
    plan = []
    for row in taken:
        n = min(restore, int(row.points))
        if n:
            plan.append((row.lot_id, -n))
            restore -= n
    _consume(conn, member_id, entry_id, plan)
    return Posted(entry_id, seq, points, balance_after, held_after)
