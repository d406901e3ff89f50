"""Tiers: upgrades as soon as a member qualifies, the quarterly review, overrides, history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from rules import Programme


def reassess(
    conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime, source: str = "event"
) -> dict[str, Any] | None:
    """Upgrade one member at once if their metrics now qualify them for a higher tier.

    Call it in the transaction of the change (a transaction, a profile update).
    Returns the change, or ``None``."""
    return None


def reassess_members(conn: Connection, member_ids: Sequence[str], *, programme: Programme, now: dt.datetime) -> int:
    """:func:`reassess` for many members at once, set-based (bulk imports). Returns how many changed tier."""
    return 0
