"""API keys: created with scopes, stored hashed, checked on every request; expiry, rotation with an
overlap, revocation, and each key's own rate limits.

A key is ``lk_<id>_<secret>``. Rotating a key gives it a new secret and keeps its id, name,
scopes and limits; the old secret keeps working for the overlap asked for, so that clients can
be moved over without an outage. Only SHA-256 digests of secrets are stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty import audit
from loyalty.auth.models import SCOPES, api_keys
from loyalty.calendar import iso
from loyalty.config import check_rate_limits, parse_rate_limits
from loyalty.db import utcnow
from loyalty.errors import NotFound, ValidationError

#: How often one process writes a key's ``last_used_at`` at most.
LAST_USED_EVERY = dt.timedelta(minutes=1)
#: The longest overlap a rotation may give the old secret.
MAX_OVERLAP = dt.timedelta(days=90)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    #: the moment this secret stops working: the key's expiry, or the end of a rotation's overlap
    valid_until: dt.datetime | None = None
    #: the key's own rate limits per route class
    rate_limits: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def hash_key(key: str) -> str:
    # Keys are 192-bit random tokens, so a fast hash is enough: there is
    # nothing to brute-force that is cheaper than guessing the key.
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise ValidationError.one(
            "scopes",
            f"must be a comma-separated list of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""),
        )
    return scopes


def rate_limits_text(limits: dict[str, str], field_name: str = "rate_limits") -> str | None:
    """The limits as stored (``accrual=50/second;reads=unlimited``); a bad one is a 422 naming the field."""
    try:
        check_rate_limits(limits, field_name)
    except ValueError as exc:
        raise ValidationError.one(field_name, str(exc).split(": ", 1)[-1]) from None
    return ";".join(f"{k}={v}" for k, v in sorted(limits.items())) or None


def new_secret(key_id: str) -> str:
    return f"lk_{key_id}_{secrets.token_urlsafe(24)}"


def create_key(
    conn: Connection,
    *,
    name: str,
    scopes: frozenset[str],
    now: dt.datetime,
    expires_at: dt.datetime | None = None,
    rate_limits: dict[str, str] | None = None,
) -> str:
    """Create a key and return it; only its hash is stored."""
    if expires_at is not None and expires_at <= now:
        raise ValidationError.one("expires_at", "must be in the future")
    key_id = secrets.token_hex(4)
    key = new_secret(key_id)
    conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            key_hash=hash_key(key),
            scopes=",".join(sorted(scopes)),
            created_at=now,
            expires_at=expires_at,
            rate_limits=rate_limits_text(rate_limits or {}),
        )
    )
    return key


def issue_key(
    conn: Connection,
    *,
    name: str,
    scopes: frozenset[str],
    actor: str,
    now: dt.datetime,
    expires_at: dt.datetime | None = None,
    rate_limits: dict[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """:func:`create_key`, audited as ``actor``'s: the new key (shown once) and the key as shown."""
    key = create_key(conn, name=name, scopes=scopes, now=now, expires_at=expires_at, rate_limits=rate_limits)
    view = key_json(key_row(conn, key.split("_")[1]), now)
    audit.record(
        conn, actor=actor, action="api_key.create", object_type="api_key", object_id=view["key_id"], after=view, now=now
    )
    return key, view


def lookup(conn: Connection, key: str, now: dt.datetime | None = None) -> ApiKey | None:
    """The key ``key`` authenticates as, if it is known, neither revoked nor expired, and (an old
    secret) still within its rotation's overlap."""
    now = now or utcnow()
    k = api_keys.c
    digest = hash_key(key)
    row = conn.execute(
        sa.select(api_keys).where(
            sa.or_(k.key_hash == digest, sa.and_(k.previous_key_hash == digest, k.previous_valid_until > now)),
            k.revoked_at.is_(None),
            sa.or_(k.expires_at.is_(None), k.expires_at > now),
        )
    ).first()
    if row is None:
        return None
    ends = [t for t in (row.expires_at, row.previous_valid_until if row.key_hash != digest else None) if t]
    return ApiKey(
        row.id,
        row.name,
        frozenset(row.scopes.split(",")),
        valid_until=min(ends) if ends else None,
        rate_limits=parse_rate_limits(row.rate_limits or "", "rate_limits"),
    )


