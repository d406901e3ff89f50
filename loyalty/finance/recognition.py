"""Revenue recognition for points under IFRS 15, by cumulative catch-up: the arithmetic (pure), and
the report of it over the ledger's earning cohorts.

An earning cohort carries the value allocated to its points when they were
issued. At the end of each period the revenue recognised to date is

    allocated value x cumulative points redeemed / expected total points ever redeemed

(the expected total includes what was redeemed so far), rounded to the fen,
half up. The period's revenue is that figure less the one before it, so a
changed estimate is absorbed in the period it changes, and the periods always
sum to the cumulative figure: only cumulative figures are rounded.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.errors import ValidationError
from loyalty.finance import breakage
from loyalty.finance.models import valuation_settings
from loyalty.ledger.models import journal_entries, point_lots


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


def allocated_by_cohort(conn: Connection, *, end: dt.datetime, zone: dt.tzinfo) -> dict[str, int]:
    """The value allocated to each cohort's points (local month of earning): each lot's points x the
    ``allocated_value`` of its funding source in force on its local date of earning, summed and
    rounded half up to the fen. A source without a setting allocates nothing."""
    pl, je, vs = point_lots.c, journal_entries.c, valuation_settings.c
    history: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    for r in conn.execute(
        sa.select(vs.funding_source, vs.effective_from, vs.value)
        .where(vs.kind == "allocated_value")
        .order_by(vs.funding_source, vs.effective_from)
    ):
        history[r.funding_source].append((r.effective_from, Decimal(r.value)))
    values: dict[str, Decimal] = defaultdict(Decimal)
    for r in conn.execute(
        sa.select(pl.funding_source, pl.original, pl.earned_at)
        .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
        .where(je.posted_at < end)
    ):
        day = calendar.local_date(r.earned_at, zone)
        in_force = [v for since, v in history.get(r.funding_source, []) if since <= day]
        values[day.strftime("%Y-%m")] += int(r.original) * (in_force[-1] if in_force else Decimal(0))
    return {c: int(v.quantize(Decimal(1), rounding=ROUND_HALF_UP)) for c, v in values.items()}


def report(conn: Connection, *, label: str, zone: dt.tzinfo) -> dict[str, Any]:
    """Revenue recognised for the period called ``label`` (``YYYY-MM``, ``YYYY-Qn`` or ``YYYY``): per
    cohort and in total, the allocated value, the cumulative redemptions and expected total at the
    period's end, the revenue recognised to date, in the period, and the deferred revenue left.

    The expected total is the cohort's expected ultimate redemptions from the breakage estimate at
    the period's end (never below what was redeemed); the revenue recognised before the period is
    the same arithmetic at its start, with the estimate then: the difference catches up a changed
    estimate in this period."""
    try:
        start, end = calendar.labelled(label, zone)
    except ValueError as exc:
        raise ValidationError.one("period", str(exc)) from None
    allocated = allocated_by_cohort(conn, end=end, zone=zone)
    at_end = {c["cohort"]: c for c in breakage.cohorts(conn, end=end, zone=zone)["cohorts"]}
    at_start = {c["cohort"]: c for c in breakage.cohorts(conn, end=start, zone=zone)["cohorts"]}
    rows = []
    for cohort in sorted(at_end):
        value = allocated.get(cohort, 0)
        now = at_end[cohort]
        redeemed, expected = now["redeemed"], max(now["redeemed"], now["expected_ultimate_redeemed"])
        before = at_start.get(cohort)
        before_fen = (
            to_date(value, before["redeemed"], max(before["redeemed"], before["expected_ultimate_redeemed"]))
            if before is not None
            else 0
        )
        to_date_fen = to_date(value, redeemed, expected)
        rows.append(
            {
                "cohort": cohort,
                "allocated_fen": value,
                "cumulative_redeemed": redeemed,
                "expected_total": expected,
                "to_date_fen": to_date_fen,
                "in_period_fen": to_date_fen - before_fen,
                "deferred_fen": value - to_date_fen,
            }
        )
    totals = {k: sum(r[k] for r in rows) for k in ("allocated_fen", "to_date_fen", "in_period_fen", "deferred_fen")}
    return {"period": label, "from": calendar.iso(start), "to": calendar.iso(end), "cohorts": rows, "total": totals}
