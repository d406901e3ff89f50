"""Imports every table so ``metadata`` is complete (for Alembic and tests)."""

from loyalty.analytics.models import advice_decisions, benefit_rollups, feedback, tier_rollups
from loyalty.audit import audit_log
from loyalty.auth.models import admin_users, api_keys, sign_in_attempts
from loyalty.catalogue.models import benefit_versions, benefits, voucher_codes
from loyalty.db import metadata
from loyalty.events.models import events, webhook_deliveries, webhook_subscriptions
from loyalty.finance.models import (
    daily_balances,
    daily_balances_state,
    frozen_reports,
    member_lot_snapshots,
    member_snapshots,
    valuation_settings,
)
from loyalty.finance.reconciliation.models import reconciliation_lines, reconciliations
from loyalty.idempotency import idempotency_keys
from loyalty.jobs.models import job_runs
from loyalty.ledger.models import (
    accounts,
    closed_periods,
    entry_keys,
    holds,
    journal_entries,
    lot_consumptions,
    member_accounts,
    point_lots,
    postings,
)
from loyalty.members.models import adjustments
from loyalty.programmes.models import programme_versions
from loyalty.records.models import member_profiles, members, reversals, transactions
from loyalty.redemption.models import redemption_refusals, redemptions
from loyalty.tiers.models import lifecycle_changes, tier_changes, tier_override_requests

__all__ = [
    "metadata",
    "accounts",
    "member_accounts",
    "journal_entries",
    "entry_keys",
    "postings",
    "point_lots",
    "lot_consumptions",
    "holds",
    "members",
    "transactions",
    "reversals",
    "idempotency_keys",
    "api_keys",
    "admin_users",
    "sign_in_attempts",
    "programme_versions",
    "audit_log",
    "member_profiles",
    "tier_changes",
    "lifecycle_changes",
    "events",
    "webhook_subscriptions",
    "webhook_deliveries",
    "job_runs",
    "benefits",
    "benefit_versions",
    "voucher_codes",
    "redemptions",
    "valuation_settings",
    "closed_periods",
    "frozen_reports",
    "reconciliations",
    "reconciliation_lines",
    "adjustments",
    "daily_balances",
    "daily_balances_state",
    "member_snapshots",
    "member_lot_snapshots",
    "redemption_refusals",
    "benefit_rollups",
    "tier_rollups",
    "feedback",
    "advice_decisions",
    "tier_override_requests",
]
