"""ledger core

Revision ID: 0001
Revises:
Create Date: 2026-11-28 11:00:55.792178

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("journal_entries", "postings", "lot_consumptions")

SYSTEM_ACCOUNTS = [
    {"code": "member", "kind": "member", "name": "Member points (one per member)"},
    {"code": "holds", "kind": "holds", "name": "Points held for redemptions in flight"},
    {"code": "expired", "kind": "expired", "name": "Expired points (breakage)"},
    {"code": "adjustments", "kind": "adjustment", "name": "Manual adjustments"},
    {"code": "issued:bank", "kind": "issued", "name": "Points issued, funded by bank marketing"},
    {"code": "redeemed:unspecified", "kind": "redeemed", "name": "Points redeemed, benefit not named"},
]

PG_BALANCED = """
CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
    lines integer;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO total, lines
      FROM postings WHERE member_id = NEW.member_id AND entry_id = NEW.entry_id;
    IF total <> 0 OR lines < 2 THEN
        RAISE EXCEPTION 'journal entry % of member % does not balance: % postings summing to %',
            NEW.entry_id, NEW.member_id, lines, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced();
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: post a correcting entry instead', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
"""


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("code", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "kind IN ('member', 'issued', 'redeemed', 'expired', 'adjustment', 'holds')", name=op.f("ck_accounts_kind")
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_accounts")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(length=48), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_members")),
    )
    op.create_table(
        "member_accounts",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("entry_seq", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("entry_seq >= 0", name=op.f("ck_member_accounts_entry_seq_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_member_accounts_held_not_negative")),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_member_accounts_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_member_accounts")),
    )
    op.create_table(
        "transactions",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("mcc", sa.String(length=4), nullable=True),
        sa.Column("merchant", sa.String(length=128), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reversed_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reversed_points", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("programme_version", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "type IN ('card_purchase', 'transfer', 'wealth_purchase', 'bill_payment', 'loan_repayment')",
            name=op.f("ck_transactions_type"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transactions_amount_positive")),
        sa.CheckConstraint("points >= 0", name=op.f("ck_transactions_points_not_negative")),
        sa.CheckConstraint(
            "reversed_amount >= 0 AND reversed_amount <= amount", name=op.f("ck_transactions_reversed_amount_in_range")
        ),
        sa.CheckConstraint(
            "reversed_points >= 0 AND reversed_points <= points", name=op.f("ck_transactions_reversed_points_in_range")
        ),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"], name=op.f("fk_transactions_member_id_members")),
        sa.PrimaryKeyConstraint("member_id", "transaction_id", name=op.f("pk_transactions")),
    )
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_occurred_at", ["occurred_at"], unique=False)

    op.create_table(
        "journal_entries",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=128), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=True),
        sa.Column("related_entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("programme_version", sa.String(length=32), nullable=True),
        sa.Column("memo", sa.String(length=500), nullable=True),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('accrual', 'bonus', 'reversal', 'hold', 'capture', 'void', 'expiry', 'adjustment')",
            name=op.f("ck_journal_entries_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["member_accounts.member_id"], name=op.f("fk_journal_entries_member_id_member_accounts")
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint(
            "member_id", "kind", "source_ref", name=op.f("uq_journal_entries_member_id_kind_source_ref")
        ),
        sa.UniqueConstraint("member_id", "seq", name=op.f("uq_journal_entries_member_id_seq")),
    )
    op.create_table(
        "reversals",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("reversal_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("points_due", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_reversals_amount_positive")),
        sa.CheckConstraint("points >= 0 AND points <= points_due", name=op.f("ck_reversals_points_in_range")),
        sa.ForeignKeyConstraint(
            ["member_id", "transaction_id"],
            ["transactions.member_id", "transactions.transaction_id"],
            name=op.f("fk_reversals_member_id_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("member_id", "reversal_id", name=op.f("pk_reversals")),
    )
    op.create_table(
        "holds",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("capture_account", sa.String(length=80), nullable=False),
        sa.Column("hold_entry_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("resolution_entry_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'pending') = (resolution_entry_id IS NULL)", name=op.f("ck_holds_resolved_iff_entry")
        ),
        sa.CheckConstraint("status IN ('pending', 'captured', 'voided')", name=op.f("ck_holds_status")),
        sa.CheckConstraint("points > 0", name=op.f("ck_holds_points_positive")),
        sa.ForeignKeyConstraint(["capture_account"], ["accounts.code"], name=op.f("fk_holds_capture_account_accounts")),
        sa.ForeignKeyConstraint(
            ["member_id", "hold_entry_id"],
            ["journal_entries.member_id", "journal_entries.id"],
            name=op.f("fk_holds_member_id_hold_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_holds")),
    )
    op.create_table(
        "point_lots",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("rule_id", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("funding_source", sa.String(length=64), nullable=False),
        sa.Column("qualifying", sa.Boolean(), nullable=False),
        sa.Column("original", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("earned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("original > 0", name=op.f("ck_point_lots_original_positive")),
        sa.CheckConstraint("remaining >= 0 AND remaining <= original", name=op.f("ck_point_lots_remaining_in_range")),
        sa.ForeignKeyConstraint(
            ["member_id", "entry_id"],
            ["journal_entries.member_id", "journal_entries.id"],
            name=op.f("fk_point_lots_member_id_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_point_lots")),
    )
    with op.batch_alter_table("point_lots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_point_lots_open",
            ["member_id", "expires_at"],
            unique=False,
            sqlite_where=sa.text("remaining > 0"),
            postgresql_where=sa.text("remaining > 0"),
        )

    op.create_table(
        "postings",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("line", sa.SmallInteger(), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("rule_id", sa.String(length=80), nullable=True),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_postings_amount_not_zero")),
        sa.ForeignKeyConstraint(["account"], ["accounts.code"], name=op.f("fk_postings_account_accounts")),
        sa.ForeignKeyConstraint(
            ["member_id", "entry_id"],
            ["journal_entries.member_id", "journal_entries.id"],
            name=op.f("fk_postings_member_id_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("member_id", "entry_id", "line", name=op.f("pk_postings")),
    )
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.create_index("ix_postings_account_posted_at", ["account", "posted_at"], unique=False)

    op.create_table(
        "lot_consumptions",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("entry_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("lot_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("points <> 0", name=op.f("ck_lot_consumptions_points_not_zero")),
        sa.ForeignKeyConstraint(
            ["member_id", "entry_id"],
            ["journal_entries.member_id", "journal_entries.id"],
            name=op.f("fk_lot_consumptions_member_id_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["member_id", "lot_id"],
            ["point_lots.member_id", "point_lots.id"],
            name=op.f("fk_lot_consumptions_member_id_lot_id_point_lots"),
        ),
        sa.PrimaryKeyConstraint("member_id", "entry_id", "lot_id", name=op.f("pk_lot_consumptions")),
    )
    accounts = sa.table("accounts", sa.column("code"), sa.column("kind"), sa.column("name"))
    op.bulk_insert(accounts, SYSTEM_ACCOUNTS)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_BALANCED)
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
            )
    else:
        for table in APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: post a correcting entry instead'); END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP TRIGGER postings_balanced ON postings")
        op.execute("DROP FUNCTION ledger_entry_balanced()")
        op.execute("DROP FUNCTION ledger_append_only()")

    op.drop_table("lot_consumptions")
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.drop_index("ix_postings_account_posted_at")

    op.drop_table("postings")
    with op.batch_alter_table("point_lots", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_point_lots_open", sqlite_where=sa.text("remaining > 0"), postgresql_where=sa.text("remaining > 0")
        )

    op.drop_table("point_lots")
    op.drop_table("holds")
    op.drop_table("reversals")
    op.drop_table("journal_entries")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_transactions_occurred_at")

    op.drop_table("transactions")
    op.drop_table("member_accounts")
    op.drop_table("members")
    op.drop_table("idempotency_keys")
    op.drop_table("api_keys")
    op.drop_table("accounts")
