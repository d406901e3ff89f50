"""``loyalty verify`` finds each broken invariant; the database refuses to break some itself.

Each case builds a healthy ledger through the services, then breaks one
invariant with raw SQL behind the application's back (triggers and foreign
keys switched off for that one transaction), and runs the real CLI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.cli import main
from loyalty.db import transaction
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import entry_keys, journal_entries, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.runtime import Runtime

APPEND_ONLY = ("journal_entries", "entry_keys", "postings", "lot_consumptions")
CHECK_NAMES = [c.name for c in verify.CHECKS]


# --- a healthy ledger ---------------------------------------------------------


def build_healthy_ledger(rt: Runtime) -> None:
    """Two members with every kind of entry the ledger has so far.

    m1: welcome bonus, a card purchase, a partial refund, a captured hold, a
    pending hold, a transfer that earns nothing. m2: spends its points, then a
    full refund leaves its balance negative (legitimate under the default policy).
    """
    now = rt.now()

    def buy(member_id: str, transaction_id: str, fen: int, type: str = "card_purchase") -> None:
        cmd = TransactionCommand(transaction_id, member_id, type, fen, "CNY", now - dt.timedelta(hours=1))
        with transaction(rt.engine) as conn:
            assert accrual.record_transaction(conn, cmd, programme=rt.programme, now=now).created

    def refund(transaction_id: str, reversal_id: str, fen: int) -> None:
        with transaction(rt.engine) as conn:
            accrual.reverse(conn, ReversalCommand(transaction_id, reversal_id, fen), policy="negative", now=now)

    def hold(member_id: str, hold_id: str, points: int, settle: str | None) -> None:
        with transaction(rt.engine) as conn:
            ledger.hold(conn, member_id, hold_id, points, capture_account="redeemed:unspecified", now=now)
            if settle == "capture":
                ledger.capture(conn, member_id, hold_id, now=now)

    for member_id in ("m1", "m2"):
        with transaction(rt.engine) as conn:
            members.enrol(conn, Enrolment(member_id), programme=rt.programme, now=now)
    buy("m1", "t1", 12_345)
    refund("t1", "r1", 5_000)
    hold("m1", "h1", 200, "capture")
    hold("m1", "h2", 50, None)
    buy("m1", "x1", 80_000, type="bill_payment")
    buy("m2", "t2", 30_000)
    hold("m2", "h3", 700, "capture")
    refund("t2", "r2", 30_000)
    with transaction(rt.engine, readonly=True) as conn:
        balances = dict(conn.execute(sa.text("SELECT member_id, balance FROM member_accounts")).all())
    assert balances == {"m1": 574 - 250, "m2": -200}


@pytest.fixture
def healthy(runtime: Runtime) -> Runtime:
    build_healthy_ledger(runtime)
    return runtime


# --- running the CLI ---------------------------------------------------------


@dataclasses.dataclass
class VerifyRun:
    exit_code: int
    output: str
    failed: set[str]
    passed: set[str]


def run_verify_cli(database_url: str) -> VerifyRun:
    result = CliRunner().invoke(main, ["verify"], env={"LOYALTY_DATABASE_URL": database_url})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    failed = set(re.findall(r"^FAIL (\w+):", result.output, flags=re.M))
    passed = set(re.findall(r"^ok   (\w+):", result.output, flags=re.M))
    return VerifyRun(result.exit_code, result.output, failed, passed)


# --- breaking the ledger behind the application's back -----------------------


@contextmanager
def behind_the_back(database_url: str) -> Iterator[sa.Connection]:
    """A raw connection with the ledger's guards off, for one transaction.

    SQLite: a plain connection (foreign keys are off unless switched on) and
    the append-only triggers dropped. PostgreSQL: replica mode for this
    transaction only, which silences the append-only and balance triggers and
    the foreign-key checks; the next transaction has them all back.
    """
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                for table in APPEND_ONLY:
                    for action in ("update", "delete"):
                        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
            else:
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield conn
    finally:
        engine.dispose()


def new_uuid() -> str:
    # 32 hex digits: what SQLite stores for a UUID, and valid uuid input for PostgreSQL.
    return uuid.uuid4().hex


ENTRY = "(SELECT id FROM journal_entries WHERE member_id = 'm1' AND kind = :kind AND source_ref = :ref)"


def unbalance_two_entries(conn: sa.Connection) -> None:
    """Move 7 points between two entries on the same account: each entry is off, the ledger still sums to zero."""
    for kind, ref, amount in (("accrual", "t1", 7), ("bonus", "account_opened", -7)):
        conn.execute(
            sa.text(
                "INSERT INTO postings (member_id, entry_id, line, account, amount, posted_at) "
                "SELECT member_id, id, 99, 'issued:bank', :amount, posted_at FROM journal_entries "
                "WHERE member_id = 'm1' AND kind = :kind AND source_ref = :ref"
            ),
            {"amount": amount, "kind": kind, "ref": ref},
        )


def edit_one_posting(conn: sa.Connection) -> None:
    """Change one line of an entry: the entry and so the whole ledger no longer sum to zero."""
    conn.execute(
        sa.text(
            f"UPDATE postings SET amount = amount - 1 WHERE member_id = 'm1' AND account = 'issued:bank' "
            f"AND entry_id = {ENTRY}"
        ),
        {"kind": "accrual", "ref": "t1"},
    )


def orphan_postings(conn: sa.Connection) -> None:
    """A balanced pair of postings under an entry that does not exist."""
    entry_id = new_uuid()
    for line, account, amount in ((1, "issued:bank", -5), (2, "adjustments", 5)):
        conn.execute(
            sa.text(
                "INSERT INTO postings (member_id, entry_id, line, account, amount, posted_at) "
                "VALUES ('m1', :entry, :line, :account, :amount, CURRENT_TIMESTAMP)"
            ),
            {"entry": entry_id, "line": line, "account": account, "amount": amount},
        )


def credit_member_posting(conn: sa.Connection) -> None:
    """Shift 10 points inside one entry from the issuer to the member: balanced, but the stored balance is off."""
    for account, delta in (("member", 10), ("issued:bank", -10)):
        conn.execute(
            sa.text(
                f"UPDATE postings SET amount = amount + :delta WHERE member_id = 'm1' AND account = :account "
                f"AND entry_id = {ENTRY}"
            ),
            {"delta": delta, "account": account, "kind": "accrual", "ref": "t1"},
        )


def grow_a_lot(conn: sa.Connection) -> None:
    """A lot grows by 10 (original and remaining alike): consistent with itself, not with the balance."""
    conn.execute(
        sa.text(
            f"UPDATE point_lots SET original = original + 10, remaining = remaining + 10 "
            f"WHERE member_id = 'm1' AND entry_id = {ENTRY}"
        ),
        {"kind": "accrual", "ref": "t1"},
    )


def inflate_a_lot_original(conn: sa.Connection) -> None:
    """A lot's original points change while nothing consumed the difference."""
    conn.execute(
        sa.text(f"UPDATE point_lots SET original = original + 5 WHERE member_id = 'm1' AND entry_id = {ENTRY}"),
        {"kind": "bonus", "ref": "account_opened"},
    )


