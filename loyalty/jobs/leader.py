"""One scheduler leads at a time: a lock that only one process can hold.

On PostgreSQL the lock is a session-level advisory lock taken on a
connection of its own, kept open for as long as the process leads. On SQLite
it is an exclusive ``flock`` on ``<database file>.scheduler.lock``. Either way
the lock goes when its holder does: a process that dies, or whose database
session ends, releases it, and a standby can take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

#: The advisory lock key: the first 8 bytes of SHA-256("loyalty.scheduler"), as a signed bigint.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"loyalty.scheduler").digest()[:8], "big", signed=True)

#: libpq settings of the lock's connection, so that a leader cut off from the
#: database finds out within seconds instead of waiting on a dead socket.
PG_CONNECT_ARGS = {
    "application_name": "loyalty-scheduler",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


class Leadership(Protocol):
    """The scheduler's lock."""

    #: where the lock is, for the log
    where: str

    def acquire(self) -> bool:
        """Take the lock if no one holds it; never waits. False if another process holds it."""

    def held(self) -> bool:
        """Whether this process still holds the lock it took."""

    def release(self) -> None:
        """Give the lock up (if held) and free what holding it needed."""


class PostgresLeadership:
    """``pg_try_advisory_lock`` on a dedicated connection, unpooled, in autocommit."""

    def __init__(self, url: sa.URL, key: int = ADVISORY_KEY) -> None:
        self.key = key
        self.where = f"PostgreSQL advisory lock {key} on {url.render_as_string(hide_password=True)}"
        self._engine = sa.create_engine(
            url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT", connect_args=PG_CONNECT_ARGS
        )
        self._conn: Connection | None = None
        self._held = False

    def acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            self._held = bool(self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
        except sa.exc.DBAPIError as exc:
            log.warning("cannot reach the database to take the scheduler lock: %s", exc.orig)
            self._close()
        return self._held

    def held(self) -> bool:
        """Asks the server whether this connection's session holds the lock right now."""
        if not self._held or self._conn is None:
            return False
        try:
            # pg_locks shows a bigint key as its high and low 32 bits.
            halves = {"classid": (self.key >> 32) & 0xFFFFFFFF, "objid": self.key & 0xFFFFFFFF}
            return bool(
                self._conn.execute(
                    sa.text(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND pid = pg_backend_pid() AND database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                        " AND classid = CAST(:classid AS oid) AND objid = CAST(:objid AS oid) AND objsubid = 1)"
                    ),
                    halves,
                ).scalar()
            )
        except sa.exc.DBAPIError as exc:
            log.warning("lost the scheduler lock's database connection: %s", exc.orig)
            self._close()
            return False

    def release(self) -> None:
        if self._held and self._conn is not None:
            # If the session is gone, the lock went with it.
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        self._close()

    def _close(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):  # a broken connection
                self._conn.close()
            self._conn = None


class FileLeadership:
    """An exclusive ``flock`` on a lock file, which holds the leader's ``host:pid``.

    The lock is held while this process keeps the file open. Should the file
    be removed or replaced, another process could lock the new one, so
    :meth:`held` also checks the path still names the file that is locked.
    """

    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self.owner = owner
        self.where = f"lock file {path}"
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115  (kept open while leading)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        file.truncate(0)
        file.write(self.owner + "\n")
        file.flush()
        self._file = file
        return True

    def held(self) -> bool:
        if self._file is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None


def leadership_for(engine: Engine, owner: str) -> Leadership:
    """The lock for the database ``engine`` points at."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return PostgresLeadership(url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ValueError("the scheduler needs a SQLite database file (sqlite:///path/to/loyalty.db)")
        return FileLeadership(Path(os.path.abspath(database + ".scheduler.lock")), owner)
    raise ValueError(f"the scheduler does not support {url.get_backend_name()} databases")
