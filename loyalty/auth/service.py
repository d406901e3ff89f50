"""API keys: created with scopes, stored hashed, checked on every request."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty import audit
from loyalty.auth.models import SCOPES, api_keys
from loyalty.calendar import iso
from loyalty.errors import NotFound, ValidationError


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]


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


def create_key(conn: Connection, *, name: str, scopes: frozenset[str], now: dt.datetime) -> str:
    """Create a key and return it; only its hash is stored."""
    key_id = secrets.token_hex(4)
    key = f"lk_{key_id}_{secrets.token_urlsafe(24)}"
    conn.execute(
        api_keys.insert().values(
            id=key_id, name=name, key_hash=hash_key(key), scopes=",".join(sorted(scopes)), created_at=now
        )
    )
    return key


def issue_key(conn: Connection, *, name: str, scopes: frozenset[str], actor: str, now: dt.datetime) -> str:
    """:func:`create_key` for a person at work (the admin UI): the key's id, name and scopes are audited."""
    key = create_key(conn, name=name, scopes=scopes, now=now)
    audit.record(
        conn,
        actor=actor,
        action="api_key.create",
        object_type="api_key",
        object_id=key.split("_")[1],
        after={"name": name, "scopes": sorted(scopes)},
        now=now,
    )
    return key


def lookup(conn: Connection, key: str) -> ApiKey | None:
    row = conn.execute(
        sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.scopes).where(
            api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return ApiKey(row.id, row.name, frozenset(row.scopes.split(",")))


class KeyCache:
    """Remembers valid keys for a few seconds so most requests skip the lookup.

    A revoked key stops working within ``ttl`` seconds.
    """

    def __init__(self, engine: Engine, ttl: float) -> None:
        self.engine = engine
        self.ttl = ttl
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._keys.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        with self.engine.execution_options(readonly=True).connect() as conn:
            found = lookup(conn, key)
        if found is not None and self.ttl > 0:
            with self._lock:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[digest] = (now + self.ttl, found)
        return found


def list_keys(conn: Connection) -> list[dict[str, Any]]:
    """Every key without its secret: id, name, scopes, when made and revoked."""
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.id))
    return [
        {
            "id": r.id,
            "name": r.name,
            "scopes": r.scopes.split(","),
            "created_at": iso(r.created_at),
            "revoked_at": iso(r.revoked_at),
        }
        for r in rows
    ]


def revoke(conn: Connection, key_id: str, *, actor: str, now: dt.datetime) -> None:
    """Stop a key working (within the key cache's few seconds); audited."""
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r}", field="key_id")
    if row.revoked_at is None:
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=now))
        audit.record(
            conn,
            actor=actor,
            action="api_key.revoke",
            object_type="api_key",
            object_id=key_id,
            before={"name": row.name, "scopes": row.scopes},
            now=now,
        )
