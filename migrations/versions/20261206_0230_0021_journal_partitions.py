"""journal partitioned by month

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 02:30:00

On PostgreSQL ``journal_entries`` and ``postings`` become tables partitioned by range of
``posted_at``, one partition per UTC month (``journal_entries_YYYY_MM``, ``postings_YYYY_MM``) and a
DEFAULT partition each (``journal_entries_default``, ``postings_default``) for a month without one.
Partitions are made here for every month from the earliest posting to :data:`MONTHS_AHEAD` months
after the current one; the ``partitions`` job makes the later ones.

A partitioned table's keys must include its partition key, so the journal's keys unique across
months move to a new table that is not partitioned, ``entry_keys`` (member_id, entry_id, seq, kind,
source_ref, posted_at): primary key (member_id, entry_id), unique (member_id, seq) and (member_id,
kind, source_ref), append-only as the journal is. It is filled here from the entries, and every
foreign key that named an entry (lots, consumptions, holds, transactions, adjustments) now names
its key. The entry's primary key
becomes (member_id, id, posted_at), its posting's (member_id, entry_id, line, posted_at); a posting
names its entry with its posting date, and an entry and its key name each other (the key's foreign
key is checked at commit, its entry being written after it). SQLite gets the same keys, unpartitioned.

Rows move as they are: ``chain_hash`` and every column keep their values, so the hash chain
verifies as before. On PostgreSQL the tables are built anew beside the old ones, filled, and the old
ones dropped, in the migration's one transaction; that takes the journal's tables for as long as
the copy lasts, so run it in a maintenance window on a large journal. A posting whose posting date
is not its entry's would break the new foreign key: the migration refuses, naming how many.

The release before this one writes no ``entry_keys`` row, which the new foreign keys refuse:
upgrade every node with the schema (not a rolling upgrade).
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

#: Months after the current one that get their partitions here.
MONTHS_AHEAD = 3
PARTITIONED = ("journal_entries", "postings")

#: The foreign keys that name an entry: (table, column, checked at commit).
REFERENCING = [
    ("point_lots", "entry_id", False),
    ("lot_consumptions", "entry_id", False),
    ("holds", "hold_entry_id", False),
    ("holds", "resolution_entry_id", True),
    ("transactions", "entry_id", True),
    ("adjustments", "entry_id", False),
]

#: The balance check of migration 0001, and the same reading only the entry's partition.
BALANCED = """
CREATE OR REPLACE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
    lines integer;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO total, lines
      FROM postings WHERE member_id = NEW.member_id AND entry_id = NEW.entry_id{same_month};
    IF total <> 0 OR lines < 2 THEN
        RAISE EXCEPTION 'journal entry % of member % does not balance: % postings summing to %',
            NEW.entry_id, NEW.member_id, lines, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
