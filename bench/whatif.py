"""What-if patches: measure candidate fixes without touching the service code.

The patches are applied in memory to this process only; the shipped code in
loyalty/ is unchanged. ``bench/accrual.py`` uses this module as gunicorn's app
(``whatif:app``, bench/ on PYTHONPATH) for a ``--gunicorn ...,whatif=a+b``
configuration or with ``--whatif a,b``, and as the importer
(``python bench/whatif.py import-transactions ...``) with ``--whatif``, passing
``BENCH_WHATIF=NAMES`` in the environment. The patches target the service
code of commit 30e76ee; later changes to it may make them stale. NAMES is a comma-separated list of:

``claim``    make ``INSERT ... ON CONFLICT DO NOTHING`` cacheable (SQLAlchemy's
             PostgreSQL ``Insert`` has ``inherit_cache = False`` and its conflict
             clause no cache key, so such a statement is compiled afresh on every
             execution); the booking path claims with a cached ``text()`` since
             commit 30e76ee, so this now only affects other ``insert_ignore`` users
``noping``   ``pool_pre_ping=False``: no ``SELECT 1`` round trip per checkout
``facts``    ``TransactionCommand.facts()`` as a shallow dict instead of
             ``dataclasses.asdict`` (which deep-copies every value); the
             service does this itself since commit 9a65ae1, so now a no-op
``onestmt``  API (PostgreSQL): one prebuilt statement locks the member and reads
             its facts and balance (EXISTS, not count(), for "first of its
             type"); the entry's rows are computed in Python (the existing
             ledger.accrual_rows); ONE statement of data-modifying CTEs then
             writes claim, balance, entry, postings, lots, consumptions and
             the transaction row, all guarded by the claim. Three round trips
             (plus the caps query) instead of about nine. A replay, a zero-point
             transaction or SQLite takes the original path. A prototype for
             measuring, not production code.
``all``      every patch above
"""

from __future__ import annotations

import os
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

PATCHES = ("claim", "noping", "facts", "onestmt")


def enabled() -> set[str]:
    names = {n.strip() for n in os.environ.get("BENCH_WHATIF", "").split(",") if n.strip()}
    if "all" in names:
        names = set(PATCHES)
    unknown = names - set(PATCHES)
    if unknown:
        raise SystemExit(f"BENCH_WHATIF: unknown patch(es) {', '.join(sorted(unknown))}; known: {', '.join(PATCHES)}")
    return names


# --------------------------------------------------------------------------- claim


class _PgDoNothing(postgresql.dml.OnConflictDoNothing):
    """A bare ``ON CONFLICT DO NOTHING``: no target, nothing that varies, so its class is its cache key."""

    inherit_cache = True
    _traverse_internals: list[Any] = []


class _SqliteDoNothing(sqlite.dml.OnConflictDoNothing):
    inherit_cache = True
    _traverse_internals: list[Any] = []


class PgInsertIgnore(postgresql.Insert):
    """``INSERT ... ON CONFLICT DO NOTHING`` that SQLAlchemy can cache. (Stock
    ``postgresql.Insert`` has ``inherit_cache = False`` and its conflict clauses
    no cache key, so every claim is compiled afresh: about 11% of a worker's CPU.)"""

    inherit_cache = True

    def __init__(self, table: sa.Table) -> None:
        super().__init__(table)
        self._post_values_clause = _PgDoNothing()


class SqliteInsertIgnore(sqlite.Insert):
    inherit_cache = True

    def __init__(self, table: sa.Table) -> None:
        super().__init__(table)
        self._post_values_clause = _SqliteDoNothing()


def insert_ignore(conn: Connection, table: sa.Table) -> sa.Insert:
    return PgInsertIgnore(table) if conn.dialect.name == "postgresql" else SqliteInsertIgnore(table)


def patch_claim() -> None:
    import loyalty.accrual.importer
    import loyalty.accrual.service
    import loyalty.api.transactions
    import loyalty.db
    import loyalty.members.service

    for module in (
        loyalty.db,
        loyalty.accrual.service,
        loyalty.accrual.importer,
        loyalty.api.transactions,
        loyalty.members.service,
    ):
        module.insert_ignore = insert_ignore  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- facts


def patch_facts() -> None:
    from loyalty.accrual.service import TransactionCommand

    def facts(self: TransactionCommand) -> dict[str, Any]:
        return dict(self.__dict__)  # every field is immutable: str, int, aware datetime, None

    TransactionCommand.facts = facts  # type: ignore[method-assign]


# --------------------------------------------------------------------------- onestmt (API)

