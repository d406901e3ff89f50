"""Database plumbing: metadata, column types, engines and the per-operation transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry as PoolConnectionRecord

#: Constraint names are derived, so migrations and the models agree on them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite stores ISO text without offset,
    which this type reads back as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use an aware UTC datetime")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def chain_link(prev: bytes | None, digest: bytes, seq: int, balance_after: int) -> bytes:
    """One link of the journal's hash chain (:mod:`loyalty.ledger.chain`): SHA-256 over the hash
    before it (nothing before a member's first entry), an entry's digest, and its ``seq`` and
    ``balance_after`` as 8-byte big-endian signed integers. SQLite gets it as the SQL function
    ``chain_link`` on every connection; PostgreSQL computes the same with its own ``sha256``."""
    return hashlib.sha256(
        bytes(prev or b"")
        + digest
        + seq.to_bytes(8, "big", signed=True)
        + balance_after.to_bytes(8, "big", signed=True)
    ).digest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_engine(url: str, **kwargs: object) -> Engine:
    """Create an engine for ``url`` with the settings this service relies on.

    SQLite runs in WAL mode with a busy timeout and starts every transaction
    with ``BEGIN IMMEDIATE``, so concurrent writers queue instead of failing
    on a lock upgrade.

    A failed statement's parameters (phone numbers, digests, sealed codes)
    are left out of the exception's text (``hide_parameters``), so logging
    the error never logs them.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)  # type: ignore[arg-type]

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            dbapi_conn.create_function("chain_link", 4, chain_link, deterministic=True)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Readers (execution option ``readonly``) need no write lock.
            readonly = conn.get_execution_options().get("readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # A dead connection is found without a round trip on every checkout (``pool_pre_ping``): the
    # kernel's keepalives close one whose server or network went away, and a connection that sat
    # idle in the pool for IDLE_PING_SECONDS is pinged before it is handed out (ping_if_idle).
    # A connection that fails anyway invalidates the whole pool (SQLAlchemy's disconnect handling).
    connect_args = dict(KEEPALIVES)
    connect_args.update(kwargs.pop("connect_args", None) or {})  # type: ignore[call-overload]
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)  # type: ignore[arg-type]
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkin", _checked_in)
        event.listen(engine, "checkout", _ping_if_idle)
    return engine


#: libpq's TCP keepalives: a connection whose peer is gone errors within about a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
#: A pooled connection idle longer than this is pinged before use: a server restart, a proxy or
#: firewall timeout may have closed it meanwhile. A busy pool never waits this long, so never pings.
IDLE_PING_SECONDS = 10.0


def _checked_in(dbapi_conn: object, record: PoolConnectionRecord) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_conn: object, record: PoolConnectionRecord, proxy: object) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:  # any failure: the pool discards it and connects afresh
        raise sa.exc.DisconnectionError(f"an idle pooled connection is dead: {exc}") from exc


@contextmanager
def transaction(engine: Engine, *, readonly: bool = False) -> Iterator[Connection]:
    """One database transaction: committed on success, rolled back on any error."""
    if readonly:
        engine = engine.execution_options(readonly=True)
    with engine.begin() as conn:
        yield conn


def insert_ignore(conn: Connection, table: sa.Table) -> sa.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()  # type: ignore[no-any-return]


def scratch(conn: Connection, name: str, *columns: sa.Column[Any]) -> sa.Table:
    """An empty temporary table for this transaction's set-based work."""
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    kwargs: dict[str, Any] = {"postgresql_on_commit": "DROP"} if is_postgres(conn) else {}
    table = sa.Table(name, sa.MetaData(), *columns, prefixes=["TEMPORARY"], **kwargs)
    table.create(conn)
    return table


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"