"""


def _fk(table: str, columns: list[str], referred: str) -> str:
    return op.f(f"fk_{table}_{'_'.join(columns)}_{referred}")


def _deferred(deferred: bool) -> dict[str, object]:
    return {"deferrable": True, "initially": "DEFERRED"} if deferred else {}


def _create_entry_keys() -> None:
    op.create_table(
        "entry_keys",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=128), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "entry_id", name=op.f("pk_entry_keys")),
        sa.UniqueConstraint("member_id", "seq", name=op.f("uq_entry_keys_member_id_seq")),
        sa.UniqueConstraint("member_id", "kind", "source_ref", name=op.f("uq_entry_keys_member_id_kind_source_ref")),
    )


def _fill_entry_keys(source: str) -> None:
    op.execute(
        "INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at) "
        f"SELECT member_id, id, seq, kind, source_ref, posted_at FROM {source}"
    )


def _refuse_postings_off_their_entry_date(entries: str, postings: str) -> None:
    query = (
        f"FROM {postings} p JOIN {entries} e ON e.member_id = p.member_id AND e.id = p.entry_id "
        "WHERE p.posted_at <> e.posted_at"
    )
    off = op.get_bind().execute(sa.text(f"SELECT count(*) {query}")).scalar_one()
    if off:
        raise RuntimeError(
            f"{off} postings carry a posting date other than their entry's, which the ledger never writes and "
            f"a journal keyed by posting date cannot hold: list them with SELECT p.* {query}"
        )


# PostgreSQL


def _utc_month(moment: dt.datetime | dt.date) -> dt.date:
    if isinstance(moment, dt.datetime):
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date()
    return moment.replace(day=1)


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _partition_months(conn: sa.Connection) -> list[dt.date]:
    """Every month from the earliest posting date to :data:`MONTHS_AHEAD` after the current one
    (or the latest posting date, if later)."""
    earliest, latest = conn.execute(
        sa.text("SELECT min(posted_at), max(posted_at) FROM journal_entries_0020")
    ).one()
    now = _utc_month(dt.datetime.now(dt.UTC))
    last = now
    for _ in range(MONTHS_AHEAD):
        last = _next_month(last)
    month = _utc_month(earliest) if earliest is not None else now
    if latest is not None:
        last = max(last, _utc_month(latest))
    found = []
    while month <= last:
        found.append(month)
        month = _next_month(month)
    return found


def _create_partitions(conn: sa.Connection) -> None:
    for month in _partition_months(conn):
        for table in PARTITIONED:
            op.execute(
                f"CREATE TABLE {table}_{month:%Y_%m} PARTITION OF {table} FOR VALUES FROM "
                f"('{month:%Y-%m-%d} 00:00:00+00') TO ('{_next_month(month):%Y-%m-%d} 00:00:00+00')"
            )
    for table in PARTITIONED:
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")


def _pg_triggers() -> None:
    for table in PARTITIONED:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
        )
    op.execute(
        "CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced()"
    )


def _pg_set_aside(suffix: str) -> None:
    """Rename the journal's tables ``<table>_<suffix>`` and drop what a new table of the name
    would need: the keys and indexes (whose names are the schema's) and the foreign keys."""
    for table, column, _ in REFERENCING:
        for referred in ("journal_entries", "entry_keys"):
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {_fk(table, ['member_id', column], referred)}")
    op.execute("ALTER TABLE journal_entries RENAME TO journal_entries_" + suffix)
    op.execute("ALTER TABLE postings RENAME TO postings_" + suffix)
    op.execute(f"ALTER TABLE postings_{suffix} DROP CONSTRAINT pk_postings")
    op.execute("DROP INDEX ix_postings_account_posted_at")
    op.execute(f"ALTER TABLE journal_entries_{suffix} DROP CONSTRAINT pk_journal_entries CASCADE")
    for constraint in ("uq_journal_entries_member_id_seq", "uq_journal_entries_member_id_kind_source_ref"):
        op.execute(f"ALTER TABLE journal_entries_{suffix} DROP CONSTRAINT IF EXISTS {constraint}")


def _pg_copy(suffix: str) -> None:
    for table in PARTITIONED:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_{suffix}")
    op.execute(f"DROP TABLE postings_{suffix}")
    op.execute(f"DROP TABLE journal_entries_{suffix} CASCADE")


def _pg_upgrade() -> None:
    conn = op.get_bind()
    _refuse_postings_off_their_entry_date("journal_entries", "postings")
    _pg_set_aside("0020")
    for table in PARTITIONED:
        op.execute(
            f"CREATE TABLE {table} (LIKE {table}_0020 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (posted_at)"
        )
    _create_partitions(conn)
    _create_entry_keys()
    _fill_entry_keys("journal_entries_0020")
    _pg_copy("0020")
    # Keys and foreign keys after the copy: each is checked over the whole table at once.
    op.execute("ALTER TABLE journal_entries ADD CONSTRAINT pk_journal_entries PRIMARY KEY (member_id, id, posted_at)")
    op.execute(
        "ALTER TABLE postings ADD CONSTRAINT pk_postings PRIMARY KEY (member_id, entry_id, line, posted_at)"
    )
    op.execute("CREATE INDEX ix_postings_account_posted_at ON postings (account, posted_at)")
    op.create_foreign_key(
        _fk("journal_entries", ["member_id"], "member_accounts"),
        "journal_entries",
        "member_accounts",
        ["member_id"],
        ["member_id"],
    )
    op.create_foreign_key(
        _fk("journal_entries", ["member_id", "id"], "entry_keys"),
        "journal_entries",
        "entry_keys",
        ["member_id", "id"],
        ["member_id", "entry_id"],
    )
    op.create_foreign_key(
        _fk("entry_keys", ["member_id", "entry_id", "posted_at"], "journal_entries"),
        "entry_keys",
        "journal_entries",
        ["member_id", "entry_id", "posted_at"],
        ["member_id", "id", "posted_at"],
        deferrable=True,
        initially="DEFERRED",
    )
    op.create_foreign_key(_fk("postings", ["account"], "accounts"), "postings", "accounts", ["account"], ["code"])
    op.create_foreign_key(
        _fk("postings", ["member_id", "entry_id", "posted_at"], "journal_entries"),
        "postings",
        "journal_entries",
        ["member_id", "entry_id", "posted_at"],
        ["member_id", "id", "posted_at"],
    )
    for table, column, deferred in REFERENCING:
        op.create_foreign_key(
            _fk(table, ["member_id", column], "entry_keys"),
            table,
            "entry_keys",
            ["member_id", column],
            ["member_id", "entry_id"],
            **_deferred(deferred),  # type: ignore[arg-type]
        )
    op.execute(BALANCED.format(same_month=" AND posted_at = NEW.posted_at"))
    _pg_triggers()
    op.execute(
        "CREATE TRIGGER entry_keys_append_only BEFORE UPDATE OR DELETE ON entry_keys "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
    )


def _pg_downgrade() -> None:
    op.execute("ALTER TABLE entry_keys DROP CONSTRAINT fk_entry_keys_member_id_entry_id_posted_at_journal_entries")
    _pg_set_aside("0021")
    for table in PARTITIONED:
        op.execute(f"CREATE TABLE {table} (LIKE {table}_0021 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    _pg_copy("0021")
    op.execute("ALTER TABLE journal_entries ADD CONSTRAINT pk_journal_entries PRIMARY KEY (member_id, id)")
    op.create_unique_constraint(op.f("uq_journal_entries_member_id_seq"), "journal_entries", ["member_id", "seq"])
    op.create_unique_constraint(
        op.f("uq_journal_entries_member_id_kind_source_ref"), "journal_entries", ["member_id", "kind", "source_ref"]
    )
    op.execute("ALTER TABLE postings ADD CONSTRAINT pk_postings PRIMARY KEY (member_id, entry_id, line)")
    op.execute("CREATE INDEX ix_postings_account_posted_at ON postings (account, posted_at)")
    op.create_foreign_key(
        _fk("journal_entries", ["member_id"], "member_accounts"),
        "journal_entries",
        "member_accounts",
        ["member_id"],
        ["member_id"],
    )
    op.create_foreign_key(_fk("postings", ["account"], "accounts"), "postings", "accounts", ["account"], ["code"])
    op.create_foreign_key(
        _fk("postings", ["member_id", "entry_id"], "journal_entries"),
        "postings",
        "journal_entries",
        ["member_id", "entry_id"],
        ["member_id", "id"],
    )
    for table, column, deferred in REFERENCING:
        op.create_foreign_key(
            _fk(table, ["member_id", column], "journal_entries"),
            table,
            "journal_entries",
            ["member_id", column],
            ["member_id", "id"],
            **_deferred(deferred),  # type: ignore[arg-type]
        )
    op.drop_table("entry_keys")
    op.execute(BALANCED.format(same_month=""))
    _pg_triggers()


# SQLite: the same keys, each table built anew (batch mode), its append-only triggers after it.


def _sqlite_append_only(table: str) -> None:
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} BEFORE {action} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: post a correcting entry instead'); END"
        )


