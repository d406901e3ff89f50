"""Pure lot arithmetic: which lots pay for a debit, first-expiring-first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["OpenLot", "check_balanced", "fifo_order", "take"]


@dataclass(frozen=True)
class OpenLot:
    id: str
    remaining: int
    expires_at: dt.datetime
    earned_at: dt.datetime


def fifo_order(lots: Iterable[OpenLot]) -> list[OpenLot]:
    """Lots in the order they are spent: soonest expiry first, then oldest, then id."""
    return sorted(lots, key=lambda lot: (lot.expires_at, lot.earned_at, lot.id))


def take(lots: Sequence[OpenLot], points: int, *, prefer: Iterable[str] = ()) -> list[tuple[str, int]]:
    """Take up to ``points`` from ``lots``: the ``prefer`` lots first, then FIFO.

    Returns ``(lot_id, points_taken)`` pairs with positive amounts; their sum
    is ``min(points, total remaining)``.
    """
    if points < 0:
        raise ValueError("points must not be negative")
    preferred = set(prefer)
    ordered = fifo_order(lot for lot in lots if lot.id in preferred) + fifo_order(
        lot for lot in lots if lot.id not in preferred
    )
    plan: list[tuple[str, int]] = []
    left = points
    for lot in ordered:
        if left == 0:
            break
        n = min(left, lot.remaining)
        if n > 0:
            plan.append((lot.id, n))
            left -= n
    return plan


def check_balanced(amounts: Iterable[int]) -> None:
    """Refuse an entry whose postings do not sum to zero or have a zero line."""
    amounts = list(amounts)
    if len(amounts) < 2:
        raise ValueError("an entry needs at least two postings")
    if any(a == 0 for a in amounts):
        raise ValueError("a posting of zero points is meaningless")
    if sum(amounts) != 0:
        raise ValueError(f"postings sum to {sum(amounts)}, not zero")
