"""Alembic environment: runs migrations on the connection or URL it is given."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

import loyalty.models  # noqa: F401  (fills the metadata)
from loyalty.db import metadata
from loyalty.ledger.partitions import compared

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    if connection.dialect.name == "postgresql":
        # Two nodes starting at once must not migrate together; a stuck lock
        # must not hang a deploy forever.
        connection.exec_driver_sql("SET lock_timeout = '10s'")
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7411001)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=compared,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run 'loyalty db upgrade'")
run_migrations_online()
