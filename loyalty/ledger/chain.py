"""The journal's hash chain: each member's entries, sealed one after the other.

Every entry carries ``chain_hash`` = SHA-256(the hash of the member's entry before it, the entry's
digest, its ``seq``, its ``balance_after``) (:func:`loyalty.db.chain_link`), and the member's
account row carries the hash of its last entry as ``chain_head``. The digest is SHA-256 over the
entry's canonical content (:func:`entry_digest`): who, which entry, what kind, from what, how many
points, when posted and when it occurred, the transaction, the entry it settles, the programme
version, the memo, and each posting (line, account, amount, rule, posting date). Lots and their
consumptions are not sealed: which lot pays for a spend is decided after the account is locked,
and ``loyalty verify`` checks them against the sealed postings instead.

The booking computes the digest in Python before it writes anything; the one ``UPDATE`` of the
member's account that every booking makes anyway links it to the account's head and returns the
new head (:class:`next_head`), so sealing costs no statement. Changing an entry or a posting
afterwards, or deleting the last entry, breaks the chain where it happened; ``loyalty verify``
recomputes every chain and names the first entry that no longer matches.

An entry with no hash (one posted by a release before the chain, while the upgrade rolled out)
is outside the chain: the next sealed entry links to the one before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from loyalty.db import chain_link

__all__ = ["ENTRY_FIELDS", "POSTING_FIELDS", "chain_link", "entry_digest", "micros", "next_head", "sql_digest"]

#: An entry's fields in the order its digest takes them, then each posting's.
ENTRY_FIELDS = (
    "member_id",
    "id",
    "kind",
    "source_ref",
    "points",
    "posted_at",
    "occurred_at",
    "transaction_id",
    "related_entry_id",
    "programme_version",
    "memo",
)
POSTING_FIELDS = ("line", "account", "amount", "rule_id", "posted_at")
_UUIDS = frozenset({"id", "related_entry_id"})
_TIMES = frozenset({"posted_at", "occurred_at"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def micros(moment: dt.datetime) -> int:
    """An aware timestamp as whole microseconds since the Unix epoch."""
    return (moment - _EPOCH) // _MICROSECOND


def _canonical(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in _TIMES:
        return str(micros(value))
    text = str(value)
    if name in _UUIDS and not (len(text) == 36 and text.islower()):  # already canonical, as databases give it
        return str(uuid.UUID(text))
    return text


def _field(text: str | None) -> str:
    # Length-prefixed, so no value can pass for two; "~" (no digit) is a missing one.
    return "~" if text is None else f"{len(text)}:{text}"


def entry_digest(entry: Mapping[Any, Any], postings: Iterable[Mapping[str, Any]]) -> bytes:
    """SHA-256 of an entry's canonical content and of its postings in line order: each of
    :data:`ENTRY_FIELDS`, then of :data:`POSTING_FIELDS` per posting, as text (integers in
    decimal, timestamps as microseconds since the epoch, entry ids as lower-case hyphenated
    UUIDs), each prefixed by its length in characters and a colon, ``~`` for a missing one;
    the whole encoded as UTF-8."""
    parts = [_field(_canonical(name, entry[name])) for name in ENTRY_FIELDS]
    for line in sorted(postings, key=lambda p: int(p["line"])):
        parts.extend(_field(_canonical(name, line[name])) for name in POSTING_FIELDS)
    return hashlib.sha256("".join(parts).encode()).digest()


def _sql_field(expr: str) -> str:
    return f"coalesce(length({expr}) || ':' || {expr}, '~')"


def sql_digest(entry: Mapping[str, str], postings: Sequence[Mapping[str, str]]) -> str:
    """PostgreSQL for :func:`entry_digest` of an entry built in SQL: ``entry`` and each of
    ``postings`` map every field name to a SQL expression of type text giving it in its
    canonical form (``NULL`` for a missing one)."""
    parts = [_sql_field(entry[name]) for name in ENTRY_FIELDS]
    for line in postings:
        parts.extend(_sql_field(line[name]) for name in POSTING_FIELDS)
    return f"sha256(convert_to({' || '.join(parts)}, 'UTF8'))"


def sql_link(prev: str, digest: str, seq: str, balance_after: str) -> str:
    """PostgreSQL for :func:`chain_link` over four SQL expressions."""
    return (
        f"sha256(coalesce({prev}, CAST('' AS bytea)) || {digest} || int8send(CAST({seq} AS bigint))"
        f" || int8send(CAST({balance_after} AS bigint)))"
    )


class next_head(FunctionElement[bytes]):  # noqa: N801  (a SQL function, named as one)
    """``next_head(prev, digest, seq, balance_after)``: :func:`chain_link` in SQL. SQLite calls
    the function :func:`loyalty.db.make_engine` registers; PostgreSQL computes it inline."""

    name = "chain_link"
    type = sa.LargeBinary()
    inherit_cache = True


@compiles(next_head)
def _next_head(element: next_head, compiler: SQLCompiler, **kw: Any) -> str:
    return f"chain_link({compiler.process(element.clauses, **kw)})"


@compiles(next_head, "postgresql")
def _next_head_postgresql(element: next_head, compiler: SQLCompiler, **kw: Any) -> str:
    prev, digest, seq, balance_after = (compiler.process(c, **kw) for c in element.clauses)
    return sql_link(prev, digest, seq, balance_after)
