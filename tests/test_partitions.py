"""The journal partitioned by UTC month on PostgreSQL: where rows land, the ``partitions`` job, the
keys that hold across months (``entry_keys``), and the migration from the unpartitioned tables."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import migrate
from loyalty.accrual import service as accrual
from loyalty.accrual.service import TransactionCommand
from loyalty.db import transaction
from loyalty.finance import reports
from loyalty.jobs.runner import run_job
from loyalty.ledger import partitions, verify
from loyalty.ledger import service as ledger
from loyalty.ledger.models import entry_keys, journal_entries, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.runtime import Runtime
from tests.test_verify import behind_the_back, run_verify_cli

JUNE = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
JULY = dt.datetime(2026, 7, 2, 9, 0, tzinfo=dt.UTC)
#: Beyond the months the test database has partitions for (tests.conftest.TEST_MONTHS).
FAR = dt.datetime(2031, 2, 10, 12, 0, tzinfo=dt.UTC)


def enrol(rt: Runtime, member_id: str, now: dt.datetime) -> None:
    with transaction(rt.engine) as conn:
        members.enrol(conn, Enrolment(member_id), programme=rt.programme, now=now)


def buy(rt: Runtime, transaction_id: str, member_id: str, now: dt.datetime) -> None:
    cmd = TransactionCommand(transaction_id, member_id, "card_purchase", 50_000, "CNY", now - dt.timedelta(hours=1))
    with transaction(rt.engine) as conn:
        assert accrual.record_transaction(conn, cmd, programme=rt.programme, now=now).created


def placement(rt: Runtime, table: str) -> list[tuple[str, dt.datetime]]:
    """Each row of ``table``: the partition holding it, and its posting date."""
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(sa.text(f"SELECT tableoid::regclass::text AS part, posted_at FROM {table}"))  # noqa: S608
        return [(r.part, r.posted_at) for r in rows]


def in_their_months(rt: Runtime) -> None:
    for table in partitions.PARTITIONED:
        rows = placement(rt, table)
        assert rows
        assert all(part == f"{table}_{posted_at.astimezone(dt.UTC):%Y_%m}" for part, posted_at in rows), rows


def raw_entry(
    conn: sa.Connection,
    seq: int,
    posted_at: dt.datetime,
    *,
    kind: str = "adjustment",
    source_ref: str | None = None,
    key: bool = True,
    key_posted_at: dt.datetime | None = None,
    entry: bool = True,
    lines_posted_at: dt.datetime | None = None,
    lines: bool = True,
) -> str:
    """An entry of m1 written row by row, as the ledger writes it unless told otherwise."""
    entry_id = ledger.new_id()
    row = {"member_id": "m1", "seq": seq, "kind": kind, "source_ref": source_ref or f"raw-{seq}"}
    if key:
        conn.execute(entry_keys.insert().values(entry_id=entry_id, posted_at=key_posted_at or posted_at, **row))
    if entry:
        conn.execute(
            journal_entries.insert().values(id=entry_id, points=0, balance_after=0, posted_at=posted_at, **row)
        )
    if lines:
        at = lines_posted_at or posted_at
        line = {"member_id": "m1", "entry_id": entry_id, "posted_at": at}
        conn.execute(
            postings.insert(),
            [
                {**line, "line": 1, "account": "adjustments", "amount": 5},
                {**line, "line": 2, "account": "issued:bank", "amount": -5},
            ],
        )
    return entry_id


def refused(rt: Runtime, constraint: str, write: Any) -> None:
    with pytest.raises(sa.exc.IntegrityError, match=constraint), transaction(rt.engine) as conn:
        write(conn)


# --- where rows land ----------------------------------------------------------------------------


@pytest.mark.postgres_only
def test_rows_land_in_the_partition_of_their_utc_month(runtime, clock):
    enrol(runtime, "m1", JUNE)
    buy(runtime, "t1", "m1", JULY)
    august = dt.datetime(2026, 8, 1, 0, 1, tzinfo=dt.UTC)  # one minute into August in UTC
    with transaction(runtime.engine) as conn:
        ledger.adjust(conn, "m1", 5, source_ref="a1", reason="r", expires_at=FAR, now=august)
    in_their_months(runtime)
    parts = {part for part, _ in placement(runtime, "journal_entries")}
    assert parts == {"journal_entries_2026_06", "journal_entries_2026_07", "journal_entries_2026_08"}


@pytest.mark.postgres_only
def test_a_month_without_partitions_lands_in_default_and_the_job_will_not_create_it(runtime, clock):
    enrol(runtime, "m1", FAR)
    assert {part for part, _ in placement(runtime, "journal_entries")} == {"journal_entries_default"}
    assert {part for part, _ in placement(runtime, "postings")} == {"postings_default"}
    with transaction(runtime.engine, readonly=True) as conn:
        outcome = {o.check.name: o for o in verify.run(conn)}["default_partitions_empty"]
    assert not outcome.ok
    assert {(e["partition"], e["month"]) for e in outcome.examples} == {
        ("journal_entries_default", "2031-02"),
        ("postings_default", "2031-02"),
    }

    run = run_job(runtime, "partitions", as_of=FAR - dt.timedelta(days=40))  # January 2031 and three months on
    assert run["status"] == "failed"
    assert "2031-02 (1 rows in journal_entries_default)" in run["detail"]
    assert "2031-02 (2 rows in postings_default)" in run["detail"]
    with transaction(runtime.engine, readonly=True) as conn:
        assert dt.date(2031, 1, 1) not in partitions.existing_months(conn)  # created nothing, not even January

    # what docs/explanation/scaling.md tells an operator to do, for that very month
    with transaction(runtime.engine) as conn:
        for statement in documented_move():
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("SET LOCAL session_replication_role = origin")
    assert {part for part, _ in placement(runtime, "journal_entries")} == {"journal_entries_2031_02"}
    with transaction(runtime.engine, readonly=True) as conn:
        assert all(o.ok for o in verify.run(conn)), verify.report(verify.run(conn))
    assert run_job(runtime, "partitions", as_of=FAR - dt.timedelta(days=40))["status"] == "succeeded"


def documented_move() -> list[str]:
    """The statements of the documented move of a month out of the DEFAULT partitions, but for
    BEGIN and COMMIT (the test's transaction is theirs)."""
    text = (Path(__file__).parent.parent / "docs" / "explanation" / "scaling.md").read_text()
    [block] = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    statements = [s.strip() for s in block.split(";") if s.strip()]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    return statements[1:-1]


@pytest.mark.postgres_only
def test_the_job_creates_the_months_ahead_and_once(runtime):
    as_of = dt.datetime(2029, 1, 31, 23, 0, tzinfo=dt.UTC)
    first = run_job(runtime, "partitions", as_of=as_of)
    assert first["status"] == "succeeded", first
    ahead = ["2029_01", "2029_02", "2029_03", "2029_04"]  # the month and LOYALTY_PARTITION_MONTHS_AHEAD (3) on
    assert first["rows"] == 8
    assert re.findall(r"journal_entries_(\d{4}_\d{2})", first["detail"]) == ahead
    with transaction(runtime.engine, readonly=True) as conn:
        for table in partitions.PARTITIONED:
            months = partitions.existing_months(conn, table)
            assert {dt.date(2029, m, 1) for m in range(1, 5)} <= months
            assert dt.date(2029, 5, 1) not in months
    again = run_job(runtime, "partitions", as_of=as_of)
    assert (again["status"], again["rows"]) == ("succeeded", 0)
    assert again["detail"] == "every month from 2029-01 to 2029-04 has its partitions"
    # a row posted in one of them lands there
    enrol(runtime, "m1", dt.datetime(2029, 3, 3, tzinfo=dt.UTC))
    assert {part for part, _ in placement(runtime, "postings")} == {"postings_2029_03"}


def test_the_job_leaves_what_is_there_and_sqlite_alone(runtime, backend):
    run = run_job(runtime, "partitions")  # as of June 2026, whose months the test database has
    assert (run["status"], run["rows"]) == ("succeeded", 0)
    assert (
        run["detail"]
        == {
            "sqlite": "the journal is not partitioned on this database",
            "postgres": "every month from 2026-06 to 2026-09 has its partitions",
        }[backend]
    )


# --- keys across months -------------------------------------------------------------------------


@pytest.mark.postgres_only
def test_an_entrys_seq_and_source_are_unique_across_months(runtime):
    enrol(runtime, "m1", JUNE)  # its welcome bonus is entry 1
    with transaction(runtime.engine, readonly=True) as conn:
        bonus = conn.execute(sa.select(entry_keys).where(entry_keys.c.member_id == "m1")).one()
    refused(runtime, "uq_entry_keys_member_id_seq", lambda conn: raw_entry(conn, 1, JULY))
    refused(
        runtime,
        "uq_entry_keys_member_id_kind_source_ref",
        lambda conn: raw_entry(conn, 2, JULY, kind=bonus.kind, source_ref=bonus.source_ref),
    )
    with transaction(runtime.engine) as conn:  # the same in another month, but for the seq and the source
        raw_entry(conn, 2, JULY, kind=bonus.kind, source_ref="another")


@pytest.mark.postgres_only
def test_a_posting_names_its_entry_and_the_entrys_posting_date(runtime):
    enrol(runtime, "m1", JUNE)
    fk = "fk_postings_member_id_entry_id_posted_at_journal_entries"
    refused(runtime, fk, lambda conn: raw_entry(conn, 2, JUNE, key=False, entry=False))  # no such entry
    refused(runtime, fk, lambda conn: raw_entry(conn, 2, JUNE, lines_posted_at=JUNE + dt.timedelta(seconds=1)))
    refused(runtime, fk, lambda conn: raw_entry(conn, 2, JUNE, lines_posted_at=JULY))  # in another partition
    with transaction(runtime.engine) as conn:
        raw_entry(conn, 2, JUNE)


@pytest.mark.postgres_only
def test_an_entry_and_its_key_come_together(runtime):
    enrol(runtime, "m1", JUNE)
    refused(runtime, "fk_journal_entries_member_id_id_entry_keys", lambda conn: raw_entry(conn, 2, JUNE, key=False))
    # a key alone is refused at commit: its entry is written after it
    refused(
        runtime,
        "fk_entry_keys_member_id_entry_id_posted_at_journal_entries",
        lambda conn: raw_entry(conn, 2, JUNE, entry=False, lines=False),
    )
    # nor has a key naming another posting date than its entry's
    refused(
        runtime,
        "fk_entry_keys_member_id_entry_id_posted_at_journal_entries",
        lambda conn: raw_entry(conn, 2, JUNE, key_posted_at=JULY),
    )


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journal_entries_2026_06 SET memo = 'x'",
        "DELETE FROM journal_entries_2026_06",
        "UPDATE postings_2026_06 SET amount = amount",
        "DELETE FROM postings_2026_06",
        "UPDATE entry_keys SET source_ref = 'x'",
        "DELETE FROM entry_keys",
    ],
)
def test_a_partition_is_append_only_too(runtime, statement):
    enrol(runtime, "m1", JUNE)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(runtime.engine) as conn:
        conn.exec_driver_sql(statement)


