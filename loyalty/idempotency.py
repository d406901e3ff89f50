"""Idempotency: each key posts at most once, and a retry gets the first answer.

A key is claimed by the first statement of the operation it guards, in the
same database transaction as that operation's writes: a concurrent duplicate
waits on the claimed row and, once the first commits, finds the key taken.
Services return a :class:`Result`; entry points alone turn it into a status.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.db import UTCDateTime, insert_ignore, metadata
from loyalty.errors import IdempotencyConflict, UnknownMember

#: One row per key that may post at most once. ``scope`` is ``transaction``
#: (key = transaction id), ``reversal`` (key = reversal id) or
#: ``request:<api key id>`` for ``Idempotency-Key`` headers. Keys unique
#: across members live here, keyed by the key itself (see docs/scaling.md).
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(48), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    #: SHA-256 of the canonical request body
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("member_id", sa.String(64)),
    sa.Column("entry_id", sa.Uuid(as_uuid=False)),
    #: the stored response, for ``Idempotency-Key`` replays
    sa.Column("status_code", sa.SmallInteger),
    sa.Column("response_body", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class Result:
    """An operation's answer: its JSON body, whether it made something new, whether it
    replays an earlier answer to the same key, and what the operation knew that the body does not
    say and the metrics count by (``tier``)."""

    body: dict[str, Any]
    created: bool = False
    replayed: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def request_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of a canonical JSON form, to tell a retry from a different request."""

    def default(value: object) -> str:
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).isoformat()
        return str(value)

    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=default)
    return hashlib.sha256(text.encode()).hexdigest()


#: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` as text: the same SQL on
#: PostgreSQL and SQLite, and, unlike SQLAlchemy's dialect ``Insert`` with a
#: conflict clause, cached once compiled; it runs on every booking.
CLAIM = sa.text(
    "INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at) "
    "VALUES (:scope, :key, :request_hash, :member_id, :entry_id, :created_at) "
    "ON CONFLICT DO NOTHING RETURNING key"
).bindparams(
    sa.bindparam("entry_id", type_=idempotency_keys.c.entry_id.type),
    sa.bindparam("created_at", type_=idempotency_keys.c.created_at.type),
)


#: PostgreSQL: the claim that also locks the member's rows, as bookings lock them (``FOR NO KEY
#: UPDATE``), in the same round trip. The lock is taken before the member's state is read, by a
#: statement of its own: a statement that waited for the lock would read with the snapshot it
#: started with, missing what the transaction it waited for wrote. Nothing is claimed for a member
#: that is not enrolled. (SQLite runs one writer at a time: its transactions need no row lock.)
CLAIM_LOCKING = sa.text(
    "WITH member AS (SELECT a.member_id FROM member_accounts a JOIN members m ON m.member_id = a.member_id"
    " WHERE a.member_id = :member_id FOR NO KEY UPDATE OF a, m) "
    "INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at) "
    "SELECT :scope, :key, :request_hash, member.member_id, :entry_id, :created_at FROM member "
    "ON CONFLICT DO NOTHING RETURNING key"
).bindparams(
    sa.bindparam("entry_id", type_=idempotency_keys.c.entry_id.type),
    sa.bindparam("created_at", type_=idempotency_keys.c.created_at.type),
)


def claim_key(
    conn: Connection,
    scope: str,
    key: str,
    digest: str,
    *,
    field: str,
    member_id: str | None,
    now: dt.datetime,
    entry_id: str | None = None,
    lock_member: bool = False,
) -> sa.Row[Any] | None:
    """Claim ``(scope, key)``. Returns ``None`` if this call claimed it, else the
    existing record; raises :class:`IdempotencyConflict`, naming ``field`` (where
    the key came from), if that record was made for a different request.

    With ``lock_member`` the claim also locks ``member_id``'s rows (:data:`CLAIM_LOCKING`)
    and raises :class:`UnknownMember` if the member is not enrolled and the key is free."""
    params = {
        "scope": scope,
        "key": key,
        "request_hash": digest,
        "member_id": member_id,
        "entry_id": entry_id,
        "created_at": now,
    }
    locking = lock_member and conn.dialect.name == "postgresql"
    claimed = conn.execute(CLAIM_LOCKING if locking else CLAIM, params).first()
    if claimed is not None:
        return None
    existing = find(conn, scope, key)
    if existing is None and locking:
        raise UnknownMember(f"member {member_id!r} is not enrolled", field="member_id")
    assert existing is not None  # the insert found it, and nothing deletes keys
    check_same(existing, digest, f"{scope} {key!r}", field=field)
    return existing


def find(conn: Connection, scope: str, key: str) -> sa.Row[Any] | None:
    """The record of ``(scope, key)``, if it was claimed."""
    ik = idempotency_keys.c
    return conn.execute(sa.select(idempotency_keys).where(ik.scope == scope, ik.key == key)).first()


def check_same(record: sa.Row[Any], digest: str, what: str, *, field: str) -> None:
    """Refuse a key whose first use was a different request."""
    if record.request_hash != digest:
        raise IdempotencyConflict(f"{what} was already used with a different request", field=field)


def remember(conn: Connection, scope: str, key: str, status: int, body: dict[str, Any]) -> None:
    """Store the answer given to a claimed key, for its replays."""
    ik = idempotency_keys.c
    conn.execute(
        idempotency_keys.update()
        .where(ik.scope == scope, ik.key == key)
        .values(status_code=status, response_body=json.dumps(body, ensure_ascii=False))
    )


def record_answer(
    conn: Connection, scope: str, key: str, digest: str, status: int, body: dict[str, Any], *, now: dt.datetime
) -> None:
    """Claim a key and store its answer at once, for an operation that ran in transactions of its own
    (a batch); a key claimed meanwhile keeps its first answer."""
    conn.execute(
        insert_ignore(conn, idempotency_keys).values(
            scope=scope,
            key=key,
            request_hash=digest,
            status_code=status,
            response_body=json.dumps(body, ensure_ascii=False),
            created_at=now,
        )
    )
