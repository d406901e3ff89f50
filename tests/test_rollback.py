"""The PostgreSQL tests' own transaction (:mod:`tests.rollback`): the code's transactions are
savepoints in it, a release checks what a commit checks, and what cannot see the test's data
is refused instead of seeing an empty database."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from loyalty.db import make_engine, transaction

pytestmark = pytest.mark.postgres_only


def count(engine: sa.Engine, table: str) -> int:
    with transaction(engine, readonly=True) as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_transaction_commits_into_the_test_and_a_failed_one_leaves_nothing(engine):
    with transaction(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_log (actor, action, object_type, object_id, at) VALUES ('t', 'a', 'o', '1', now())"
            )
        )
    with pytest.raises(RuntimeError, match="on purpose"), transaction(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_log (actor, action, object_type, object_id, at) VALUES ('t', 'b', 'o', '2', now())"
            )
        )
        raise RuntimeError("on purpose")
    with transaction(engine, readonly=True) as conn:
        assert conn.execute(sa.text("SELECT action FROM audit_log WHERE actor = 't'")).scalars().all() == ["a"]


def test_the_engine_refuses_another_thread(engine):
    before = count(engine, "audit_log")
    failures: list[BaseException] = []

    def other() -> None:
        try:
            count(engine, "audit_log")
        except BaseException as exc:  # noqa: BLE001  (handed back to the test)
            failures.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=30)
    assert len(failures) == 1 and "mark the test committed" in str(failures[0])
    assert count(engine, "audit_log") == before  # the test's own thread still may


def test_another_connection_to_the_settings_url_fails(settings, engine):
    other = make_engine(settings.database_url, pool_size=1)
    try:
        with pytest.raises(sa.exc.OperationalError, match="mark_committed"):
            count(other, "audit_log")
    finally:
        other.dispose()
