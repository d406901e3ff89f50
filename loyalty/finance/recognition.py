"""Revenue recognition for points under IFRS 15, by cumulative catch-up (pure arithmetic).

An earning cohort carries the value allocated to its points when they were
issued. At the end of each period the revenue recognised to date is

    allocated value x cumulative points redeemed / expected total points ever redeemed

(the expected total includes what was redeemed so far), rounded to the fen,
half up. The period's revenue is that figure less the one before it, so a
changed estimate is absorbed in the period it changes, and the periods always
sum to the cumulative figure: only cumulative figures are rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loyalty.errors import ValidationError


@dataclass(frozen=True)
class PeriodFigures:
    """What is known of a cohort at the end of a period."""

    label: str
    #: points of the cohort redeemed from its issue to the end of the period
    cumulative_redeemed: int
    #: points of the cohort expected ever to be redeemed, those redeemed so far included
    expected_total: int


@dataclass(frozen=True)
class Recognised:
    label: str
    cumulative_redeemed: int
    expected_total: int
    #: revenue recognised from the cohort's issue to the end of the period, fen
    to_date_fen: int
    #: revenue recognised in the period (negative when a raised estimate takes some back), fen
    in_period_fen: int
    #: allocated value not yet recognised, fen
    deferred_fen: int


def to_date(allocated_fen: int, cumulative_redeemed: int, expected_total: int) -> int:
    """``allocated x redeemed / expected``, rounded half up to the fen, in integers."""
    if expected_total == 0:
        return 0
    numerator = allocated_fen * cumulative_redeemed
    return (2 * numerator + expected_total) // (2 * expected_total)


def recognise(allocated_fen: int, periods: Sequence[PeriodFigures], *, field: str = "periods") -> list[Recognised]:
    """Each period's revenue recognised to date and in the period, for a cohort allocated
    ``allocated_fen``. Refuses, naming the field, negative figures, an expected total below the
    points redeemed, and cumulative redemptions that go down."""
    errors: dict[str, list[str]] = {}
    if allocated_fen < 0:
        errors["allocated_fen"] = ["must not be negative"]
    previous_redeemed = 0
    for i, p in enumerate(periods):
        at = f"{field}.{i}"
        if p.cumulative_redeemed < 0:
            errors[f"{at}.cumulative_redeemed"] = ["must not be negative"]
        elif p.cumulative_redeemed < previous_redeemed:
            errors[f"{at}.cumulative_redeemed"] = [
                f"is cumulative: it must not go down ({previous_redeemed} the period before)"
            ]
        if p.expected_total < p.cumulative_redeemed:
            errors[f"{at}.expected_total"] = ["must be at least the points redeemed so far (cumulative_redeemed)"]
        previous_redeemed = max(previous_redeemed, p.cumulative_redeemed)
    if errors:
        raise ValidationError(errors)
    out: list[Recognised] = []
    before = 0
    for p in periods:
        now = to_date(allocated_fen, p.cumulative_redeemed, p.expected_total)
        out.append(
            Recognised(
                label=p.label,
                cumulative_redeemed=p.cumulative_redeemed,
                expected_total=p.expected_total,
                to_date_fen=now,
                in_period_fen=now - before,
                deferred_fen=allocated_fen - now,
            )
        )
        before = now
    return out