# --- pruning --------------------------------------------------------------------------------------


@pytest.mark.postgres_only
def test_the_roll_forward_reads_only_the_partitions_of_its_window(runtime):
    enrol(runtime, "m1", JUNE)
    buy(runtime, "t1", "m1", JULY)
    seen: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "FROM postings JOIN journal_entries" in statement:
            seen.append((statement, parameters))

    # June in the bank's zone (UTC+8): 31 May 16:00 to 30 June 16:00 UTC, in two UTC months
    start, end = dt.datetime(2026, 5, 31, 16, tzinfo=dt.UTC), dt.datetime(2026, 6, 30, 16, tzinfo=dt.UTC)
    with transaction(runtime.engine, readonly=True) as conn:
        sa.event.listen(conn, "before_cursor_execute", remember)
        figures = reports.rollforward(conn, start=start, end=end)
        sa.event.remove(conn, "before_cursor_execute", remember)
        assert figures["earned"]["total"] > 0
        assert seen
        for statement, parameters in seen:
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars())
            read = set(re.findall(r"\b((?:journal_entries|postings)_(?:\d{4}_\d{2}|default))\b", plan))
            assert read == {f"{t}_{m}" for t in partitions.PARTITIONED for m in ("2026_05", "2026_06")}, plan


# --- the migration --------------------------------------------------------------------------------