def grow_a_pending_hold(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE holds SET points = points + 5 WHERE member_id = 'm1' AND id = 'h2'"))


def relabel_negative_refund_as_hold(conn: sa.Connection) -> None:
    """m2's refund legitimately left -200; as a hold, that entry would have overdrawn."""
    conn.execute(sa.text("UPDATE journal_entries SET kind = 'hold' WHERE member_id = 'm2' AND kind = 'reversal'"))


def forget_an_entry_key(conn: sa.Connection) -> None:
    conn.execute(sa.text("DELETE FROM entry_keys WHERE member_id = 'm1' AND seq = 1"))


def move_an_entry_to_a_month_without_partitions(conn: sa.Connection) -> None:
    """m1's first entry, its postings and its key, five years on: into the DEFAULT partitions."""
    for table, id_column in (("journal_entries", "id"), ("postings", "entry_id"), ("entry_keys", "entry_id")):
        conn.execute(
            sa.text(
                f"UPDATE {table} SET posted_at = posted_at + interval '5 years' WHERE member_id = 'm1' "
                f"AND {id_column} = (SELECT entry_id FROM entry_keys WHERE member_id = 'm1' AND seq = 1)"
            )
        )


def edit_a_balance_after(conn: sa.Connection) -> None:
    conn.execute(
        sa.text("UPDATE journal_entries SET balance_after = balance_after + 1 WHERE member_id = 'm1' AND seq = 2")
    )


def bump_entry_counter(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE member_accounts SET entry_seq = entry_seq + 1 WHERE member_id = 'm1'"))


def record_naming_missing_entry(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at) "
            "VALUES ('request:abcd', 'k1', :hash, 'm1', :entry, CURRENT_TIMESTAMP)"
        ),
        {"hash": "0" * 64, "entry": new_uuid()},
    )


