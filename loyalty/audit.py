"""The audit log: who changed what, when, with the state before and after."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.db import UTCDateTime, metadata

audit_log = sa.Table(
    "audit_log",
    metadata,
    #: increasing, so lines written at the same instant keep their order
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    #: the API key name (or ``system``, or the CLI user) that made the change
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("object_type", sa.String(32), nullable=False),
    sa.Column("object_id", sa.String(128), nullable=False),
    #: JSON of the object before and after the change
    sa.Column("before", sa.Text),
    sa.Column("after", sa.Text),
    sa.Index("ix_audit_log_object", "object_type", "object_id", "at"),
)


def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    before: Any = None,
    after: Any = None,
    now: dt.datetime,
) -> None:
    """Write one audit line in the caller's transaction, so it lands with the change or not at all."""
    conn.execute(
        audit_log.insert().values(
            at=now,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            before=None if before is None else json.dumps(before, ensure_ascii=False, sort_keys=True),
            after=None if after is None else json.dumps(after, ensure_ascii=False, sort_keys=True),
        )
    )


def entries(conn: Connection, *, object_type: str | None, object_id: str | None, limit: int) -> list[dict[str, Any]]:
    """The latest audit lines, newest first, optionally for one object."""
    a = audit_log.c
    q = sa.select(audit_log)
    if object_type:
        q = q.where(a.object_type == object_type)
    if object_id:
        q = q.where(a.object_id == object_id)
    return [_line(r) for r in conn.execute(q.order_by(a.id.desc()).limit(limit))]


def search(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_id: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit lines newest first: who (``actor`` contains), what (``action`` or the object's id
    contains) and when (``[start, end)``)."""
    a = audit_log.c
    q = sa.select(audit_log)
    if actor:
        q = q.where(a.actor.contains(actor, autoescape=True))
    if action:
        q = q.where(a.action.contains(action, autoescape=True))
    if object_id:
        q = q.where(a.object_id.contains(object_id, autoescape=True))
    if start is not None:
        q = q.where(a.at >= start)
    if end is not None:
        q = q.where(a.at < end)
    return [_line(r) for r in conn.execute(q.order_by(a.id.desc()).limit(limit))]


def _line(r: Any) -> dict[str, Any]:
    return {
        "at": iso(r.at),
        "actor": r.actor,
        "action": r.action,
        "object_type": r.object_type,
        "object_id": r.object_id,
        "before": None if r.before is None else json.loads(r.before),
        "after": None if r.after is None else json.loads(r.after),
    }
