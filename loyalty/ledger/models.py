"""Ledger tables.

Every member-scoped table carries ``member_id`` and includes it in its primary
and unique keys, so the schema can be distributed by member unchanged.

On PostgreSQL the journal (``journal_entries`` and ``postings``) is partitioned by the UTC month
of ``posted_at`` (migration 0021, :mod:`loyalty.ledger.partitions`); these tables describe the
logical schema both backends share. A partitioned table's keys must include its partition key, so
the journal's keys unique across months, and the target of every foreign key that names an entry,
are in :data:`entry_keys`, one row per entry.
"""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

ENTRY_KINDS = ("accrual", "bonus", "reversal", "hold", "capture", "void", "expiry", "adjustment")
ACCOUNT_KINDS = ("member", "issued", "redeemed", "expired", "adjustment", "holds")
HOLD_STATUSES = ("pending", "captured", "voided")

#: The chart of accounts. ``member`` stands for each member's own points
#: account (the posting's ``member_id`` says whose); the others are system
#: accounts whose balances are aggregates of their postings, never stored.
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("code", sa.String(80), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.CheckConstraint(sa.column("kind").in_(ACCOUNT_KINDS), name="kind"),
)

#: The member's points account: the only ledger row a member's request locks.
member_accounts = sa.Table(
    "member_accounts",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id"), primary_key=True),
    #: sum of the member's postings on ``member``: the points holds leave them, the API's ``available``
    #: (the API's ``balance`` is this plus ``held``); negative only after a refund of spent points
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    #: points moved to ``holds`` by redemptions still in flight
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    #: number of entries posted for this member; gives each entry its ``seq``
    sa.Column("entry_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_activity_at", UTCDateTime),
    #: the ``chain_hash`` of the member's last entry that has one (the head of its hash chain, see
    #: :mod:`loyalty.ledger.chain`); NULL before the first
    sa.Column("chain_head", sa.LargeBinary(32)),
    sa.CheckConstraint("held >= 0", name="held_not_negative"),
    sa.CheckConstraint("entry_seq >= 0", name="entry_seq_not_negative"),
)