def second_record_for_a_reversal(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at) "
            "SELECT scope, 'r1-again', request_hash, member_id, entry_id, created_at FROM idempotency_keys "
            "WHERE scope = 'reversal' AND key = 'r1'"
        )
    )


def forget_a_transaction_record(conn: sa.Connection) -> None:
    """The transfer x1 earned nothing, so only its own record goes missing."""
    conn.execute(sa.text("DELETE FROM idempotency_keys WHERE scope = 'transaction' AND key = 'x1'"))


def refund_more_than_the_amount(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE reversals SET amount = amount + 12345 WHERE member_id = 'm1' AND reversal_id = 'r1'"))


def relabel_a_posting_rule(conn: sa.Connection) -> None:
    """Credit the purchase's points to another rule: every sum still agrees, only the chain sees it."""
    conn.execute(
        sa.text(
            f"UPDATE postings SET rule_id = 'double-11' WHERE member_id = 'm1' AND account = 'member' "
            f"AND entry_id = {ENTRY}"
        ),
        {"kind": "accrual", "ref": "t1"},
    )


def refund_more_points_than_earned(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            "UPDATE reversals SET points_due = points_due + 100, points = points + 100 "
            "WHERE member_id = 'm1' AND reversal_id = 'r1'"
        )
    )


#: (check named by the case, how to break it, every check that must then fail)
BREAKAGES = [
    ("entries_balance", unbalance_two_entries, {"entries_balance", "hash_chain"}),
    ("ledger_balances", edit_one_posting, {"entries_balance", "ledger_balances", "hash_chain"}),
    ("postings_have_entries", orphan_postings, {"postings_have_entries"}),
    ("balance_equals_postings", credit_member_posting, {"balance_equals_postings", "hash_chain"}),
    ("balance_equals_lots", grow_a_lot, {"balance_equals_lots"}),
    ("lots_equal_consumptions", inflate_a_lot_original, {"lots_equal_consumptions"}),
    ("held_equals_holds", grow_a_pending_hold, {"held_equals_holds"}),
    ("entries_have_keys", forget_an_entry_key, {"entries_have_keys"}),
    # the entry's kind is also its key's
    (
        "spending_never_overdraws",
        relabel_negative_refund_as_hold,
        {"spending_never_overdraws", "entries_have_keys", "hash_chain"},
    ),
    ("statement_chain", edit_a_balance_after, {"statement_chain", "hash_chain"}),
    ("entry_count_matches_account", bump_entry_counter, {"entry_count_matches_account"}),
    ("idempotency_records_point_at_one_entry", record_naming_missing_entry, {"idempotency_records_point_at_one_entry"}),
    ("entries_have_one_idempotency_record", second_record_for_a_reversal, {"entries_have_one_idempotency_record"}),
    ("transactions_have_records", forget_a_transaction_record, {"transactions_have_records"}),
    ("refunds_within_earnings", refund_more_than_the_amount, {"refunds_within_earnings"}),
    ("refunds_within_earnings", refund_more_points_than_earned, {"refunds_within_earnings"}),
    ("hash_chain", relabel_a_posting_rule, {"hash_chain"}),
]


