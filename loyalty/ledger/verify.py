"""``loyalty verify``: prove the ledger's invariants over the whole database.

Every check but one is one set-based query that returns the rows breaking it, so a
clean run is a proof over all the data, not a sample. The hash chains are recomputed
in Python (:func:`chains`) from one ordered read of every entry and posting.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.ledger import chain, partitions
from loyalty.ledger.models import journal_entries, member_accounts, postings


@dataclass
class Outcome:
    check: Check
    count: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: what the check found that breaks nothing but is worth knowing
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.count == 0


@dataclass(frozen=True)
class Check:
    name: str
    invariant: str
    #: the query returning the rows that break the invariant ...
    sql: str = ""
    #: ... or a function of the connection and the number of examples wanted that finds them
    compute: Callable[[Connection, int], Outcome] | None = None


#: Rows the chain check reads from the database at a time.
CHAIN_BATCH = 5000


def _chain_rows(conn: Connection) -> Iterator[sa.Row[Any]]:
    """Every member account, each with its entries in ``seq`` order, each with its postings in
    line order: one row per posting (one per account without entries), streamed."""
    a, e, p = member_accounts.c, journal_entries.c, postings.c
    query = (
        sa.select(
            a.member_id,
            a.entry_seq.label("account_seq"),
            a.chain_head,
            e.id,
            e.seq,
            e.kind,
            e.source_ref,
            e.points,
            e.balance_after,
            e.posted_at,
            e.occurred_at,
            e.transaction_id,
            e.related_entry_id,
            e.programme_version,
            e.memo,
            e.chain_hash,
            p.line,
            p.account,
            p.amount,
            p.rule_id,
            p.posted_at.label("line_posted_at"),
        )
        .select_from(
            member_accounts.outerjoin(journal_entries, e.member_id == a.member_id).outerjoin(
                postings, sa.and_(p.member_id == e.member_id, p.entry_id == e.id)
            )
        )
        .order_by(a.member_id, e.seq, p.line)
    )
    yield from conn.execute(query, execution_options={"yield_per": CHAIN_BATCH})


def _posting(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "line": row.line,
        "account": row.account,
        "amount": row.amount,
        "rule_id": row.rule_id,
        "posted_at": row.line_posted_at,
    }


def _differences(entry: sa.Row[Any], lines: list[dict[str, Any]], prev_seq: int, prev_balance: int) -> str:
    """What can be told of an entry whose hash does not match: the hash alone says only that
    something it sealed changed; the rest of the entry may say what."""
    found = []
    if entry.seq != prev_seq + 1:
        found.append(f"it follows seq {prev_seq}: an entry before it is missing")
    if entry.balance_after != prev_balance + entry.points:
        found.append(f"balance_after {entry.balance_after} is not {prev_balance} + its {entry.points} points")
    total = sum(int(line["amount"]) for line in lines)
    if total:
        found.append(f"its postings sum to {total}")
    member = sum(int(line["amount"]) for line in lines if line["account"] == "member")
    if member != entry.points:
        found.append(f"its member postings sum to {member}, not its {entry.points} points")
    what = "; ".join(found) or "its content, postings, seq or balance_after changed"
    return f"does not match its hash: {what}"


def _walk(rows: Iterator[sa.Row[Any]]) -> tuple[dict[str, Any] | None, int]:
    """One member's chain, from its rows of :func:`_chain_rows`: the first thing that breaks it
    (``None`` if nothing does), and the number of its entries without a hash."""
    first = next(rows)
    prev_hash: bytes | None = None
    prev_seq = prev_balance = unsealed = 0
    last_id = None
    problem = None
    for entry_id, group in itertools.groupby(itertools.chain([first], rows), key=lambda r: r.id):
        entry_rows = list(group)
        entry = entry_rows[0]
        if entry_id is None or problem is not None:
            continue
        if entry.chain_hash is None:
            unsealed += 1
        else:
            lines = [_posting(r) for r in entry_rows if r.line is not None]
            digest = chain.entry_digest(entry._mapping, lines)
            if chain.chain_link(prev_hash, digest, entry.seq, entry.balance_after) != bytes(entry.chain_hash):
                why = _differences(entry, lines, prev_seq, prev_balance)
                problem = {"member_id": entry.member_id, "seq": entry.seq, "entry_id": entry_id, "problem": why}
                continue
            prev_hash = bytes(entry.chain_hash)
        prev_seq, prev_balance, last_id = entry.seq, entry.balance_after, entry_id
    head = None if first.chain_head is None else bytes(first.chain_head)
    if problem is None and head != prev_hash:
        why = "the account's chain head is not the hash of its last sealed entry"
        if first.account_seq != prev_seq:
            why += f": the account counts {first.account_seq} entries, the journal holds entries up to seq {prev_seq}"
        problem = {"member_id": first.member_id, "seq": prev_seq or None, "entry_id": last_id, "problem": why}
    return problem, unsealed


def chains(conn: Connection, examples: int) -> Outcome:
    """Recompute every member's hash chain, member by member from one ordered read: per member,
    the first entry whose hash does not match what it seals, or an account head that is not its
    last entry's hash."""
    broken = unsealed = 0
    shown: list[dict[str, Any]] = []
    for _member_id, rows in itertools.groupby(_chain_rows(conn), key=lambda r: r.member_id):
        problem, outside = _walk(rows)
        unsealed += outside
        if problem is not None:
            broken += 1
            if len(shown) < examples:
                shown.append(problem)
    note = ""
    if unsealed:
        note = f"{unsealed} entries posted without a hash, by a release before the chain, are outside it"
    return Outcome(HASH_CHAIN, broken, shown, note)


