"""The outbox: events written with the change they describe, and the feed that reads them.

An event row is inserted in the same database transaction as its change, so
a change that rolls back leaves no event and an event always describes a
change that happened.

The feed is read in transaction order. On PostgreSQL each event carries the id of
the transaction that wrote it (``tx``), and a reader only sees events whose
transaction is older than every transaction still running
(``pg_snapshot_xmin``): an event committed late by a long transaction can
never appear *behind* a cursor that has already moved past it. SQLite has a
single writer, so ids are already in commit order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.db import insert_ignore, is_postgres
from loyalty.errors import ValidationError
from loyalty.events.models import EVENT_TYPES, events


def event_row(
    type_: str, *, member_id: str | None, payload: dict[str, Any], now: dt.datetime, dedup_key: str | None = None
) -> dict[str, Any]:
    """The row of one event (for writers that insert many at once)."""
    assert type_ in EVENT_TYPES, type_
    return {
        "type": type_,
        "member_id": member_id,
        "dedup_key": dedup_key,
        "payload": json.dumps(payload, ensure_ascii=False, sort_keys=True),
        "occurred_at": now,
    }


def emit(
    conn: Connection,
    type_: str,
    *,
    member_id: str | None,
    payload: dict[str, Any],
    now: dt.datetime,
    dedup_key: str | None = None,
) -> bool:
    """Write one event. With a ``dedup_key`` an event the member already has is
    not written again; returns whether this call wrote it."""
    row = event_row(type_, member_id=member_id, payload=payload, now=now, dedup_key=dedup_key)
    if dedup_key is None:
        conn.execute(INSERT_EVENT, row)
        return True
    return conn.execute(insert_ignore(conn, events).values(**row).returning(events.c.id)).first() is not None


INSERT_EVENT = events.insert()


def json_object(conn: Connection, *pairs: Any) -> sa.ColumnElement[str]:
    """A JSON object built in SQL from ``key, value, key, value, ...`` (for set-based writers)."""
    fn = sa.func.json_build_object if is_postgres(conn) else sa.func.json_object
    return sa.cast(fn(*pairs), sa.Text)


def encode_cursor(tx: int | None, event_id: int) -> str:
    return f"{tx or 0}.{event_id}"


#: Both halves of a cursor are ``bigint``s (transaction and event ids). Up to 18 digits each
#: keeps them below 2**63 with a pattern ``openapi.yaml`` can state exactly; neither id will
#: ever reach 10**18.
CURSOR = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})")
MAX_BIGINT = 2**63 - 1


def decode_cursor(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 0
    match = CURSOR.fullmatch(text)
    if match is None:
        raise ValidationError.one("after", "is not a cursor this feed returned")
    return int(match[1]), int(match[2])


def event_json(row: Any) -> dict[str, Any]:
    return {
        "event_id": str(row.id),
        "type": row.type,
        "member_id": row.member_id,
        "occurred_at": iso(row.occurred_at),
        "data": json.loads(row.payload),
        "cursor": encode_cursor(row.tx, row.id),
    }


def horizon() -> sa.ColumnElement[int]:
    """PostgreSQL: the oldest transaction still running (or the next to start); every lower one has ended."""
    return sa.cast(sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text), sa.BigInteger)


def visible(conn: Connection, after: tuple[int, int], types: Iterable[str] = (), limit: int = 100) -> list[Any]:
    """Events after ``after`` in transaction order, only those no running transaction can still precede."""
    e = events.c
    q = sa.select(events)
    if is_postgres(conn):
        q = q.where(
            sa.tuple_(e.tx, e.id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])), e.tx < horizon()
        ).order_by(e.tx, e.id)
    else:
        q = q.where(e.id > after[1]).order_by(e.id)
    types = list(types)
    if types:
        q = q.where(e.type.in_(types))
    return list(conn.execute(q.limit(limit)))


def end_of_feed(conn: Connection) -> tuple[int, int]:
    """The position of the last event the feed shows now: a reader starting there sees only later ones."""
    e = events.c
    if is_postgres(conn):
        q = sa.select(e.tx, e.id).where(e.tx < horizon()).order_by(e.tx.desc(), e.id.desc())
    else:
        q = sa.select(sa.literal(0), e.id).order_by(e.id.desc())
    row = conn.execute(q.limit(1)).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def feed(conn: Connection, *, after: str | None, limit: int, types: Iterable[str] = ()) -> dict[str, Any]:
    """A page of the feed and the cursor to ask for the next one (the last event's, or ``after`` if none)."""
    rows = visible(conn, decode_cursor(after), types, limit)
    return {
        "events": [event_json(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1].tx, rows[-1].id) if rows else (after or "0.0"),
    }


def recent(conn: Connection, *, limit: int, event_type: str | None = None) -> list[dict[str, Any]]:
    """The latest events, newest first, optionally of one type (for people to read; consumers use :func:`feed`)."""
    e = events.c
    q = sa.select(events).order_by(e.id.desc()).limit(limit)
    if event_type:
        q = q.where(e.type == event_type)
    return [event_json(r) for r in conn.execute(q)]