#: Breakages only PostgreSQL can have: it alone partitions the journal.
POSTGRES_BREAKAGES = [
    (
        "default_partitions_empty",
        move_an_entry_to_a_month_without_partitions,
        {"default_partitions_empty", "hash_chain"},
    ),
]


def test_every_check_has_a_breakage():
    assert {name for name, _, _ in BREAKAGES + POSTGRES_BREAKAGES} == set(CHECK_NAMES)
    assert len(CHECK_NAMES) == len(set(CHECK_NAMES))


@pytest.mark.committed
def test_verify_passes_a_healthy_ledger(healthy, database_url):
    run = run_verify_cli(database_url)
    assert run.exit_code == 0, run.output
    assert run.failed == set()
    assert run.passed == set(CHECK_NAMES)
    assert "ledger verified: every invariant holds" in run.output


@pytest.mark.committed
def test_verify_passes_an_empty_ledger(runtime, database_url):
    run = run_verify_cli(database_url)
    assert run.exit_code == 0, run.output
    assert run.passed == set(CHECK_NAMES)


@pytest.mark.parametrize(
    ("check", "breakage", "expected"),
    BREAKAGES + [pytest.param(*b, marks=pytest.mark.postgres_only) for b in POSTGRES_BREAKAGES],
    ids=[f"{c}-{b.__name__}" for c, b, _ in BREAKAGES + POSTGRES_BREAKAGES],
)
@pytest.mark.committed
def test_verify_names_the_broken_invariant(healthy, database_url, check, breakage, expected):
    assert check in expected
    assert run_verify_cli(database_url).exit_code == 0
    with behind_the_back(database_url) as conn:
        breakage(conn)
    run = run_verify_cli(database_url)
    assert run.exit_code == 1, run.output
    assert run.failed == expected, run.output
    assert run.passed == set(CHECK_NAMES) - expected
    assert f"{len(expected)} invariant(s) broken" in run.output
    # The report shows the rows that break the invariant.
    failing = run.output.split(f"FAIL {check}:", 1)[1].splitlines()
    assert failing[1].startswith("       "), run.output


@pytest.mark.committed
def test_verify_counts_every_broken_row(healthy, database_url):
    with behind_the_back(database_url) as conn:
        conn.execute(sa.text("UPDATE member_accounts SET entry_seq = entry_seq + 1"))
    with transaction(healthy.engine, readonly=True) as conn:
        outcomes = {o.check.name: o for o in verify.run(conn)}
    broken = outcomes["entry_count_matches_account"]
    assert broken.count == 2
    assert sorted(row["member_id"] for row in broken.examples) == ["m1", "m2"]
    assert all(o.ok for name, o in outcomes.items() if name != "entry_count_matches_account")


# --- the database refuses on its own -------------------------------------------


@pytest.mark.parametrize("table", APPEND_ONLY)
@pytest.mark.parametrize("statement", ["UPDATE {table} SET member_id = member_id", "DELETE FROM {table}"])
def test_database_refuses_to_rewrite_the_ledger(healthy, table, statement):
    """Append-only tables: neither PostgreSQL nor SQLite lets a row change or go."""
    with transaction(healthy.engine, readonly=True) as conn:
        before = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    assert before > 0
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(healthy.engine) as conn:
        conn.exec_driver_sql(statement.format(table=table))
    with transaction(healthy.engine, readonly=True) as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == before
        assert all(o.ok for o in verify.run(conn))


