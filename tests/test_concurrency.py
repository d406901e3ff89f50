"""Real concurrency on PostgreSQL: 16 threads, each with its own connection, released together.

Each scenario ends with ``loyalty verify``'s checks over the whole database.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.app import create_app
from loyalty.config import Settings
from loyalty.db import make_engine, transaction
from loyalty.errors import HoldNotPending, InsufficientPoints, ValidationError
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import holds, journal_entries, member_accounts
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.programmes.service import ProgrammeStore
from loyalty.runtime import Runtime
from tests.conftest import Clock, make_key
from tests.helpers import txn

#: Threads with connections of their own race each other: the data they race for is committed.
pytestmark = [pytest.mark.postgres_only, pytest.mark.committed, pytest.mark.xdist_group("races")]

WORKERS = 16
REDEEMED = "redeemed:unspecified"
T = TypeVar("T")


@pytest.fixture
def rt(settings: Settings, clock: Clock) -> Iterator[Runtime]:
    """A runtime whose pool has a connection for every worker."""
    engine = make_engine(settings.database_url, pool_size=WORKERS + 4, max_overflow=0)
    runtime = Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock)
    yield runtime
    runtime.engine.dispose()


def race(work: Callable[[int], T], workers: int = WORKERS) -> list[T | BaseException]:
    """Run ``work(0..workers-1)`` in as many threads, all starting at once; exceptions come back as values."""
    barrier = threading.Barrier(workers)

    def start(i: int) -> T | BaseException:
        barrier.wait(timeout=30)
        try:
            return work(i)
        except Exception as exc:  # the caller decides which failures are expected
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(start, range(workers), timeout=120))


def assert_verified(rt: Runtime) -> None:
    with transaction(rt.engine, readonly=True) as conn:
        outcomes = verify.run(conn)
    assert all(o.ok for o in outcomes), verify.report(outcomes)


def account(rt: Runtime, member_id: str = "m1") -> tuple[int, int]:
    ma = member_accounts.c
    with transaction(rt.engine, readonly=True) as conn:
        row = conn.execute(sa.select(ma.balance, ma.held).where(ma.member_id == member_id)).one()
    return int(row.balance), int(row.held)


def entry_kinds(rt: Runtime, member_id: str = "m1") -> list[str]:
    je = journal_entries.c
    with transaction(rt.engine, readonly=True) as conn:
        return list(conn.execute(sa.select(je.kind).where(je.member_id == member_id).order_by(je.seq)).scalars())


def enrol(rt: Runtime, member_id: str = "m1") -> None:
    with transaction(rt.engine) as conn:
        members.enrol(conn, Enrolment(member_id), programme=rt.programme, now=rt.now())


def book(rt: Runtime, transaction_id: str, fen: int, member_id: str = "m1") -> accrual.Result:
    cmd = TransactionCommand(transaction_id, member_id, "card_purchase", fen, "CNY", rt.now() - dt.timedelta(hours=1))
    with transaction(rt.engine) as conn:
        return accrual.record_transaction(conn, cmd, programme=rt.programme, now=rt.now())


def not_exceptions(results: list[Any]) -> None:
    unexpected = [r for r in results if isinstance(r, BaseException)]
    assert not unexpected, unexpected


# --- (a) the same transaction from 16 clients at once ---------------------------


def test_same_transaction_posted_by_16_clients_books_once(rt):
    app = create_app(rt)
    key = make_key(rt)
    auth = {"Authorization": f"Bearer {key}"}
    enrol(rt)
    body = txn("t1", "m1", 12_345)

    def post(_: int) -> tuple[int, str | None, dict[str, Any]]:
        r = app.test_client().post("/v1/transactions", json=body, headers=auth)
        return r.status_code, r.headers.get("Idempotent-Replayed"), r.get_json()

    results = race(post)
    not_exceptions(results)
    statuses = sorted(status for status, _, _ in results)  # type: ignore[misc]
    assert statuses == [200] * 15 + [201]
    assert sorted(str(replayed) for _, replayed, _ in results) == ["None"] + ["true"] * 15  # type: ignore[misc]
    bodies = [b for _, _, b in results]  # type: ignore[misc]
    assert all(b == bodies[0] for b in bodies)
    assert (bodies[0]["points"], bodies[0]["balance"]) == (123, 623)
    assert account(rt) == (623, 0)
    assert entry_kinds(rt) == ["bonus", "accrual"]
    assert_verified(rt)


# --- (b) different transactions for one member ----------------------------------


def test_16_different_transactions_for_one_member_all_count(rt):
    app = create_app(rt)
    key = make_key(rt)
    auth = {"Authorization": f"Bearer {key}"}
    enrol(rt)

    def post(i: int) -> tuple[int, dict[str, Any]]:
        r = app.test_client().post("/v1/transactions", json=txn(f"t{i}", "m1", 1_000 * (i + 1)), headers=auth)
        return r.status_code, r.get_json()

    results = race(post)
    not_exceptions(results)
    assert [status for status, _ in results] == [201] * WORKERS  # type: ignore[misc]
    earned = sum(10 * (i + 1) for i in range(WORKERS))
    assert account(rt) == (500 + earned, 0)
    # Each answer saw a distinct balance: the member's row serialised them.
    balances = sorted(b["balance"] for _, b in results)  # type: ignore[misc]
    assert len(set(balances)) == WORKERS
    assert balances[-1] == 500 + earned
    assert entry_kinds(rt) == ["bonus"] + ["accrual"] * WORKERS
    assert_verified(rt)


def test_16_members_accrue_in_parallel_without_touching_each_other(rt):
    for i in range(WORKERS):
        enrol(rt, f"m{i}")
    results = race(lambda i: book(rt, f"t{i}", 12_345, member_id=f"m{i}"))
    not_exceptions(results)
    assert all(r.created for r in results)  # type: ignore[union-attr]
    for i in range(WORKERS):
        assert account(rt, f"m{i}") == (623, 0)
    assert_verified(rt)


# --- (c) reversals racing accruals, holds, captures and voids ---------------------


def test_refunds_racing_accruals_and_holds_keep_every_invariant(rt):
    enrol(rt)
    originals = {f"t{i}": 10_000 * (i + 1) for i in range(6)}  # 100, 200, ... 600 points
    for tid, fen in originals.items():
        book(rt, tid, fen)
    start_balance = 500 + sum(fen // 100 for fen in originals.values())
    assert account(rt) == (start_balance, 0)
    lock = threading.Lock()
    log: dict[str, list[Any]] = {"accrued": [], "reversed": [], "refunded": [], "captured": [], "refused": []}

    def note(kind: str, value: Any) -> None:
        with lock:
            log[kind].append(value)

    def work(i: int) -> None:
        rng = random.Random(i)
        for step in range(6):
            op = rng.choice(["accrue", "refund", "refund", "hold-void", "hold-capture"])
            if op == "accrue":
                fen = rng.randrange(100, 50_000)
                r = book(rt, f"new-{i}-{step}", fen)
                note("accrued", r.body["points"])
            elif op == "refund":
                # Everyone refunds the same few transactions: together they ask for more than was spent.
                tid = rng.choice(list(originals))
                fen = rng.randrange(1, originals[tid] // 2)
                try:
                    with transaction(rt.engine) as conn:
                        r = accrual.reverse(
                            conn, ReversalCommand(tid, f"r-{i}-{step}", fen), policy="negative", now=rt.now()
                        )
                except ValidationError:
                    note("refused", ("refund", tid, fen))
                    continue
                note("reversed", r.body["points_reversed"])
                note("refunded", (tid, fen))
            else:
                hold_id = f"h-{i}-{step}"
                points = rng.randrange(1, 400)
                try:
                    with transaction(rt.engine) as conn:
                        ledger.hold(conn, "m1", hold_id, points, capture_account=REDEEMED, now=rt.now())
                except InsufficientPoints:
                    note("refused", ("hold", points))
                    continue
                with transaction(rt.engine) as conn:
                    if op == "hold-capture":
                        ledger.capture(conn, "m1", hold_id, now=rt.now())
                        note("captured", points)
                    else:
                        ledger.void(conn, "m1", hold_id, now=rt.now())

    results = race(work)
    not_exceptions(results)
    expected = start_balance + sum(log["accrued"]) - sum(log["reversed"]) - sum(log["captured"])
    assert account(rt) == (expected, 0)
    # No transaction was refunded beyond its amount, and the points followed the cumulative formula.
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT transaction_id, amount, points, reversed_amount, reversed_points FROM transactions "
                "WHERE transaction_id LIKE 't%'"
            )
        ).all()
        pending = conn.execute(sa.select(sa.func.count()).where(holds.c.status == "pending")).scalar_one()
    refunded: dict[str, int] = {}
    for tid, fen in log["refunded"]:
        refunded[tid] = refunded.get(tid, 0) + fen
    for row in rows:
        assert row.reversed_amount == refunded.get(row.transaction_id, 0) <= row.amount
        assert row.reversed_points == row.points * row.reversed_amount // row.amount
    assert pending == 0
    assert log["refunded"] and (log["captured"] or log["refused"])
    assert_verified(rt)


def test_16_holds_competing_for_one_balance_never_overdraw(rt):
    enrol(rt)  # 500 points: room for five holds of 100

    def grab(i: int) -> ledger.Posted:
        with transaction(rt.engine) as conn:
            return ledger.hold(conn, "m1", f"h{i}", 100, capture_account=REDEEMED, now=rt.now())

    results = race(grab)
    won = [r for r in results if isinstance(r, ledger.Posted)]
    lost = [r for r in results if isinstance(r, InsufficientPoints)]
    assert (len(won), len(lost)) == (5, 11), results
    assert sorted(p.balance_after for p in won) == [0, 100, 200, 300, 400]
    assert account(rt) == (0, 500)
    assert_verified(rt)


def test_16_workers_settling_one_hold_settle_it_once(rt):
    enrol(rt)
    with transaction(rt.engine) as conn:
        ledger.hold(conn, "m1", "h1", 300, capture_account=REDEEMED, now=rt.now())

    def settle(i: int) -> ledger.Posted:
        with transaction(rt.engine) as conn:
            if i % 2:
                return ledger.capture(conn, "m1", "h1", now=rt.now())
            return ledger.void(conn, "m1", "h1", now=rt.now())

    results = race(settle)
    won = [r for r in results if isinstance(r, ledger.Posted)]
    lost = [r for r in results if isinstance(r, HoldNotPending)]
    assert (len(won), len(lost)) == (1, 15), results
    assert account(rt) == ((500, 0) if won[0].points == 300 else (200, 0))
    assert entry_kinds(rt)[:2] == ["bonus", "hold"] and len(entry_kinds(rt)) == 3
    assert_verified(rt)


def test_same_refund_from_16_clients_claws_back_once(rt):
    enrol(rt)
    book(rt, "t1", 12_345)

    def refund(_: int) -> accrual.Result:
        with transaction(rt.engine) as conn:
            return accrual.reverse(conn, ReversalCommand("t1", "r1", 6_000), policy="negative", now=rt.now())

    results = race(refund)
    not_exceptions(results)
    assert sorted(r.created for r in results) == [False] * 15 + [True]  # type: ignore[union-attr]
    assert all(r.body == results[0].body for r in results)  # type: ignore[union-attr]
    assert account(rt) == (623 - 59, 0)
    assert entry_kinds(rt) == ["bonus", "accrual", "reversal"]
    assert_verified(rt)


# --- (d) the same member enrolled 16 times at once ---------------------------------


def test_same_member_enrolled_by_16_clients_gets_one_welcome_bonus(rt):
    app = create_app(rt)
    key = make_key(rt)
    auth = {"Authorization": f"Bearer {key}"}

    def post(_: int) -> tuple[int, dict[str, Any]]:
        r = app.test_client().post("/v1/members", json={"member_id": "m1"}, headers=auth)
        return r.status_code, r.get_json()

    results = race(post)
    not_exceptions(results)
    assert sorted(status for status, _ in results) == [200] * 15 + [201]  # type: ignore[misc]
    assert all(body["balance"] == 500 for _, body in results)  # type: ignore[misc]
    assert account(rt) == (500, 0)
    assert entry_kinds(rt) == ["bonus"]
    assert_verified(rt)
