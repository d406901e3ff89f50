"""Running Alembic from the service (``loyalty db upgrade``, ``make run``, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``, in one transaction."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn, sqlite_foreign_keys_off(conn), conn.begin():
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        check_foreign_keys(conn)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to ``revision``, in one transaction, as :func:`upgrade` goes forward."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn, sqlite_foreign_keys_off(conn), conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        check_foreign_keys(conn)


@contextmanager
def sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite changes a table's constraints by building the table anew and dropping the old one
    (Alembic's batch mode), and with foreign keys enforced it refuses to drop a table other rows
    point at. Enforcement is switched off for the migrations (SQLite allows that only outside a
    transaction) and back as it was after; :func:`check_foreign_keys` checks every key before the
    migrations commit. Nothing to do on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None and not conn.in_transaction()
    enforced = raw.execute("PRAGMA foreign_keys").fetchone()[0]
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")


def check_foreign_keys(conn: Connection) -> None:
    """Refuse to commit migrations that leave a foreign key pointing nowhere (SQLite; PostgreSQL
    checks each key as it is added)."""
    if conn.dialect.name != "sqlite":
        return
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        table, rowid, parent, _fk = broken[0]
        raise RuntimeError(
            f"the migrations leave {len(broken)} rows whose foreign keys point nowhere; "
            f"the first: {table} row {rowid}, to {parent}"
        )
