"""Imports every table so ``metadata`` is complete (for Alembic and tests)."""

from loyalty.accrual.models import idempotency_keys, reversals, transactions
from loyalty.audit import audit_log
from loyalty.auth.models import api_keys
from loyalty.db import metadata
from loyalty.ledger.models import (
    accounts,
    holds,
    journal_entries,
    lot_consumptions,
    member_accounts,
    point_lots,
    postings,
)
from loyalty.members.models import members
from loyalty.programmes.models import programme_versions

__all__ = [
    "metadata",
    "accounts",
    "member_accounts",
    "journal_entries",
    "postings",
    "point_lots",
    "lot_consumptions",
    "holds",
    "members",
    "transactions",
    "reversals",
    "idempotency_keys",
    "api_keys",
    "programme_versions",
    "audit_log",
]
