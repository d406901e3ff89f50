"""The SQL statements each booking-path request sends, pinned: a change that adds a round trip to an
accrual or a redemption fails here and has to say why (``bench/inprocess.py`` measures the same
counts, with the CPU time they cost, and ``docs/performance.md`` lists them).

Counted with a ``before_cursor_execute`` listener on the runtime's engine: an ``executemany`` is one
statement; the transaction's own BEGIN (SQLite's ``BEGIN IMMEDIATE``) and the test harness's
savepoints are left out. Dead connections are found without a ping on every checkout; a test
below proves an idle connection the server has closed is replaced before a request gets it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from loyalty import db
from loyalty.catalogue import codes
from loyalty.db import is_postgres, make_engine, transaction
from loyalty.runtime import Runtime
from tests.conftest import START, TEST_SECRET_KEY
from tests.contract import ContractClient
from tests.helpers import enrol, txn
from tests.test_redemptions import add_benefit

HARNESS = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "BEGIN", "SET CONSTRAINTS")
#: The API key's lookup: the tests' runtime caches no key, a server caches each for 30 s.
KEY_LOOKUP = "FROM api_keys"

#: statements per request on SQLite
#: claim with the member's lock, read, balance, entry's key, entry, postings, lot, transaction, event,
#: member's dates (the entry's key, in ``entry_keys``, since the journal is partitioned by month)
ACCRUAL_STEADY = 10
ACCRUAL_FIRST = 12  # ... and the lifecycle change with its event
ACCRUAL_REPLAY = 3  # claim, the key's record, the transaction with its lots
#: claim with the member's lock, read, balance, entry's key, entry, postings, lots, lots lowered,
#: consumptions, redemption, codes, event
REDEMPTION_POOL = 12
REDEMPTION_WITH_KEY = REDEMPTION_POOL + 2  # the Idempotency-Key claimed, and its answer stored


def fewer_on_postgres(runtime: Runtime) -> int:
    """PostgreSQL writes an entry's key and the entry in one statement: one fewer per entry."""
    return 1 if is_postgres(runtime.engine) else 0


@contextmanager
def counted(runtime: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(HARNESS) and KEY_LOOKUP not in statement:
            seen.append(" ".join(statement.split())[:100])

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)


def book(client: ContractClient, body: dict[str, Any], status: int = 201) -> None:
    r = client.post("/v1/transactions", json=body)
    assert r.status_code == status, r.get_json()


def test_an_accrual_sends_ten_statements_twelve_for_a_first_booking_three_for_a_replay_one_fewer_on_postgres(
    client: ContractClient, runtime: Runtime
) -> None:
    enrol(client, "m1")
    first = txn("t1", "m1", occurred_at=(START - dt.timedelta(hours=3)).isoformat())
    with counted(runtime) as seen:
        book(client, first)
    assert len(seen) == ACCRUAL_FIRST - fewer_on_postgres(runtime), seen
    with counted(runtime) as seen:
        book(client, txn("t2", "m1", occurred_at=(START - dt.timedelta(hours=2)).isoformat()))
    assert len(seen) == ACCRUAL_STEADY - fewer_on_postgres(runtime), seen
    with counted(runtime) as seen:
        book(client, first, 200)
    assert len(seen) == ACCRUAL_REPLAY, seen


def test_a_pool_voucher_redemption_sends_twelve_statements_one_fewer_on_postgres(
    client: ContractClient, runtime: Runtime
) -> None:
    add_benefit(runtime, "v10", fulfilment="pool", points_price=10)
    with transaction(runtime.engine) as conn:
        box = codes.CodeBox(TEST_SECRET_KEY)
        codes.add_codes(conn, box, "v10", [f"CODE-{i}" for i in range(4)], now=runtime.now())
    enrol(client, "m1")
    book(client, txn("t1", "m1"))
    body = {"redemption_id": "r1", "member_id": "m1", "benefit_code": "v10"}
    with counted(runtime) as seen:
        r = client.post("/v1/redemptions", json=body)
    assert r.status_code == 201 and r.get_json()["voucher_codes"] == ["CODE-0"], r.get_json()
    assert len(seen) == REDEMPTION_POOL - fewer_on_postgres(runtime), seen
    with counted(runtime) as seen:
        r = client.post("/v1/redemptions", json={**body, "redemption_id": "r2"}, headers={"Idempotency-Key": "k2"})
    assert r.status_code == 201 and r.get_json()["voucher_codes"] == ["CODE-1"], r.get_json()
    assert len(seen) == REDEMPTION_WITH_KEY - fewer_on_postgres(runtime), seen


def test_no_redemption_of_a_pool_benefit_writes_the_benefit_row(client: ContractClient, runtime: Runtime) -> None:
    add_benefit(runtime, "v10", fulfilment="pool", points_price=10)
    with transaction(runtime.engine) as conn:
        codes.add_codes(conn, codes.CodeBox(TEST_SECRET_KEY), "v10", ["A", "B"], now=runtime.now())
    enrol(client, "m1")
    book(client, txn("t1", "m1"))
    with counted(runtime) as seen:
        r = client.post("/v1/redemptions", json={"redemption_id": "r1", "member_id": "m1", "benefit_code": "v10"})
    assert r.status_code == 201, r.get_json()
    assert not [s for s in seen if s.lstrip().upper().startswith("UPDATE BENEFITS")], seen
    assert client.get("/v1/benefits/v10").get_json()["stock"] == 1


@pytest.mark.postgres_only
@pytest.mark.committed
def test_an_idle_connection_the_server_closed_is_replaced_before_use(
    backend: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    finally:
        engine.dispose()
        admin.dispose()
