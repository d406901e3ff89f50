"""journal hash chain

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 02:20:00

Makes the journal tamper-evident. Each entry gets ``chain_hash``: SHA-256 over the hash of the
member's entry before it, the entry's digest (its content and postings, in the canonical form of
``loyalty.ledger.chain``), its ``seq`` and its ``balance_after``. Each member's account gets
``chain_head``, the hash of its last entry, which every booking moves on in the same ``UPDATE``
that moves the balance.

The entries already there are sealed here, member by member in ``seq`` order, from the entries and
postings as they stand, so that a migrated database verifies clean: from now on the chain proves
the journal has not changed since this migration. Sealing rewrites every entry row (on PostgreSQL
the table grows by its own size until it is vacuumed) with the append-only guard off for the
migration's transaction alone.

Each migration must work with the code of the previous release still running: both columns are
nullable and the old code writes neither. An entry an old node posts after this ran carries no
hash and leaves the account's head as it was; the chain passes over it (``loyalty verify`` counts
such entries, and checks everything else of them as before).
"""

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: Entries read, and hashes written, at a time.
BATCH = 5000

# The hash format of ``loyalty.ledger.chain`` at this revision, kept here so that the migration
# keeps sealing as it did whatever the code becomes.
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
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _field(name: str, value: Any) -> str:
    if value is None:
        return "~"
    if name in ("posted_at", "occurred_at"):
        if value.tzinfo is None:  # SQLite's timestamps are UTC without an offset
            value = value.replace(tzinfo=dt.UTC)
        text = str((value - EPOCH) // dt.timedelta(microseconds=1))
    elif name in ("id", "related_entry_id"):
        text = str(uuid.UUID(str(value)))
    else:
        text = str(value)
    return f"{len(text)}:{text}"


def _link(prev: bytes | None, entry: dict[str, Any], lines: list[dict[str, Any]]) -> bytes:
    parts = [_field(name, entry[name]) for name in ENTRY_FIELDS]
    for line in lines:
        parts.extend(_field(name, line[name]) for name in POSTING_FIELDS)
    digest = hashlib.sha256("".join(parts).encode()).digest()
    seq, balance = int(entry["seq"]), int(entry["balance_after"])
    return hashlib.sha256(
        (prev or b"") + digest + seq.to_bytes(8, "big", signed=True) + balance.to_bytes(8, "big", signed=True)
    ).digest()


# The columns read with their types, so that timestamps come back as datetimes on SQLite too.
_ENTRIES = sa.table(
    "journal_entries",
    sa.column("member_id", sa.String),
    sa.column("id", sa.String),
    sa.column("seq", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("source_ref", sa.String),
    sa.column("points", sa.BigInteger),
    sa.column("balance_after", sa.BigInteger),
    sa.column("posted_at", sa.DateTime(timezone=True)),
    sa.column("occurred_at", sa.DateTime(timezone=True)),
    sa.column("transaction_id", sa.String),
    sa.column("related_entry_id", sa.String),
    sa.column("programme_version", sa.String),
    sa.column("memo", sa.String),
)
_POSTINGS = sa.table(
    "postings",
    sa.column("member_id", sa.String),
    sa.column("entry_id", sa.String),
    sa.column("line", sa.SmallInteger),
    sa.column("account", sa.String),
    sa.column("amount", sa.BigInteger),
    sa.column("rule_id", sa.String),
    sa.column("posted_at", sa.DateTime(timezone=True)),
)


def _sealed(conn: sa.Connection) -> Iterator[tuple[str, str | None, bytes]]:
    """``(member_id, entry id as stored, chain_hash)`` of every entry, member by member in ``seq``
    order, and ``(member_id, None, head)`` after each member's last entry: one ordered read."""
    e, p = _ENTRIES.c, _POSTINGS.c
    query = (
        sa.select(e, p.line, p.account, p.amount, p.rule_id, p.posted_at.label("line_posted_at"))
        .select_from(_ENTRIES.outerjoin(_POSTINGS, sa.and_(p.member_id == e.member_id, p.entry_id == e.id)))
        .order_by(e.member_id, e.seq, p.line)
    )
    entry: Any = None
    head: bytes | None = None
    lines: list[dict[str, Any]] = []
    for row in conn.execute(query, execution_options={"yield_per": BATCH}).mappings():
        if entry is not None and (row["member_id"], row["id"]) != (entry["member_id"], entry["id"]):
            head = _link(head, entry, lines)
            yield entry["member_id"], entry["id"], head
            lines = []
            if row["member_id"] != entry["member_id"]:
                yield entry["member_id"], None, head
                head = None
        entry = row
        if row["line"] is not None:
            lines.append({**row, "posted_at": row["line_posted_at"]})
    if entry is not None:
        head = _link(head, entry, lines)
        yield entry["member_id"], entry["id"], head
        yield entry["member_id"], None, head


def _append_only(on: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE journal_entries {'ENABLE' if on else 'DISABLE'} TRIGGER journal_entries_append_only")
    elif on:
        op.execute(
            "CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries "
            "BEGIN SELECT RAISE(ABORT, 'journal_entries is append-only: post a correcting entry instead'); END"
        )
    else:
        # IF EXISTS: a SQLite database taken below 0009 and back lost it (that downgrade rebuilds the table).
        op.execute("DROP TRIGGER IF EXISTS journal_entries_no_update")


def _seal_every_chain() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    # The hashes go to a scratch table as they are computed, then into the entries and the
    # accounts in one statement each.
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE chain_seals (member_id varchar(64) NOT NULL, id varchar(36), "
        f"hash {'bytea' if postgres else 'blob'} NOT NULL)"
    )
    seals = sa.table("chain_seals", sa.column("member_id"), sa.column("id"), sa.column("hash", sa.LargeBinary))
    batch: list[dict[str, Any]] = []
    for member_id, entry_id, hash_ in _sealed(conn):
        batch.append({"member_id": member_id, "id": entry_id, "hash": hash_})
        if len(batch) >= BATCH:
            conn.execute(seals.insert(), batch)
            batch = []
    if batch:
        conn.execute(seals.insert(), batch)
    conn.exec_driver_sql("CREATE INDEX chain_seals_member_id_id ON chain_seals (member_id, id)")
    if postgres:
        conn.exec_driver_sql("ANALYZE chain_seals")
    id_match = "CAST(s.id AS uuid)" if postgres else "s.id"
    conn.exec_driver_sql(
        "UPDATE journal_entries SET chain_hash = s.hash FROM chain_seals AS s "
        f"WHERE journal_entries.member_id = s.member_id AND journal_entries.id = {id_match}"
    )
    conn.exec_driver_sql(
        "UPDATE member_accounts SET chain_head = s.hash FROM chain_seals AS s "
        "WHERE member_accounts.member_id = s.member_id AND s.id IS NULL"
    )
    conn.exec_driver_sql("DROP TABLE chain_seals")


def upgrade() -> None:
    with op.batch_alter_table("member_accounts") as batch:
        batch.add_column(sa.Column("chain_head", sa.LargeBinary(32)))
    with op.batch_alter_table("journal_entries") as batch:
        batch.add_column(sa.Column("chain_hash", sa.LargeBinary(32)))
    _append_only(False)
    _seal_every_chain()
    _append_only(True)


def downgrade() -> None:
    # Dropped in place: SQLite (3.35 and later) drops a column without building the table anew,
    # which would lose the append-only triggers.
    op.execute("ALTER TABLE journal_entries DROP COLUMN chain_hash")
    op.execute("ALTER TABLE member_accounts DROP COLUMN chain_head")