#: The member's facts, read under the row lock, as in loyalty.accrual.context.lock_and_read, but
#: built once (no SQLAlchemy expression building per request), with the balance and entry counter
#: so that the accrual's rows can be computed before writing, and EXISTS instead of count() for
#: "first of its type" (count() reads the member's whole history).
LOCK_AND_READ = """
SELECT m.birth_date, m.enrolled_at, a.balance, a.entry_seq, a.chain_head,
       (SELECT count(*) FROM transactions t
         WHERE t.member_id = :member AND t.occurred_at >= :month0 AND t.occurred_at < :month1) AS month_count,
       EXISTS (SELECT 1 FROM transactions t WHERE t.member_id = :member AND t.type = :type) AS had_type,
       (SELECT max(t.occurred_at) FROM transactions t
         WHERE t.member_id = :member AND t.occurred_at <= :moment) AS last_at
  FROM member_accounts a JOIN members m ON m.member_id = a.member_id
 WHERE a.member_id = :member
   FOR UPDATE OF a
"""

#: Every write of an accrual in one statement, each guarded by the idempotency claim.
WRITE_ACCRUAL = """
WITH claim AS (
    INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at)
    VALUES ('transaction', :tid, :digest, :member, CAST(:entry AS uuid), :now)
    ON CONFLICT DO NOTHING
    RETURNING key
), acct AS (
    UPDATE member_accounts SET balance = :balance, entry_seq = :seq, chain_head = :head, last_activity_at = :now
     WHERE member_id = :member AND EXISTS (SELECT 1 FROM claim)
    RETURNING member_id
), entry_key AS (
    INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at)
    SELECT :member, CAST(:entry AS uuid), :seq, 'accrual', :tid, :now FROM acct
), entry AS (
    INSERT INTO journal_entries (member_id, id, seq, kind, source_ref, points, balance_after,
                                 transaction_id, programme_version, posted_at, occurred_at, chain_hash)
    SELECT :member, CAST(:entry AS uuid), :seq, 'accrual', :tid, :points, :balance, :tid, :version, :now,
           :occurred, :head
      FROM acct
), lines AS (
    INSERT INTO postings (member_id, entry_id, line, account, amount, rule_id, posted_at)
    SELECT :member, CAST(:entry AS uuid), u.line, u.account, u.amount, u.rule_id, :now
      FROM acct, unnest(CAST(:p_line AS int[]), CAST(:p_account AS text[]), CAST(:p_amount AS bigint[]),
                        CAST(:p_rule AS text[])) AS u(line, account, amount, rule_id)
), lots AS (
    INSERT INTO point_lots (member_id, id, entry_id, rule_id, reason, funding_source, qualifying,
                            original, remaining, earned_at, expires_at)
    SELECT :member, CAST(u.id AS uuid), CAST(:entry AS uuid), u.rule_id, u.reason, u.funding, u.qualifying,
           u.original, u.remaining, :occurred, :expires
      FROM acct, unnest(CAST(:l_id AS text[]), CAST(:l_rule AS text[]), CAST(:l_reason AS text[]),
                        CAST(:l_funding AS text[]), CAST(:l_qualifying AS boolean[]), CAST(:l_original AS bigint[]),
                        CAST(:l_remaining AS bigint[]))
           AS u(id, rule_id, reason, funding, qualifying, original, remaining)
    RETURNING id
), debt AS (
    INSERT INTO lot_consumptions (member_id, entry_id, lot_id, points)
    SELECT :member, CAST(:entry AS uuid), CAST(u.lot AS uuid), u.points
      FROM acct, unnest(CAST(:c_lot AS text[]), CAST(:c_points AS bigint[])) AS u(lot, points)
     WHERE (SELECT count(*) FROM lots) > 0
), txn AS (
    INSERT INTO transactions (member_id, transaction_id, type, amount, currency, occurred_at, channel, mcc,
                              merchant, points, entry_id, balance_after, programme_version, received_at)
    SELECT :member, :tid, :type, :amount, :currency, :occurred, :channel, :mcc, :merchant, :points,
           CAST(:entry AS uuid), :balance, :version, :now FROM acct
)
SELECT (SELECT count(*) FROM claim) AS claimed, (SELECT count(*) FROM acct) AS booked
"""