#: One row per journal entry, written with it: the journal's keys unique across all its months
#: (``seq`` and ``(kind, source_ref)`` per member), and the target of every foreign key that names an
#: entry. Not partitioned, so it can hold them; append-only, as the journal is. The two foreign keys
#: between it and the entry make them one to one (the key's is checked at commit, the entry being
#: written after its key).
entry_keys = sa.Table(
    "entry_keys",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("entry_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("source_ref", sa.String(128), nullable=False),
    #: the entry's posting date: which partition holds it
    sa.Column("posted_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("member_id", "seq"),
    sa.UniqueConstraint("member_id", "kind", "source_ref"),
    sa.ForeignKeyConstraint(
        ["member_id", "entry_id", "posted_at"],
        ["journal_entries.member_id", "journal_entries.id", "journal_entries.posted_at"],
        deferrable=True,
        initially="DEFERRED",
        use_alter=True,
    ),
)

journal_entries = sa.Table(
    "journal_entries",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
    #: the entry's position in the member's statement, 1, 2, 3, ...
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    #: what caused it: a transaction id, reversal id, hold id or bonus name
    sa.Column("source_ref", sa.String(128), nullable=False),
    #: net change of the member's account
    sa.Column("points", sa.BigInteger, nullable=False),
    #: the member account's balance right after this entry (held points left out, as in ``member_accounts``)
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("transaction_id", sa.String(64)),
    #: the entry this one corrects or settles (reversal, capture, void)
    sa.Column("related_entry_id", sa.Uuid(as_uuid=False)),
    sa.Column("programme_version", sa.String(32)),
    sa.Column("memo", sa.String(500)),
    #: when the ledger moved (the posting date); reports count periods by it, and PostgreSQL
    #: partitions the journal by its UTC month
    sa.Column("posted_at", UTCDateTime, primary_key=True),
    #: when what it posts occurred (the business date): a transaction's ``occurred_at``, a bonus's
    #: earning; NULL where it is the posting date
    sa.Column("occurred_at", UTCDateTime),
    #: SHA-256 over the hash of the member's entry before it, this entry's digest (its content
    #: and postings), its ``seq`` and ``balance_after`` (:mod:`loyalty.ledger.chain`); NULL on an
    #: entry a release before the chain posted while the upgrade rolled out
    sa.Column("chain_hash", sa.LargeBinary(32)),
    #: ``seq`` and ``(kind, source_ref)`` are unique per member through :data:`entry_keys`
    sa.ForeignKeyConstraint(["member_id", "id"], ["entry_keys.member_id", "entry_keys.entry_id"]),
    sa.ForeignKeyConstraint(["member_id"], ["member_accounts.member_id"]),
    sa.CheckConstraint(sa.column("kind").in_(ENTRY_KINDS), name="kind"),
)

postings = sa.Table(
    "postings",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("entry_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column("line", sa.SmallInteger, primary_key=True),
    sa.Column("account", sa.String(80), sa.ForeignKey("accounts.code"), nullable=False),
    #: signed points: positive credits the account, negative debits it
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("rule_id", sa.String(80)),
    #: the entry's posting date (the partition key on PostgreSQL)
    sa.Column("posted_at", UTCDateTime, primary_key=True),
    sa.ForeignKeyConstraint(
        ["member_id", "entry_id", "posted_at"],
        ["journal_entries.member_id", "journal_entries.id", "journal_entries.posted_at"],
    ),
    sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
    sa.Index("ix_postings_account_posted_at", "account", "posted_at"),
)

#: Points earned together, expiring together. Consumed first-expiring-first.
point_lots = sa.Table(
    "point_lots",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("rule_id", sa.String(80), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("funding_source", sa.String(64), nullable=False),
    #: qualifying points count toward tier
    sa.Column("qualifying", sa.Boolean, nullable=False),
    sa.Column("original", sa.BigInteger, nullable=False),
    sa.Column("remaining", sa.BigInteger, nullable=False),
    sa.Column("earned_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["member_id", "entry_id"], ["entry_keys.member_id", "entry_keys.entry_id"]),
    sa.CheckConstraint("original > 0", name="original_positive"),
    sa.CheckConstraint("remaining >= 0 AND remaining <= original", name="remaining_in_range"),
    sa.Index(
        "ix_point_lots_open",
        "member_id",
        "expires_at",
        sqlite_where=sa.text("remaining > 0"),
        postgresql_where=sa.text("remaining > 0"),
    ),
    #: for caps: what a member earned from each rule in a day or month; for tier metrics, the
    #: qualifying points earned in a window, read from the index alone (PostgreSQL)
    sa.Index(
        "ix_point_lots_member_id_earned_at", "member_id", "earned_at", postgresql_include=["qualifying", "original"]
    ),
)

#: Which entry took how many points from which lot, so it can be undone.
#: For every lot, ``remaining = original - sum(points)`` of its consumptions.
lot_consumptions = sa.Table(
    "lot_consumptions",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("entry_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column("lot_id", sa.Uuid(as_uuid=False), primary_key=True),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(["member_id", "entry_id"], ["entry_keys.member_id", "entry_keys.entry_id"]),
    sa.ForeignKeyConstraint(["member_id", "lot_id"], ["point_lots.member_id", "point_lots.id"]),
    #: positive takes points from the lot; negative gives them back (void, refund)
    sa.CheckConstraint("points <> 0", name="points_not_zero"),
)

#: Two-phase spending: a hold is captured or voided, exactly once.
holds = sa.Table(
    "holds",
    metadata,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: the account credited on capture, e.g. ``redeemed:<benefit>``
    sa.Column("capture_account", sa.String(80), sa.ForeignKey("accounts.code"), nullable=False),
    sa.Column("hold_entry_id", sa.Uuid(as_uuid=False), nullable=False),
    #: the capture or void entry; written before the hold is marked resolved
    sa.Column("resolution_entry_id", sa.Uuid(as_uuid=False)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.ForeignKeyConstraint(["member_id", "hold_entry_id"], ["entry_keys.member_id", "entry_keys.entry_id"]),
    #: checked at commit: the release before 0011 resolved a hold before writing its entry
    sa.ForeignKeyConstraint(
        ["member_id", "resolution_entry_id"],
        ["entry_keys.member_id", "entry_keys.entry_id"],
        deferrable=True,
        initially="DEFERRED",
    ),
    sa.CheckConstraint("points > 0", name="points_positive"),
    sa.CheckConstraint(sa.column("status").in_(HOLD_STATUSES), name="status"),
    sa.CheckConstraint("(status = 'pending') = (resolution_entry_id IS NULL)", name="resolved_iff_entry"),
)

#: Accounts that exist in every installation.
SYSTEM_ACCOUNTS = [
    {"code": "member", "kind": "member", "name": "Member points (one per member)"},
    {"code": "holds", "kind": "holds", "name": "Points held for redemptions in flight"},
    {"code": "expired", "kind": "expired", "name": "Expired points (breakage)"},
    {"code": "adjustments", "kind": "adjustment", "name": "Manual adjustments"},
    {"code": "issued:bank", "kind": "issued", "name": "Points issued, funded by bank marketing"},
    {"code": "redeemed:unspecified", "kind": "redeemed", "name": "Points redeemed, benefit not named"},
]

#: Closed local months (``YYYY-MM``), as the UTC instants they span: no entry may carry a posting
#: date inside one (finance closes them, :mod:`loyalty.finance.periods`).
closed_periods = sa.Table(
    "closed_periods",
    metadata,
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime, nullable=False),
    sa.Column("closed_by", sa.String(100), nullable=False),
)

#: How a posting joins its entry: on the entry's key and its posting date, which lets PostgreSQL
#: prune the entries' partitions to the months the postings' own filter leaves.
POSTING_ENTRY = sa.and_(
    postings.c.member_id == journal_entries.c.member_id,
    postings.c.entry_id == journal_entries.c.id,
    postings.c.posted_at == journal_entries.c.posted_at,
)
