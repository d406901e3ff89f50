"""The journal's monthly partitions (PostgreSQL).

On PostgreSQL ``journal_entries`` and ``postings`` are partitioned by range of ``posted_at``: one
partition per UTC month, ``journal_entries_YYYY_MM`` and ``postings_YYYY_MM``, and a DEFAULT
partition each (``journal_entries_default``, ``postings_default``) that takes any row whose month
has no partition yet, so that a booking is never refused for want of one. The ``partitions`` job
(:mod:`loyalty.jobs.partitions`) creates the months ahead; ``loyalty verify`` reports rows in a
DEFAULT partition (:func:`default_rows`). On SQLite the journal is one table of each and there is
nothing to do.

A month cannot be created while its DEFAULT partition holds rows of that month: PostgreSQL would
refuse, and moving the rows out of the DEFAULT partition is an operator's decision
(docs/explanation/scaling.md), so :func:`create_months` refuses first, naming the month.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection

#: The partitioned tables, parent first: a posting's partition follows its entry's.
PARTITIONED = ("journal_entries", "postings")
#: How long creating a partition waits for the lock on its table before giving up: creating one
#: locks the parent against every booking while it waits, so it must not wait long.
LOCK_TIMEOUT = "5s"
PARTITION_NAME = re.compile(rf"(?:{'|'.join(PARTITIONED)})_(?:\d{{4}}_\d{{2}}|default)")


class PartitionBlocked(Exception):
    """A month's partition cannot be created: its DEFAULT partition holds rows of that month."""


def is_partition(name: str | None) -> bool:
    """Whether ``name`` is one of the journal's partitions, which the models do not describe (they
    describe the partitioned tables): Alembic's comparison of the schema with them leaves them out."""
    return name is not None and PARTITION_NAME.fullmatch(name) is not None


def compared(obj: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
    """Alembic's ``include_object``: what a comparison of the models with the database looks at.
    Not the partitions, nor the foreign keys PostgreSQL keeps for each partition of a partitioned
    table a key names: the models describe the partitioned tables."""
    if type_ == "table":
        return not is_partition(name)
    if type_ == "foreign_key_constraint" and reflected:
        return not is_partition(obj.referred_table.name)
    return True


def month_of(moment: dt.datetime | dt.date) -> dt.date:
    """The first day of the UTC month ``moment`` falls in."""
    if isinstance(moment, dt.datetime):
        moment = moment.astimezone(dt.UTC).date()
    return moment.replace(day=1)


def add_months(month: dt.date, n: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def months(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every month from ``first``'s to ``last``'s, both included."""
    found, month = [], month_of(first)
    while month <= month_of(last):
        found.append(month)
        month = add_months(month, 1)
    return found


def partition_name(table: str, month: dt.date) -> str:
    return f"{table}_{month:%Y_%m}"


def _bound(month: dt.date) -> str:
    return f"'{month:%Y-%m-%d} 00:00:00+00'"


def partitioned(conn: Connection) -> bool:
    """Whether this database's journal is partitioned: PostgreSQL at migration 0021 or later."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.exec_driver_sql("SELECT relkind FROM pg_class WHERE oid = to_regclass('journal_entries')").scalar()
    return bool(kind == "p")


def existing_months(conn: Connection, table: str = "journal_entries") -> set[dt.date]:
    """The months ``table`` has a partition of its own for."""
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%(table)s)",
        {"table": table},
    ).scalars()
    found = set()
    for name in names:
        suffix = name.removeprefix(f"{table}_")
        if len(suffix) == 7 and suffix[4] == "_" and suffix.replace("_", "").isdigit():
            found.add(dt.date(int(suffix[:4]), int(suffix[5:]), 1))
    return found


def default_rows(conn: Connection) -> list[dict[str, Any]]:
    """Per DEFAULT partition and UTC month, the rows it holds: none while every month a row was
    posted in has its partition."""
    found: list[dict[str, Any]] = []
    for table in PARTITIONED:
        default = f"{table}_default"
        if conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": default}).scalar() is None:
            continue
        rows = conn.exec_driver_sql(
            "SELECT to_char(posted_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month, count(*) AS n "
            f"FROM {default} GROUP BY 1 ORDER BY 1"
        )
        found += [{"partition": default, "month": r.month, "rows": int(r.n)} for r in rows]
    return found


def create_months(conn: Connection, wanted: Iterable[dt.date]) -> list[str]:
    """Create the partitions of every month of ``wanted`` that has none yet, for both tables;
    returns the partitions created (none when they all exist). Refuses with
    :class:`PartitionBlocked`, creating nothing, if a DEFAULT partition holds rows of a month
    it would create."""
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('loyalty.partitions'))")
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    existing = {table: existing_months(conn, table) for table in PARTITIONED}
    months_wanted = sorted(set(map(month_of, wanted)))
    missing = [(table, m) for m in months_wanted for table in PARTITIONED if m not in existing[table]]
    if not missing:
        return []
    blocked = sorted(
        f"{r['month']} ({r['rows']} rows in {r['partition']})"
        for r in default_rows(conn)
        if dt.date.fromisoformat(f"{r['month']}-01") in {m for _, m in missing}
    )
    if blocked:
        raise PartitionBlocked(
            "cannot create the partitions of months whose rows are in a DEFAULT partition: "
            + ", ".join(blocked)
            + "; move them out of it first (docs/explanation/scaling.md)"
        )
    for table, month in missing:
        conn.exec_driver_sql(
            f"CREATE TABLE {partition_name(table, month)} PARTITION OF {table} "
            f"FOR VALUES FROM ({_bound(month)}) TO ({_bound(add_months(month, 1))})"
        )
    return [partition_name(table, month) for table, month in missing]