def touch(conn: Connection, key_id: str, now: dt.datetime) -> None:
    """Record that the key was used now (unless it was within the last minute)."""
    k = api_keys.c
    conn.execute(
        api_keys.update()
        .where(k.id == key_id, sa.or_(k.last_used_at.is_(None), k.last_used_at < now - LAST_USED_EVERY))
        .values(last_used_at=now)
    )


def key_row(conn: Connection, key_id: str, *, lock: bool = False) -> Any:
    q = sa.select(api_keys).where(api_keys.c.id == key_id)
    row = conn.execute(q.with_for_update() if lock else q).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r}", field="key_id")
    return row


def key_json(row: Any, now: dt.datetime) -> dict[str, Any]:
    """A key as the API and the CLI show it: never its secret nor its hash."""
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    overlap = row.previous_valid_until if row.previous_valid_until and row.previous_valid_until > now else None
    return {
        "key_id": row.id,
        "name": row.name,
        "scopes": sorted(row.scopes.split(",")),
        "status": status,
        "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at) if row.expires_at else None,
        "last_used_at": iso(row.last_used_at) if row.last_used_at else None,
        "rotated_at": iso(row.rotated_at) if row.rotated_at else None,
        "previous_secret_valid_until": iso(overlap) if overlap else None,
        "revoked_at": iso(row.revoked_at) if row.revoked_at else None,
        "rate_limits": parse_rate_limits(row.rate_limits or "", "rate_limits"),
    }


def list_keys(conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    return [
        key_json(row, now) for row in conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))
    ]


def rotate(conn: Connection, key_id: str, *, overlap: dt.timedelta, now: dt.datetime) -> tuple[str, dict[str, Any]]:
    """Give the key a new secret; the current one keeps working for ``overlap`` (a secret an earlier
    rotation kept working stops now). Returns the new key, shown once, and the key as it is now."""
    if not dt.timedelta(0) <= overlap <= MAX_OVERLAP:
        raise ValidationError.one("overlap_seconds", f"must be from 0 to {int(MAX_OVERLAP.total_seconds())}")
    row = key_row(conn, key_id, lock=True)
    if row.revoked_at is not None:
        raise ValidationError.one("key_id", "the key is revoked; create a new one")
    key = new_secret(row.id)
    conn.execute(
        api_keys.update()
        .where(api_keys.c.id == row.id)
        .values(
            key_hash=hash_key(key),
            previous_key_hash=row.key_hash if overlap else None,
            previous_valid_until=now + overlap if overlap else None,
            rotated_at=now,
        )
    )
    return key, key_json(key_row(conn, key_id), now)


def revoke(conn: Connection, key_id: str, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Revoke the key, both secrets of it, audited as ``actor``'s; a key already revoked stays as
    it was."""
    row = key_row(conn, key_id, lock=True)
    if row.revoked_at is None:
        conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(revoked_at=now))
    view = key_json(key_row(conn, key_id), now)
    audit.record(
        conn, actor=actor, action="api_key.revoke", object_type="api_key", object_id=key_id, after=view, now=now
    )
    return view


class KeyCache:
    """Remembers valid keys for a few seconds so most requests skip the lookup.

    A revoked key stops working within ``ttl`` seconds; an expired one (or an old secret past its
    rotation's overlap) at once, whatever the cache holds.
    """

    def __init__(self, engine: Engine, ttl: float) -> None:
        self.engine = engine
        self.ttl = ttl
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._touched: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str, now: dt.datetime | None = None) -> ApiKey | None:
        digest = hash_key(key)
        now = now or utcnow()
        tick = time.monotonic()
        with self._lock:
            hit = self._keys.get(digest)
        if hit and hit[0] > tick:
            found: ApiKey | None = hit[1]
        else:
            with self.engine.execution_options(readonly=True).connect() as conn:
                found = lookup(conn, key, now)
            if found is not None and self.ttl > 0:
                with self._lock:
                    if len(self._keys) > 10_000:
                        self._keys.clear()
                    self._keys[digest] = (tick + self.ttl, found)
        if found is None or (found.valid_until is not None and found.valid_until <= now):
            return None
        self.touch(found.id, now)
        return found

    def touch(self, key_id: str, now: dt.datetime) -> None:
        """``last_used_at``, written at most once a minute per key and process."""
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < LAST_USED_EVERY:
                return
            self._touched[key_id] = now
        with self.engine.begin() as conn:
            touch(conn, key_id, now)
