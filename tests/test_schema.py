"""The schema: migrations match the models, and it can be distributed by member."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import loyalty.models  # noqa: F401
from loyalty.db import metadata
from loyalty.ledger.partitions import compared

#: Tables whose rows belong to one member: distributed by member_id.
MEMBER_SCOPED = {
    "members",
    "member_accounts",
    "journal_entries",
    "entry_keys",
    "postings",
    "point_lots",
    "lot_consumptions",
    "holds",
    "transactions",
    "reversals",
    "member_profiles",
    "tier_changes",
    "lifecycle_changes",
    "redemptions",
    "adjustments",
    "tier_override_requests",
    "redemption_refusals",
    "member_feedback",
    "member_snapshots",
    "member_lot_snapshots",
}
#: Tables that are not member-scoped, and why.
NOT_MEMBER_SCOPED = {
    "accounts": "the chart of accounts: a small reference table replicated to every node",
    "api_keys": "reference table",
    "admin_users": "reference table: the people who sign in to the admin UI",
    "admin_sign_in_attempts": "the admin UI's sign-in history, keyed by account and address",
    "idempotency_keys": "keys unique across members, distributed by the key itself (docs/scaling.md)",
    "programme_versions": "reference table: the earning programme's versions",
    "audit_log": "administrative history, not on any member's path",
    "events": "the outbox: one feed across members, read in commit order by consumers",
    "webhook_subscriptions": "reference table",
    "webhook_deliveries": "delivery state of the outbox, keyed by subscription and event",
    "job_runs": "operational history of the scheduler",
    "benefits": "the benefit catalogue: a reference table",
    "benefit_versions": "the catalogue's history",
    "voucher_codes": "a benefit's code pool, keyed by benefit; a code names its member once issued",
    "valuation_settings": "reference table: finance's valuation inputs",
    "closed_periods": "finance's closed months: a small reference table",
    "frozen_reports": "a closed month's stored reports",
    "reconciliations": "finance's record of a partner's statement, keyed by its own id",
    "reconciliation_lines": "lines of a reconciliation, keyed by it; a line names our redemption's member",
    "daily_balances": "finance's roll-up of the postings across members, per day and account",
    "daily_balances_state": "one row: how far the daily balances go",
    "analytics_benefit_rollups": "aggregates across members, keyed by period, tier and benefit",
    "analytics_tier_rollups": "aggregates across members, keyed by period and tier",
    "analytics_advice_decisions": "a benefits manager's decisions on advice, keyed by finding",
}


def test_every_table_is_classified():
    assert set(metadata.tables) == MEMBER_SCOPED | set(NOT_MEMBER_SCOPED)


def test_member_scoped_keys_include_member_id():
    broken = []
    for name in MEMBER_SCOPED:
        table = metadata.tables[name]
        keys = [("primary key", table.primary_key.columns)]
        keys += [(f"unique {c.name}", c.columns) for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
        keys += [(f"unique index {i.name}", i.columns) for i in table.indexes if i.unique]
        keys += [(f"unique column {c.name}", [c]) for c in table.columns if c.unique]
        for what, cols in keys:
            if "member_id" not in {c.name for c in cols}:
                broken.append(f"{name}: {what}")
    assert broken == []


def test_member_scoped_foreign_keys_stay_within_the_member():
    broken = []
    for name in MEMBER_SCOPED:
        for fk in metadata.tables[name].foreign_key_constraints:
            target = fk.referred_table.name
            if target in MEMBER_SCOPED and "member_id" not in fk.column_keys:
                broken.append(f"{name} -> {target}")
    assert broken == []


def test_migrations_produce_exactly_the_models(engine):
    with engine.connect() as conn:
        # The journal's partitions on PostgreSQL are the partitioned tables' storage, not tables of the models.
        context = MigrationContext.configure(conn, opts={"include_object": compared})
        diff = compare_metadata(context, metadata)
    assert diff == []


@pytest.mark.committed  # the schema itself goes and comes back, each migration in its own transaction
def test_migrations_downgrade_and_upgrade_again(engine):
    from alembic import command

    from loyalty.migrate import alembic_config, upgrade

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert "postings" not in sa.inspect(conn).get_table_names()
    upgrade(engine)
    with engine.connect() as conn:
        assert "postings" in sa.inspect(conn).get_table_names()


@pytest.mark.committed  # the schema goes back a revision and forward again
def test_codes_stored_before_positions_are_numbered_in_the_order_they_were_issued_in(engine):
    """Migration 0007 numbers each pool's codes by upload time, then id: the order the
    previous release issued them in."""
    from alembic import command

    from loyalty.migrate import alembic_config, upgrade

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    early, late = "2026-06-01 10:00:00", "2026-06-02 10:00:00"
    with engine.begin() as conn:
        for benefit in ("coffee", "tea"):
            conn.execute(
                sa.text(
                    "INSERT INTO benefits (code, version, name, kind, fulfilment, face_value, unit_cost,"
                    " funding_source, status, updated_by, updated_at)"
                    " VALUES (:code, 1, :code, 'voucher', 'pool', 1000, 800, 'bank', 'active', 'test', :at)"
                ),
                {"code": benefit, "at": early},
            )
        for benefit, code_id, uploaded_at in [
            ("coffee", "c3", late),
            ("coffee", "c2", early),
            ("tea", "t1", late),
            ("coffee", "c1", late),
        ]:
            conn.execute(
                sa.text(
                    "INSERT INTO voucher_codes (benefit_code, id, digest, secret, status, uploaded_at)"
                    " VALUES (:benefit, :id, :id, 'sealed', 'available', :at)"
                ),
                {"benefit": benefit, "id": code_id, "at": uploaded_at},
            )
    upgrade(engine)
    with engine.connect() as conn:
        numbered = conn.execute(
            sa.text("SELECT benefit_code, id, position FROM voucher_codes ORDER BY benefit_code, position")
        ).all()
    assert [tuple(r) for r in numbered] == [
        ("coffee", "c2", 1),
        ("coffee", "c1", 2),
        ("coffee", "c3", 3),
        ("tea", "t1", 1),
    ]
