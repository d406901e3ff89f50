"""PostgreSQL tests that run in one transaction, rolled back at their end.

The code under test begins its transactions with ``engine.begin()`` (see
:func:`loyalty.db.transaction`). Here the engine it is given hands out one
connection, on which the test's own transaction is open; every transaction
the code begins on it is a savepoint, its commit releases the savepoint and
its rollback rolls back to it. At the end of the test the outer transaction is
rolled back and the database is as it was, without emptying a table.

What a commit does that a released savepoint does not, this engine does at
each release: deferred constraints are checked then (``SET CONSTRAINTS ALL
IMMEDIATE``), so the ledger's balance trigger refuses an unbalanced entry at
its "commit" as it does on a real one. Sequences are not transactional; they
are set back at the start of each test, so ids are the same as on an emptied
database.

What it cannot do: other connections, threads and processes see nothing a
test writes, and everything a test writes is one server transaction (one
transaction id, one ``pg_current_snapshot``). Tests that need those are marked
``committed`` and run on a database emptied before them instead.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from psycopg2 import extensions


class RolledBack:
    """One connection to a migrated database, and the engine that runs each test in a
    transaction on it that is rolled back (see the module's documentation)."""

    def __init__(self, url: str) -> None:
        # hide_parameters as loyalty.db.make_engine sets it: what the service logs, tests log
        self.engine = sa.create_engine(url, poolclass=sa.pool.StaticPool, hide_parameters=True)
        with self.engine.connect() as conn:  # the dialect initialises itself on this first connection
            self.raw = conn.connection.dbapi_connection
            self.deferred = list(
                conn.execute(
                    sa.text(
                        "SELECT format('%I.%I', n.nspname, c.conname) FROM pg_constraint c"
                        " JOIN pg_namespace n ON n.oid = c.connamespace"
                        " WHERE c.condeferrable AND c.condeferred AND n.nspname = current_schema()"
                    )
                ).scalars()
            )
        #: the savepoints open now, innermost last: (the pooled connection that began it, its name)
        self.savepoints: list[tuple[Any, str]] = []
        self.names = itertools.count(1)
        self.thread: int | None = None
        self.restart_sequences = ""
        dialect = self.engine.dialect
        dialect.do_begin = self._begin  # type: ignore[method-assign]
        dialect.do_commit = self._commit  # type: ignore[method-assign]
        dialect.do_rollback = self._rollback  # type: ignore[method-assign]

    def remember_sequences(self) -> None:
        """Take the sequences as they are now as the state each test starts from."""
        with self.raw.cursor() as cur:
            cur.execute(
                "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences"
                " WHERE schemaname = current_schema() ORDER BY 1"
            )
            rows = cur.fetchall()
        self.raw.rollback()
        restarts = [
            f"setval('{name}', {last}, true)" if last is not None else f"setval('{name}', 1, false)"
            for name, last in rows
        ]
        self.restart_sequences = f"SELECT {', '.join(restarts)}" if restarts else ""

    @contextmanager
    def transaction(self) -> Iterator[sa.Engine]:
        """The engine for one test, inside a transaction rolled back when the block ends."""
        assert self.raw.info.transaction_status == extensions.TRANSACTION_STATUS_IDLE, "a test transaction is open"
        self.thread = threading.get_ident()
        self.savepoints.clear()
        with self.raw.cursor() as cur:  # psycopg2 begins the transaction with this first statement
            cur.execute(self.restart_sequences or "SELECT 1")
        try:
            yield self.engine
        finally:
            status = self.raw.info.transaction_status
            self.raw.rollback()
            self.thread = None
            left = self.savepoints[:]
            self.savepoints.clear()
        if status not in (extensions.TRANSACTION_STATUS_INTRANS, extensions.TRANSACTION_STATUS_INERROR):
            raise AssertionError(f"the test's transaction ended before the test did (status {status})")
        if left:
            raise AssertionError(f"the test left {len(left)} transaction(s) open: {[name for _, name in left]}")

    def _execute(self, sql: str) -> None:
        with self.raw.cursor() as cur:
            cur.execute(sql)

    def _begin(self, pooled: Any) -> None:
        if self.thread != threading.get_ident():
            raise RuntimeError(
                "the database of a test that is rolled back was used outside the test's thread: mark the test committed"
            )
        name = f"test_transaction_{next(self.names)}"
        self._execute(f"SAVEPOINT {name}")
        self.savepoints.append((pooled, name))

    def _find(self, pooled: Any) -> int | None:
        for i in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[i][0] is pooled:
                return i
        return None

    def _commit(self, pooled: Any) -> None:
        i = self._find(pooled)
        if i is None:
            return
        if i != len(self.savepoints) - 1:
            raise RuntimeError("a transaction was committed while one begun after it was still open")
        name = self.savepoints[i][1]
        check = ""
        if self.deferred:
            # What COMMIT would do: check the deferred constraints, then defer them again.
            check = f"SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS {', '.join(self.deferred)} DEFERRED; "
        try:
            self._execute(f"{check}RELEASE SAVEPOINT {name}")
        except Exception:
            # A commit that fails leaves nothing behind: neither does this one.
            self._execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            raise
        finally:
            del self.savepoints[i:]

    def _rollback(self, pooled: Any) -> None:
        i = self._find(pooled)
        if i is None:
            return
        name = self.savepoints[i][1]
        del self.savepoints[i:]
        self._execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")

    def close(self) -> None:
        self.engine.dispose()
