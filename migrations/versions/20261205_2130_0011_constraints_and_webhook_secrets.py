"""constraints the schema was missing; webhook secrets sealed

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 21:30:00

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time.

Foreign keys, each within the member (DESIGN.md, invariant 7), so the schema
still distributes by member:

- a transaction's ``entry_id`` names its member's journal entry;
- a hold's ``resolution_entry_id`` names its member's capture or void entry;
- a redemption's ``hold_id`` names its member's hold.

Rows written before satisfy them: each was written in the same transaction
as what it names. This release writes the entry before the row that names
it; the release before wrote a transaction before its entry, and resolved a
hold before writing the entry that resolves it, so those two keys are
DEFERRABLE INITIALLY DEFERRED (checked at commit, on SQLite too) and nodes of
either release can run on this schema. A redemption always followed its
hold: that key is checked at once.

CHECKs: a benefit's points price is positive (or NULL: an entitlement only),
its cancellation window not negative, a partner benefit names its partner;
an issued voucher code names its member and redemption, an available one
neither.

Webhook secrets are stored sealed from now on (``secret_sealed``, AES-GCM
under a key derived from ``LOYALTY_SECRET_KEY``, which a migration cannot
know), with their last four characters in ``secret_hint``. The secrets of
existing subscriptions stay in ``secret``, in clear, with their hint filled
in here, until the first run of the ``webhooks`` job with the key set, or
``loyalty webhooks seal-secrets``, seals them; until then deliveries are
signed with them as before. A row keeps its secret once: sealed or in clear
(``ck_webhook_subscriptions_secret_kept_once``). The release before this one
can still create subscriptions (in clear, without a hint: the job seals them
and fills it in), but cannot sign deliveries for sealed ones: upgrade the
scheduler with the first nodes.

On SQLite a constraint is added by rebuilding the table (batch mode);
``loyalty db upgrade`` (:func:`loyalty.migrate.upgrade`) runs migrations
with foreign keys off, so tables other rows point at can be rebuilt, and
checks every key before it commits.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: Member-scoped foreign keys: (table, name, columns, referred table, referred columns, checked at commit).
FOREIGN_KEYS = [
    (
        "transactions",
        "fk_transactions_member_id_entry_id_journal_entries",
        ["member_id", "entry_id"],
        "journal_entries",
        ["member_id", "id"],
        True,
    ),
    (
        "holds",
        "fk_holds_member_id_resolution_entry_id_journal_entries",
        ["member_id", "resolution_entry_id"],
        "journal_entries",
        ["member_id", "id"],
        True,
    ),
    (
        "redemptions",
        "fk_redemptions_member_id_hold_id_holds",
        ["member_id", "hold_id"],
        "holds",
        ["member_id", "id"],
        False,
    ),
]

#: CHECKs: (table, name, condition).
CHECKS = [
    ("benefits", "ck_benefits_points_price_positive", "points_price IS NULL OR points_price > 0"),
    ("benefits", "ck_benefits_cancel_hours_not_negative", "cancel_hours >= 0"),
    ("benefits", "ck_benefits_partner_named", "fulfilment <> 'partner' OR partner IS NOT NULL"),
    (
        "voucher_codes",
        "ck_voucher_codes_issued_to_a_redemption",
        "(status = 'issued' AND member_id IS NOT NULL AND redemption_id IS NOT NULL)"
        " OR (status = 'available' AND member_id IS NULL AND redemption_id IS NULL)",
    ),
]


#: A webhook subscription keeps its secret once: sealed, or in clear.
SECRET_KEPT_ONCE = "(secret IS NULL) <> (secret_sealed IS NULL)"  # noqa: S105  (a condition, not a secret)


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_sealed", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("secret_hint", sa.String(length=4), nullable=True))
        batch_op.alter_column("secret", existing_type=sa.String(length=200), nullable=True)
        batch_op.create_check_constraint(op.f("ck_webhook_subscriptions_secret_kept_once"), SECRET_KEPT_ONCE)
    op.execute("UPDATE webhook_subscriptions SET secret_hint = substr(secret, length(secret) - 3)")
    for table, name, columns, referred, referred_columns, deferred in FOREIGN_KEYS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_foreign_key(
                op.f(name),
                referred,
                columns,
                referred_columns,
                deferrable=deferred or None,
                initially="DEFERRED" if deferred else None,
            )
    for table in dict.fromkeys(table for table, _, _ in CHECKS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for _, name, condition in (c for c in CHECKS if c[0] == table):
                batch_op.create_check_constraint(op.f(name), condition)


def downgrade() -> None:
    sealed = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM webhook_subscriptions WHERE secret_sealed IS NOT NULL"))
        .scalar_one()
    )
    if sealed:
        raise RuntimeError(
            f"{sealed} webhook subscriptions hold their secrets sealed under LOYALTY_SECRET_KEY, which a "
            "migration cannot open, and the schema before 0011 keeps them only in clear: delete those rows "
            "(and their deliveries) and subscribe the receivers again after the downgrade, or stay at 0011"
        )
    for table in dict.fromkeys(table for table, _, _ in reversed(CHECKS)):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for _, name, _condition in (c for c in CHECKS if c[0] == table):
                batch_op.drop_constraint(op.f(name), type_="check")
    for table, name, *_ in reversed(FOREIGN_KEYS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(name), type_="foreignkey")
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_webhook_subscriptions_secret_kept_once"), type_="check")
        batch_op.alter_column("secret", existing_type=sa.String(length=200), nullable=False)
        batch_op.drop_column("secret_hint")
        batch_op.drop_column("secret_sealed")