def patch_onestmt() -> None:
    import loyalty.accrual.service as svc
    from loyalty import calendar
    from loyalty.accrual import context
    from loyalty.ledger import service as ledger
    from rules import evaluate
    from rules.evaluate import compiled

    original = svc.record_transaction
    lock_sql = sa.text(LOCK_AND_READ)
    write_sql = sa.text(WRITE_ACCRUAL)

    def record_transaction(conn: Connection, cmd: Any, *, programme: Any, now: Any, current: Any = None) -> Any:
        # Measures the ledger write alone: the tier, lifecycle and event writes that
        # follow a booking are not part of this prototype.
        if conn.dialect.name != "postgresql":
            return original(conn, cmd, programme=programme, now=now, current=current)
        moment = cmd.occurred_at
        month0, month1 = calendar.month(moment, programme.zone)
        row = conn.execute(
            lock_sql, {"member": cmd.member_id, "month0": month0, "month1": month1, "type": cmd.type, "moment": moment}
        ).first()
        if row is None:
            raise svc.UnknownMember(f"member {cmd.member_id!r} is not enrolled", field="member_id")
        member = context.member_facts(
            row.birth_date, context.aware(row.enrolled_at), moment, programme.zone, tier=programme.ladder.floor
        )
        last = context.aware(row.last_at)
        member.update(
            transactions_this_month=int(row.month_count) + 1,
            first_of_type=not row.had_type,
            days_since_last_transaction=(
                None if last is None else max(0, calendar.days_between(last, moment, programme.zone))
            ),
        )
        used = (
            context.usage(conn, cmd.member_id, moment=moment, programme=programme)
            if compiled(programme).needs_usage
            else None
        )
        facts = cmd.facts()
        awards = evaluate(programme, "transaction", {**facts, **member}, used)
        if not awards:  # earns nothing: the original path (it takes the lock again, harmlessly)
            return original(conn, cmd, programme=programme, now=now)
        total = sum(a.points for a in awards)
        entry_id = ledger.new_id()
        seq, balance = int(row.entry_seq) + 1, int(row.balance) + total
        built = ledger.accrual_rows(
            cmd.member_id,
            awards,
            entry_id=entry_id,
            seq=seq,
            balance_after=balance,
            prev_hash=row.chain_head,
            kind="accrual",
            source_ref=cmd.transaction_id,
            earned_at=moment,
            expires_at=ledger.lot_expiry(programme, moment, member["tier"]),
            now=now,
            transaction_id=cmd.transaction_id,
            programme_version=programme.version,
        )
        lots, cons = built.lots, built.consumptions
        result = conn.execute(
            write_sql,
            {
                "tid": cmd.transaction_id,
                "digest": svc.request_hash(facts),
                "member": cmd.member_id,
                "entry": entry_id,
                "now": now,
                "balance": balance,
                "seq": seq,
                "head": built.entry["chain_hash"],
                "points": total,
                "version": programme.version,
                "type": cmd.type,
                "amount": cmd.amount,
                "currency": cmd.currency,
                "occurred": moment,
                "channel": cmd.channel,
                "mcc": cmd.mcc,
                "merchant": cmd.merchant,
                "expires": lots[0]["expires_at"],
                "p_line": [p["line"] for p in built.postings],
                "p_account": [p["account"] for p in built.postings],
                "p_amount": [p["amount"] for p in built.postings],
                "p_rule": [p["rule_id"] for p in built.postings],
                "l_id": [x["id"] for x in lots],
                "l_rule": [x["rule_id"] for x in lots],
                "l_reason": [x["reason"] for x in lots],
                "l_funding": [x["funding_source"] for x in lots],
                "l_qualifying": [x["qualifying"] for x in lots],
                "l_original": [x["original"] for x in lots],
                "l_remaining": [x["remaining"] for x in lots],
                "c_lot": [c["lot_id"] for c in cons],
                "c_points": [c["points"] for c in cons],
            },
        ).one()
        if not result.claimed:  # a replay or a conflict: the original path answers it
            return original(conn, cmd, programme=programme, now=now)
        return svc.Result(201, svc._transaction_json(cmd, total, entry_id, balance, programme.version, awards))

    svc.record_transaction = record_transaction


# --------------------------------------------------------------------------- entry points


def apply() -> set[str]:
    names = enabled()
    if "claim" in names:
        patch_claim()
    if "facts" in names:
        patch_facts()
    if "onestmt" in names:
        patch_onestmt()
    print(f"bench/whatif.py: patches applied in memory: {', '.join(sorted(names)) or '(none)'}", file=sys.stderr)
    return names


def make_app() -> Any:
    from loyalty.app import create_app
    from loyalty.runtime import make_runtime

    names = apply()
    kwargs = {"pool_pre_ping": False} if "noping" in names else {}
    return create_app(make_runtime(**kwargs))


if __name__ == "__main__":
    # Run as `python bench/whatif.py`: bench/ is first on sys.path, where bench/rules.py would
    # shadow the `rules` package. Put the repository root there instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = apply()
    if "noping" in names:
        import loyalty.db

        original = loyalty.db.make_engine

        def make_engine(url: str, **kwargs: object) -> sa.Engine:
            kwargs.setdefault("pool_pre_ping", False)
            return original(url, **kwargs)

        import loyalty

        loyalty.make_engine = make_engine  # type: ignore[attr-defined]
    from loyalty.cli import main

    sys.exit(main())
else:
    app = make_app()  # gunicorn --pythonpath bench whatif:app
