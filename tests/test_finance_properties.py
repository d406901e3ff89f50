"""Random histories of earnings, redemptions, cancellations, refunds, manual adjustments (credits and
debits, approved by a second principal) and expiries over several months: for every month the
roll-forward ties to the members' balances, follows on from the month before and its ``adjusted`` line
is the sum of the adjustments approved in it, the trial balance sums to zero, the liability's lots tie
to the postings, and every breakage cohort accounts for every point it issued.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty import calendar
from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.db import transaction
from loyalty.errors import HoldNotPending, InsufficientPoints, ValidationError
from loyalty.finance import breakage, liability, reports
from loyalty.ledger import service as ledger
from loyalty.members import adjustments
from loyalty.members import service as members
from loyalty.members.models import adjustments as adjustments_table
from loyalty.members.service import Enrolment
from tests.helpers import BASE

SHANGHAI = ZoneInfo("Asia/Shanghai")
REDEEMED = "redeemed:unspecified"

step = st.tuples(
    st.integers(0, 25),  # days the clock moves first
    st.sampled_from(["earn", "earn", "redeem", "hold", "void", "refund", "expire", "adjust"]),
    st.integers(0, 2),  # which member
    st.integers(1, 60_000),  # fen of a purchase, or points of a redemption (scaled below)
)


def approved_in(conn, month: calendar.Period) -> int:
    """The points of the adjustments approved in ``month``, read from the adjustments, not the ledger
    (the database holds the histories of every example run so far)."""
    a = adjustments_table.c
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(a.points), 0)).where(
            a.status == "approved", a.decided_at >= month.start, a.decided_at < month.end
        )
    ).scalar_one()
    return int(total)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, min_size=4, max_size=18))
def test_every_month_rolls_forward_ties_and_balances(runtime, clock, steps):
    tag = uuid.uuid4().hex[:8]
    ids = [f"p{tag}-{i}" for i in range(3)]
    first = clock.now
    with transaction(runtime.engine) as conn:
        for m in ids:
            members.enrol(conn, Enrolment(m), programme=BASE, now=clock.now)
    pending: list[tuple[str, str]] = []
    bought: dict[str, list[str]] = {m: [] for m in ids}
    for n, (days, op, who, size) in enumerate(steps):
        clock.now += dt.timedelta(days=days, minutes=n)
        member, now, ref = ids[who], clock.now, f"{tag}-{n}"
        try:
            with transaction(runtime.engine) as conn:
                if op == "earn":
                    cmd = TransactionCommand(ref, member, "card_purchase", size, "CNY", now - dt.timedelta(minutes=1))
                    accrual.record_transaction(conn, cmd, programme=BASE, now=now)
                    bought[member].append(ref)
                elif op in ("redeem", "hold"):
                    ledger.hold(conn, member, ref, 1 + size % 700, capture_account=REDEEMED, now=now)
                    if op == "redeem":
                        ledger.capture(conn, member, ref, now=now)
                    else:
                        pending.append((member, ref))
                elif op == "void" and pending:
                    ledger.void(conn, *pending.pop(0), now=now)
                elif op == "refund" and bought[member]:
                    cmd = ReversalCommand(bought[member][-1], ref, 1 + size % 5_000)
                    accrual.reverse(conn, cmd, policy="negative" if size % 2 else "available", now=now)
                elif op == "adjust":
                    points = (size % 1_500 - 700) or 1  # credits and debits, some beyond the balance
                    made = adjustments.request(conn, member, points, "correction", principal="agent", now=now)
                    adjustments.approve(conn, made["adjustment_id"], principal="controller", programme=BASE, now=now)
                elif op == "expire":
                    for m in ids:
                        ledger.expire(conn, m, as_of=now + dt.timedelta(days=800), now=now)
        except (InsufficientPoints, ValidationError, HoldNotPending):
            pass  # a refused operation writes nothing
    with transaction(runtime.engine, readonly=True) as conn:
        month = calendar.month(first, SHANGHAI)
        previous_closing = None
        while month.start <= clock.now:
            rf = reports.rollforward(conn, start=month.start, end=month.end)
            assert rf["tie_out"]["tied"], rf["tie_out"]
            assert rf["adjusted"] == approved_in(conn, month)
            if previous_closing is not None:
                assert rf["opening"] == previous_closing
            previous_closing = rf["closing"]
            assert reports.trial_balance(conn, end=month.end)["total"] == 0
            last_day = calendar.local_date(month.end - dt.timedelta(microseconds=1), SHANGHAI)
            owed = liability.liability(conn, as_of=last_day, zone=SHANGHAI, default_point_value=Decimal(1))
            assert owed["tie_out"]["tied"], owed["tie_out"]
            month = calendar.month(month.end, SHANGHAI)
        for cohort in breakage.cohorts(conn, end=clock.now + dt.timedelta(seconds=1), zone=SHANGHAI)["cohorts"]:
            parts = cohort["redeemed"] + cohort["expired"] + cohort["reversed"] + cohort["adjusted"]
            assert cohort["issued"] == parts + cohort["outstanding"], cohort