HASH_CHAIN = Check(
    "hash_chain",
    "each member's entries form an unbroken hash chain: every entry's hash seals its content, its postings "
    "and the hash before it, and the account's head is the last one",
    compute=chains,
)


def default_partitions(conn: Connection, examples: int) -> Outcome:
    """Rows in a DEFAULT partition of the journal (PostgreSQL), per partition and UTC month: each
    such month needs its partition, which the ``partitions`` job will not create over them."""
    if not partitions.partitioned(conn):
        return Outcome(DEFAULT_PARTITIONS_EMPTY, 0)
    found = partitions.default_rows(conn)
    for row in found:
        row["problem"] = f"no partition of its own for {row['month']}"
    return Outcome(DEFAULT_PARTITIONS_EMPTY, sum(int(r["rows"]) for r in found), found[:examples])


DEFAULT_PARTITIONS_EMPTY = Check(
    "default_partitions_empty",
    "on PostgreSQL, the journal's DEFAULT partitions are empty: every month posted in has its partitions",
    compute=default_partitions,
)

CHECKS = [
    Check(
        "entries_balance",
        "every journal entry has at least two postings and they sum to zero",
        """SELECT e.member_id, e.id AS entry_id, coalesce(sum(p.amount), 0) AS total, count(p.line) AS lines
             FROM journal_entries e LEFT JOIN postings p ON p.member_id = e.member_id AND p.entry_id = e.id
            GROUP BY e.member_id, e.id
           HAVING coalesce(sum(p.amount), 0) <> 0 OR count(p.line) < 2""",
    ),
    Check(
        "entries_have_keys",
        "every journal entry has its key (entry_keys, with its seq, kind, source_ref and posting date), "
        "and every key its entry",
        """SELECT e.member_id, e.id AS entry_id, 'no key matching the entry' AS problem FROM journal_entries e
            WHERE NOT EXISTS (SELECT 1 FROM entry_keys k WHERE k.member_id = e.member_id AND k.entry_id = e.id
                                 AND k.seq = e.seq AND k.kind = e.kind AND k.source_ref = e.source_ref
                                 AND k.posted_at = e.posted_at)
           UNION ALL
           SELECT k.member_id, k.entry_id, 'a key without its entry' AS problem FROM entry_keys k
            WHERE NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.member_id = k.member_id AND e.id = k.entry_id)""",
    ),
    DEFAULT_PARTITIONS_EMPTY,
    Check(
        "ledger_balances",
        "the whole ledger sums to zero",
        "SELECT sum(amount) AS total FROM postings HAVING sum(amount) <> 0",
    ),
    Check(
        "postings_have_entries",
        "every posting belongs to an entry",
        """SELECT p.member_id, p.entry_id, p.line FROM postings p
            WHERE NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.member_id = p.member_id AND e.id = p.entry_id)""",
    ),
    Check(
        "balance_equals_postings",
        "a member's stored balance equals the sum of its postings",
        """SELECT a.member_id, a.balance, coalesce(p.total, 0) AS postings
             FROM member_accounts a
             LEFT JOIN (SELECT member_id, sum(amount) AS total FROM postings
                         WHERE account = 'member' GROUP BY member_id) p ON p.member_id = a.member_id
            WHERE a.balance <> coalesce(p.total, 0)""",
    ),
    Check(
        "balance_equals_lots",
        "a member's open lots sum to the balance (to zero while the balance is negative)",
        """SELECT a.member_id, a.balance, coalesce(l.total, 0) AS lots
             FROM member_accounts a
             LEFT JOIN (SELECT member_id, sum(remaining) AS total FROM point_lots GROUP BY member_id) l
                    ON l.member_id = a.member_id
            WHERE coalesce(l.total, 0) <> CASE WHEN a.balance > 0 THEN a.balance ELSE 0 END""",
    ),
    Check(
        "lots_equal_consumptions",
        "every lot's remaining points are its original points less what entries took from it",
        """SELECT l.member_id, l.id AS lot_id, l.original, l.remaining, coalesce(c.taken, 0) AS taken
             FROM point_lots l
             LEFT JOIN (SELECT member_id, lot_id, sum(points) AS taken FROM lot_consumptions
                         GROUP BY member_id, lot_id) c ON c.member_id = l.member_id AND c.lot_id = l.id
            WHERE l.remaining <> l.original - coalesce(c.taken, 0)""",
    ),
    Check(
        "held_equals_holds",
        "a member's held points equal its pending holds and its postings on the holds account",
        """SELECT a.member_id, a.held, coalesce(h.pending, 0) AS pending, coalesce(p.total, 0) AS postings
             FROM member_accounts a
             LEFT JOIN (SELECT member_id, sum(points) AS pending FROM holds WHERE status = 'pending'
                         GROUP BY member_id) h ON h.member_id = a.member_id
             LEFT JOIN (SELECT member_id, sum(amount) AS total FROM postings WHERE account = 'holds'
                         GROUP BY member_id) p ON p.member_id = a.member_id
            WHERE a.held <> coalesce(h.pending, 0) OR a.held <> coalesce(p.total, 0)""",
    ),
    Check(
        "spending_never_overdraws",
        "no hold or expiry takes the balance below zero (only a refund may, by policy)",
        """SELECT member_id, id AS entry_id, kind, balance_after FROM journal_entries
            WHERE kind IN ('hold', 'expiry') AND balance_after < 0""",
    ),
    Check(
        "statement_chain",
        "entries are numbered 1..n per member and each balance_after follows from the one before",
        """SELECT member_id, seq, balance_after, points, prev_balance FROM (
               SELECT member_id, seq, balance_after, points,
                      lag(balance_after, 1, 0) OVER (PARTITION BY member_id ORDER BY seq) AS prev_balance,
                      row_number() OVER (PARTITION BY member_id ORDER BY seq) AS n
                 FROM journal_entries) x
            WHERE balance_after <> prev_balance + points OR seq <> n""",
    ),
    Check(
        "entry_count_matches_account",
        "a member's entry counter equals its number of entries, and its balance the last balance_after",
        """SELECT a.member_id, a.entry_seq, coalesce(e.n, 0) AS entries
             FROM member_accounts a
             LEFT JOIN (SELECT member_id, count(*) AS n, max(seq) AS last FROM journal_entries
                         GROUP BY member_id) e ON e.member_id = a.member_id
             LEFT JOIN journal_entries le ON le.member_id = a.member_id AND le.seq = e.last
            WHERE a.entry_seq <> coalesce(e.n, 0) OR (le.id IS NOT NULL AND le.balance_after <> a.balance)""",
    ),
    Check(
        "idempotency_records_point_at_one_entry",
        "every idempotency record that names an entry names one that exists, for the same member",
        """SELECT k.scope, k.key, k.member_id, k.entry_id FROM idempotency_keys k
            WHERE k.entry_id IS NOT NULL AND NOT EXISTS (
                  SELECT 1 FROM journal_entries e WHERE e.member_id = k.member_id AND e.id = k.entry_id)""",
    ),
    Check(
        "entries_have_one_idempotency_record",
        "every accrual and reversal entry is named by exactly one idempotency record",
        """SELECT e.member_id, e.id AS entry_id, e.kind, count(k.key) AS records
             FROM journal_entries e
             LEFT JOIN idempotency_keys k ON k.member_id = e.member_id AND k.entry_id = e.id
                   AND k.scope = CASE e.kind WHEN 'accrual' THEN 'transaction' ELSE 'reversal' END
            WHERE e.kind IN ('accrual', 'reversal')
            GROUP BY e.member_id, e.id, e.kind
           HAVING count(k.key) <> 1""",
    ),
    Check(
        "transactions_have_records",
        "every booked transaction has its idempotency record, and posted under it at most once",
        """SELECT t.member_id, t.transaction_id FROM transactions t
            WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.scope = 'transaction'
                                 AND k.key = t.transaction_id AND k.member_id = t.member_id)
               OR (SELECT count(*) FROM journal_entries e WHERE e.member_id = t.member_id
                      AND e.kind = 'accrual' AND e.source_ref = t.transaction_id) > 1""",
    ),
    Check(
        "refunds_within_earnings",
        "refunds never take back more than the transaction earned or its amount",
        """SELECT t.member_id, t.transaction_id, t.points, coalesce(r.points, 0) AS reversed, t.amount,
                  coalesce(r.amount, 0) AS refunded
             FROM transactions t
             LEFT JOIN (SELECT member_id, transaction_id, sum(points) AS points, sum(amount) AS amount
                          FROM reversals GROUP BY member_id, transaction_id) r
                    ON r.member_id = t.member_id AND r.transaction_id = t.transaction_id
            WHERE coalesce(r.points, 0) > t.points OR coalesce(r.amount, 0) > t.amount""",
    ),
    HASH_CHAIN,
]


def run(conn: Connection, *, examples: int = 5) -> list[Outcome]:
    """Run every check; each outcome counts the breaking rows and shows a few."""
    outcomes = []
    for check in CHECKS:
        if check.compute is not None:
            outcomes.append(check.compute(conn, examples))
            continue
        count = conn.execute(sa.text(f"SELECT count(*) FROM ({check.sql}) broken")).scalar_one()
        rows = []
        if count:
            rows = [dict(r._mapping) for r in conn.execute(sa.text(f"{check.sql} LIMIT {examples}"))]
        outcomes.append(Outcome(check, int(count), rows))
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = "ok  " if o.ok else "FAIL"
        lines.append(
            f"{mark} {o.check.name}: {o.check.invariant}"
            + ("" if o.ok else f" ({o.count} broken)")
            + (f" ({o.note})" if o.note else "")
        )
        for ex in o.examples:
            lines.append("       " + ", ".join(f"{k}={v}" for k, v in ex.items()))
    broken = sum(1 for o in outcomes if not o.ok)
    lines.append("ledger verified: every invariant holds" if not broken else f"{broken} invariant(s) broken")
    return "\n".join(lines)