def book_over_months(rt: Runtime) -> None:
    """Entries of every common kind over five months, each in the month it was posted."""
    months = [dt.datetime(2026, m, 10, 8, 0, tzinfo=dt.UTC) for m in (2, 3, 4, 5, 6)]
    for i, now in enumerate(months):
        enrol(rt, f"m{i}", now)
        buy(rt, f"t{i}", "m0", now)
        with transaction(rt.engine) as conn:
            ledger.hold(conn, "m0", f"h{i}", 10, capture_account="redeemed:unspecified", now=now)
            (ledger.capture if i % 2 else ledger.void)(conn, "m0", f"h{i}", now=now)
            ledger.adjust(conn, f"m{i}", 7, source_ref=f"a{i}", reason="r", expires_at=months[-1], now=now)
    with transaction(rt.engine) as conn:  # and a lapse, set-based on PostgreSQL
        expire = ledger.expire_members if conn.dialect.name == "postgresql" else None
        if expire is not None:
            assert expire(conn, ["m1", "m2"], as_of=months[-1], now=months[-1])
        else:
            assert ledger.expire(conn, "m1", as_of=months[-1], now=months[-1])


def sealed(rt: Runtime) -> dict[tuple[str, int], tuple[Any, ...]]:
    je = journal_entries.c
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(sa.select(je.member_id, je.seq, je.id, je.posted_at, je.chain_hash))
        return {(r.member_id, r.seq): (r.id, r.posted_at, r.chain_hash) for r in rows}