def _sqlite_referencing(referred: str, referred_column: str, was: str) -> None:
    for table in dict.fromkeys(t for t, _, _ in REFERENCING):
        with op.batch_alter_table(table, recreate="always") as batch:
            for _, column, deferred in (r for r in REFERENCING if r[0] == table):
                batch.drop_constraint(_fk(table, ["member_id", column], was), type_="foreignkey")
                batch.create_foreign_key(
                    _fk(table, ["member_id", column], referred),
                    referred,
                    ["member_id", column],
                    ["member_id", referred_column],
                    **_deferred(deferred),  # type: ignore[arg-type]
                )
    _sqlite_append_only("lot_consumptions")


def _sqlite_upgrade() -> None:
    _refuse_postings_off_their_entry_date("journal_entries", "postings")
    _create_entry_keys()
    _fill_entry_keys("journal_entries")
    with op.batch_alter_table("journal_entries", recreate="always") as batch:
        batch.drop_constraint("uq_journal_entries_member_id_seq", type_="unique")
        batch.drop_constraint("uq_journal_entries_member_id_kind_source_ref", type_="unique")
        batch.drop_constraint("pk_journal_entries", type_="primary")
        batch.create_primary_key("pk_journal_entries", ["member_id", "id", "posted_at"])
        batch.create_foreign_key(
            _fk("journal_entries", ["member_id", "id"], "entry_keys"),
            "entry_keys",
            ["member_id", "id"],
            ["member_id", "entry_id"],
        )
    with op.batch_alter_table("postings", recreate="always") as batch:
        batch.drop_constraint(_fk("postings", ["member_id", "entry_id"], "journal_entries"), type_="foreignkey")
        batch.drop_constraint("pk_postings", type_="primary")
        batch.create_primary_key("pk_postings", ["member_id", "entry_id", "line", "posted_at"])
        batch.create_foreign_key(
            _fk("postings", ["member_id", "entry_id", "posted_at"], "journal_entries"),
            "journal_entries",
            ["member_id", "entry_id", "posted_at"],
            ["member_id", "id", "posted_at"],
        )
    with op.batch_alter_table("entry_keys", recreate="always") as batch:
        batch.create_foreign_key(
            _fk("entry_keys", ["member_id", "entry_id", "posted_at"], "journal_entries"),
            "journal_entries",
            ["member_id", "entry_id", "posted_at"],
            ["member_id", "id", "posted_at"],
            deferrable=True,
            initially="DEFERRED",
        )
    for table in (*PARTITIONED, "entry_keys"):
        _sqlite_append_only(table)
    _sqlite_referencing("entry_keys", "entry_id", "journal_entries")


