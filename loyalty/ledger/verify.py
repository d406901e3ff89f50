"""``loyalty verify``: prove the ledger's invariants over the whole database.

Every check is one set-based query that returns the rows breaking it, so a
clean run is a proof over all the data, not a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class Check:
    name: str
    invariant: str
    sql: str


@dataclass
class Outcome:
    check: Check
    count: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.count == 0


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
]


def run(conn: Connection, *, examples: int = 5) -> list[Outcome]:
    """Run every check; each outcome counts the breaking rows and shows a few."""
    outcomes = []
    for check in CHECKS:
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
        lines.append(f"{mark} {o.check.name}: {o.check.invariant}" + ("" if o.ok else f" ({o.count} broken)"))
        for ex in o.examples:
            lines.append("       " + ", ".join(f"{k}={v}" for k, v in ex.items()))
    broken = sum(1 for o in outcomes if not o.ok)
    lines.append("ledger verified: every invariant holds" if not broken else f"{broken} invariant(s) broken")
    return "\n".join(lines)