@pytest.mark.committed  # migrations run in transactions of their own
def test_the_migration_moves_the_journal_into_monthly_partitions_intact(runtime, database_url, backend):
    book_over_months(runtime)
    before = sealed(runtime)
    assert len(before) > 20 and all(h for _, _, h in before.values())
    migrate.downgrade(runtime.engine, "0020")
    with transaction(runtime.engine, readonly=True) as conn:
        assert "entry_keys" not in sa.inspect(conn).get_table_names()
        assert not partitions.partitioned(conn)
    assert sealed(runtime) == before

    migrate.upgrade(runtime.engine)

    assert sealed(runtime) == before
    run = run_verify_cli(database_url)
    assert run.exit_code == 0, run.output
    with transaction(runtime.engine, readonly=True) as conn:
        keys = conn.execute(sa.select(sa.func.count()).select_from(entry_keys)).scalar_one()
        assert keys == len(before)
        if backend == "postgres":
            assert partitions.partitioned(conn)
            now = partitions.month_of(dt.datetime.now(dt.UTC))
            wanted = partitions.months(dt.date(2026, 2, 1), partitions.add_months(now, 3))
            assert partitions.existing_months(conn) == set(wanted)
    if backend == "postgres":
        in_their_months(runtime)
    # the journal takes new entries, and refuses to be rewritten
    enrol(runtime, "late", dt.datetime(2026, 6, 20, tzinfo=dt.UTC))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(runtime.engine) as conn:
        conn.execute(sa.text("UPDATE journal_entries SET memo = 'x'"))

    migrate.downgrade(runtime.engine, "0020")
    after = sealed(runtime)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1
    with transaction(runtime.engine, readonly=True) as conn:
        assert not partitions.partitioned(conn)
        assert sa.inspect(conn).get_unique_constraints("journal_entries")
    migrate.upgrade(runtime.engine)
    assert run_verify_cli(database_url).exit_code == 0


@pytest.mark.committed
def test_the_migration_refuses_a_posting_dated_other_than_its_entry(runtime, database_url, backend):
    """The ledger writes a posting with its entry's posting date; a journal where one differs
    cannot be keyed by it, and the migration says so, changing nothing."""
    enrol(runtime, "m1", JUNE)
    migrate.downgrade(runtime.engine, "0020")
    moved = "UPDATE postings SET posted_at = posted_at + interval '1 second' WHERE member_id = 'm1' AND line = 1"
    if backend == "sqlite":
        moved = "UPDATE postings SET posted_at = datetime(posted_at, '+1 second') WHERE member_id = 'm1' AND line = 1"
    with behind_the_back(database_url) as conn:
        conn.exec_driver_sql(moved)
    with pytest.raises(RuntimeError, match="1 postings carry a posting date other than their entry's"):
        migrate.upgrade(runtime.engine)
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0020"
    with behind_the_back(database_url) as conn:
        conn.exec_driver_sql(
            "UPDATE postings SET posted_at = (SELECT e.posted_at FROM journal_entries e"
            " WHERE e.member_id = postings.member_id AND e.id = postings.entry_id)"
        )
    migrate.upgrade(runtime.engine)
    assert run_verify_cli(database_url).exit_code == 0