def _sqlite_downgrade() -> None:
    # Each table built anew only once the keys it and its copy name are there: the test suite takes
    # SQLite down with foreign keys enforced, where a key naming columns that are not a table's key
    # stops every statement on the tables it joins.
    with op.batch_alter_table("entry_keys", recreate="always") as batch:
        batch.drop_constraint(
            _fk("entry_keys", ["member_id", "entry_id", "posted_at"], "journal_entries"), type_="foreignkey"
        )
    with op.batch_alter_table("journal_entries", recreate="always") as batch:
        batch.drop_constraint(_fk("journal_entries", ["member_id", "id"], "entry_keys"), type_="foreignkey")
        batch.drop_constraint("pk_journal_entries", type_="primary")
        batch.create_primary_key("pk_journal_entries", ["member_id", "id"])
        batch.create_unique_constraint("uq_journal_entries_member_id_seq", ["member_id", "seq"])
        batch.create_unique_constraint(
            "uq_journal_entries_member_id_kind_source_ref", ["member_id", "kind", "source_ref"]
        )
    with op.batch_alter_table("postings", recreate="always") as batch:
        batch.drop_constraint(
            _fk("postings", ["member_id", "entry_id", "posted_at"], "journal_entries"), type_="foreignkey"
        )
        batch.drop_constraint("pk_postings", type_="primary")
        batch.create_primary_key("pk_postings", ["member_id", "entry_id", "line"])
        batch.create_foreign_key(
            _fk("postings", ["member_id", "entry_id"], "journal_entries"),
            "journal_entries",
            ["member_id", "entry_id"],
            ["member_id", "id"],
        )
    for table in PARTITIONED:
        _sqlite_append_only(table)
    _sqlite_referencing("journal_entries", "id", "entry_keys")
    op.drop_table("entry_keys")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_downgrade()
    else:
        _sqlite_downgrade()