def _entry(rt: Runtime, conn: sa.Connection, seq: int) -> str:
    entry_id = ledger.new_id()
    key = {"member_id": "m1", "seq": seq, "kind": "adjustment", "source_ref": f"adj-{seq}", "posted_at": rt.now()}
    conn.execute(entry_keys.insert().values(entry_id=entry_id, **key))
    conn.execute(journal_entries.insert().values(id=entry_id, points=10, balance_after=0, **key))
    return entry_id


def _posting(rt: Runtime, conn: sa.Connection, entry_id: str, line: int, account: str, amount: int) -> None:
    conn.execute(
        postings.insert().values(
            member_id="m1", entry_id=entry_id, line=line, account=account, amount=amount, posted_at=rt.now()
        )
    )


@pytest.mark.postgres_only
def test_postgres_refuses_an_unbalanced_entry_at_commit(healthy):
    rt = healthy
    with transaction(rt.engine, readonly=True) as conn:
        entries_before = conn.execute(sa.text("SELECT count(*) FROM journal_entries")).scalar_one()
    reached_commit = False
    with pytest.raises(sa.exc.IntegrityError, match="does not balance"), transaction(rt.engine) as conn:
        entry_id = _entry(rt, conn, 100)
        _posting(rt, conn, entry_id, 1, "member", 10)
        _posting(rt, conn, entry_id, 2, "adjustments", -9)
        # Every statement succeeded: the trigger is deferred to COMMIT.
        reached_commit = True
    assert reached_commit
    with transaction(rt.engine, readonly=True) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM journal_entries")).scalar_one() == entries_before
        assert all(o.ok for o in verify.run(conn))


@pytest.mark.postgres_only
def test_postgres_refuses_a_one_line_entry_at_commit(healthy):
    rt = healthy
    with pytest.raises(sa.exc.IntegrityError, match="1 postings"), transaction(rt.engine) as conn:
        _posting(rt, conn, _entry(rt, conn, 100), 1, "adjustments", 10)


@pytest.mark.postgres_only
def test_postgres_checks_balance_per_entry_not_per_transaction(healthy):
    """Two entries that are each off by the same amount in opposite ways still fail."""
    rt = healthy
    with pytest.raises(sa.exc.IntegrityError, match="does not balance"), transaction(rt.engine) as conn:
        a, b = _entry(rt, conn, 100), _entry(rt, conn, 101)
        _posting(rt, conn, a, 1, "member", 10)
        _posting(rt, conn, a, 2, "adjustments", -11)
        _posting(rt, conn, b, 1, "member", 10)
        _posting(rt, conn, b, 2, "adjustments", -9)


@pytest.mark.postgres_only
def test_postgres_accepts_an_entry_balanced_only_by_its_last_line(healthy):
    """The check waits for COMMIT, so an entry may be written one line at a time."""
    rt = healthy
    with transaction(rt.engine) as conn:
        entry_id = _entry(rt, conn, 100)
        _posting(rt, conn, entry_id, 1, "issued:bank", -4)
        _posting(rt, conn, entry_id, 2, "adjustments", -6)
        _posting(rt, conn, entry_id, 3, "redeemed:unspecified", 10)
    with transaction(rt.engine, readonly=True) as conn:
        lines = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(postings.c.amount)).where(postings.c.entry_id == entry_id)
        ).one()
    assert tuple(lines) == (3, 0)


@pytest.mark.postgres_only
@pytest.mark.committed
def test_replica_mode_for_tampering_does_not_outlive_its_transaction(healthy, database_url):
    with behind_the_back(database_url) as conn:
        assert conn.exec_driver_sql("SHOW session_replication_role").scalar_one() == "replica"
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(healthy.engine) as conn:
        conn.exec_driver_sql("DELETE FROM postings")
