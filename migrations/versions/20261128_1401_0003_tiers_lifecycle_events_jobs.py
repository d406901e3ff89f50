"""tiers, lifecycle, events and jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:01:40.422261

Each migration must work with the code of the previous release still
running, so that nodes can be upgraded one at a time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=48), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("dedup_key", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_member_id_dedup_key", ["member_id", "dedup_key"], unique=True)
        batch_op.create_index("ix_events_tx_id", ["tx", "id"], unique=False)
        batch_op.create_index("ix_events_type_id", ["type", "id"], unique=False)

    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=48), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rows", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("errors", sa.Integer(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(length=100), nullable=False),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name=op.f("ck_job_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.create_index("ix_job_runs_job_started_at", ["job", "started_at"], unique=False)

    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("cursor_tx", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cursor_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
    )
    op.create_table(
        "lifecycle_changes",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=True),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source IN ('event', 'job')", name=op.f("ck_lifecycle_changes_source")),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_lifecycle_changes_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_lifecycle_changes")),
    )
    with op.batch_alter_table("lifecycle_changes", schema=None) as batch_op:
        batch_op.create_index("ix_lifecycle_changes_member_id_changed_at", ["member_id", "changed_at"], unique=False)

    op.create_table(
        "member_profiles",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("aum", sa.BigInteger(), nullable=True),
        sa.Column("profit_contribution", sa.BigInteger(), nullable=True),
        sa.Column("products_held", sa.String(length=400), nullable=True),
        sa.Column("occupation", sa.String(length=64), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("preferred_channel", sa.String(length=32), nullable=True),
        sa.Column("risk_profile", sa.String(length=16), nullable=True),
        sa.Column("as_of", sa.Date(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_member_profiles_member_id_members")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_member_profiles")),
    )
    op.create_table(
        "tier_changes",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("from_tier", sa.String(length=64), nullable=True),
        sa.Column("to_tier", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("programme_version", sa.String(length=32), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('enrolment', 'event', 'review', 'override')", name=op.f("ck_tier_changes_source")
        ),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"], name=op.f("fk_tier_changes_member_id_members")),
        sa.PrimaryKeyConstraint("member_id", "id", name=op.f("pk_tier_changes")),
    )
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.create_index("ix_tier_changes_member_id_changed_at", ["member_id", "changed_at"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name=op.f("ck_webhook_deliveries_status")),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], name=op.f("fk_webhook_deliveries_event_id_events")),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("subscription_id", "event_id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier", sa.String(length=64), server_default="basic", nullable=False))
        batch_op.add_column(sa.Column("tier_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("override_tier", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("override_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("override_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("tier_reviewed", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("lifecycle_stage", sa.String(length=16), server_default="acquisition", nullable=False)
        )
        batch_op.add_column(sa.Column("lifecycle_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("first_transaction_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_transaction_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("reversals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("qualifying_points", sa.BigInteger(), server_default="0", nullable=False))

    # Members enrolled before tiers existed: in the floor tier since enrolment,
    # with their first and latest transactions taken from their history.
    op.execute("UPDATE members SET tier_since = enrolled_at, lifecycle_since = enrolled_at")
    op.execute(
        "UPDATE members SET "
        "first_transaction_at = (SELECT min(t.occurred_at) FROM transactions t WHERE t.member_id = members.member_id), "
        "last_transaction_at = (SELECT max(t.occurred_at) FROM transactions t WHERE t.member_id = members.member_id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        # The writing transaction's id: the event feed's commit-order cursor (loyalty.events.service).
        op.execute("ALTER TABLE events ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint)")


def downgrade() -> None:
    with op.batch_alter_table("reversals", schema=None) as batch_op:
        batch_op.drop_column("qualifying_points")

    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("last_transaction_at")
        batch_op.drop_column("first_transaction_at")
        batch_op.drop_column("lifecycle_since")
        batch_op.drop_column("lifecycle_stage")
        batch_op.drop_column("tier_reviewed")
        batch_op.drop_column("override_reason")
        batch_op.drop_column("override_until")
        batch_op.drop_column("override_tier")
        batch_op.drop_column("tier_since")
        batch_op.drop_column("tier")

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_status_next_attempt_at")

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_tier_changes_member_id_changed_at")

    op.drop_table("tier_changes")
    op.drop_table("member_profiles")
    with op.batch_alter_table("lifecycle_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_lifecycle_changes_member_id_changed_at")

    op.drop_table("lifecycle_changes")
    op.drop_table("webhook_subscriptions")
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_job_runs_job_started_at")

    op.drop_table("job_runs")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_type_id")
        batch_op.drop_index("ix_events_tx_id")
        batch_op.drop_index("ix_events_member_id_dedup_key")

    op.drop_table("events")
