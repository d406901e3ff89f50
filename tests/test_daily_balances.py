"""Daily balances and member snapshots: the roll-forward, the trial balance, the outstanding points
and the liability read from the roll-up and the snapshots equal the same reports read straight from
the ledger, before the ``balances`` job ran, after it ran, after a re-run, with postings on the
current day, late business landing in the open period, a posting stamped inside a day already rolled
up, and report spans that cut days in two."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import calendar
from loyalty.db import transaction
from loyalty.finance import balances, liability, reports, snapshots
from loyalty.finance.models import daily_balances, daily_balances_state, member_lot_snapshots, member_snapshots
from loyalty.jobs.runner import run_job
from loyalty.ledger.models import postings
from loyalty.members import adjustments
from loyalty.runtime import Runtime
from tests.helpers import BANK_ZONE, BASE
from tests.test_ledger import Books

REDEEMED = "redeemed:unspecified"


def _reports(conn: Any, spans: list[tuple[dt.datetime, dt.datetime]]) -> list[Any]:
    out: list[Any] = []
    for start, end in spans:
        out.append(reports.rollforward(conn, start=start, end=end))
        out.append(reports.trial_balance(conn, end=end))
        out.append(reports.outstanding(conn, end=start))
        last_day = calendar.local_date(end - dt.timedelta(microseconds=1), BANK_ZONE)
        out.append(liability.liability(conn, as_of=last_day, zone=BANK_ZONE, default_point_value=Decimal(1)))
    return out


def figures(rt: Runtime, spans: list[tuple[dt.datetime, dt.datetime]]) -> list[Any]:
    with transaction(rt.engine, readonly=True) as conn:
        return _reports(conn, spans)


def from_postings(rt: Runtime, spans: list[tuple[dt.datetime, dt.datetime]]) -> list[Any]:
    """The same reports with no roll-up and no snapshot at all: the state row and the snapshots
    deleted in a transaction rolled back."""
    with rt.engine.connect() as conn, conn.begin():
        conn.execute(sa.delete(daily_balances_state))
        snapshots.forget(conn)
        for start, end in spans:
            assert balances.split(conn, start, end).days is None
            assert snapshots.latest(conn, end) is None
        out = _reports(conn, spans)
        conn.rollback()
    return out


def history(books: Books, clock: Any) -> None:
    """Some weeks of earning, redeeming, holds, refunds and an adjustment, across a month's end."""
    for m in ("m1", "m2"):
        books.enrol(m)
    for n in range(12):
        clock.advance(days=3, hours=5)
        books.buy(f"t{n}", 10_000 + 1_000 * n, member_id="m1" if n % 2 else "m2")
        if n % 3 == 0:
            books.hold(f"h{n}", 50, member_id="m1")
            books.capture(f"h{n}", member_id="m1")
        if n == 5:
            books.refund("t3", "r3", 5_000)
        if n == 7:
            books.hold("h-pending", 40, member_id="m2")
    with transaction(books.rt.engine) as conn:
        made = adjustments.request(conn, "m2", -30, "correction", principal="agent", now=clock.now)
        adjustments.approve(conn, made["adjustment_id"], principal="controller", programme=BASE, now=clock.now)


def spans(rt: Runtime, first: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    now = rt.now()
    month = calendar.month(first, BANK_ZONE)
    out = []
    while month.start <= now:
        out.append((month.start, month.end))
        month = calendar.month(month.end, BANK_ZONE)
    # spans that cut local days in two, and one ending now, inside today
    out.append((first + dt.timedelta(hours=7), now - dt.timedelta(days=2, hours=3)))
    out.append((first, now + dt.timedelta(seconds=1)))
    return out


def test_reports_from_the_roll_up_equal_reports_from_the_postings_at_every_step(runtime, clock):
    books = Books(runtime)
    first = clock.now
    history(books, clock)
    span_list = spans(runtime, first)
    expected = from_postings(runtime, span_list)
    assert figures(runtime, span_list) == expected  # before the job ran: all read from the postings

    run = run_job(runtime, "balances", clock.now)
    assert run["status"] == "succeeded" and run["rows"] > 0, run
    with transaction(runtime.engine, readonly=True) as conn:
        zone, through = balances.state(conn)  # type: ignore[misc]
        assert (zone.key, through) == (BANK_ZONE.key, calendar.local_date(clock.now, BANK_ZONE) - dt.timedelta(days=1))
        assert balances.split(conn, first, clock.now).days is not None
        rolled = conn.execute(sa.select(sa.func.sum(daily_balances.c.postings))).scalar_one()
        before_today = conn.execute(
            sa.select(sa.func.count()).where(postings.c.posted_at < calendar.day(clock.now, BANK_ZONE).start)
        ).scalar_one()
    assert rolled == before_today
    # a snapshot at the end of the month the history crossed, one row per member, and points owed
    month_end = calendar.month(first, BANK_ZONE).end
    with transaction(runtime.engine, readonly=True) as conn:
        assert snapshots.latest(conn, clock.now) == month_end
        assert conn.execute(sa.select(sa.func.count()).select_from(member_snapshots)).scalar_one() == 2
        assert conn.execute(sa.select(sa.func.sum(member_lot_snapshots.c.points))).scalar_one() > 0
    assert figures(runtime, span_list) == expected

    again = run_job(runtime, "balances", clock.now)
    assert again["status"] == "succeeded"
    assert figures(runtime, span_list) == expected

    # postings on the current day, and late business (a transaction of last week) posted today
    books.buy("late", 30_000, member_id="m1", occurred_at=clock.now - dt.timedelta(days=6))
    books.hold("h-today", 20, member_id="m2")
    span_list = spans(runtime, first)
    assert figures(runtime, span_list) == from_postings(runtime, span_list)


def test_a_posting_stamped_inside_a_day_rolled_up_is_taken_in_by_the_next_run(runtime, clock):
    books = Books(runtime)
    first = clock.now
    history(books, clock)
    run_job(runtime, "balances", clock.now)
    today = clock.now
    clock.now = calendar.day(today, BANK_ZONE).start - dt.timedelta(hours=2)  # yesterday, rolled up already
    books.buy("straggler", 40_000, member_id="m2")
    clock.now = today
    span_list = spans(runtime, first)
    expected = from_postings(runtime, span_list)
    assert figures(runtime, span_list) != expected  # the roll-up of yesterday misses it ...
    run_job(runtime, "balances", today)
    assert figures(runtime, span_list) == expected  # ... until the next run rolls the last days up again


def test_the_job_rolls_up_only_days_that_ended_a_while_ago_and_resumes_where_it_stopped(runtime, clock, monkeypatch):
    books = Books(runtime)
    history(books, clock)
    midnight = calendar.day(clock.now, BANK_ZONE).start
    run_job(runtime, "balances", midnight + dt.timedelta(minutes=5))  # yesterday is not settled yet
    with transaction(runtime.engine, readonly=True) as conn:
        assert balances.state(conn)[1] == calendar.local_date(midnight, BANK_ZONE) - dt.timedelta(days=2)  # type: ignore[index]
    monkeypatch.setattr(balances, "CHUNK_DAYS", 4)
    calls: list[dt.date] = []
    real = balances.roll_up

    def failing(conn: Any, first: dt.date, last: dt.date, zone: Any) -> int:
        calls.append(first)
        if len(calls) == 2:
            raise RuntimeError("crash")
        return real(conn, first, last, zone)

    with transaction(runtime.engine) as conn:
        conn.execute(sa.delete(daily_balances))
        conn.execute(sa.delete(daily_balances_state))
    monkeypatch.setattr(balances, "roll_up", failing)
    failed = run_job(runtime, "balances", clock.now)
    assert failed["status"] == "failed"
    with transaction(runtime.engine, readonly=True) as conn:
        stopped = balances.state(conn)[1]  # type: ignore[index]
    assert stopped == calls[0] + dt.timedelta(days=3)  # the first chunk committed
    monkeypatch.setattr(balances, "roll_up", real)
    assert run_job(runtime, "balances", clock.now)["status"] == "succeeded"
    month = calendar.month(clock.now, BANK_ZONE)
    assert figures(runtime, [month]) == from_postings(runtime, [month])


@pytest.mark.parametrize("hours", [0, 7])
def test_split_reads_whole_rolled_days_from_the_roll_up_and_the_rest_from_the_postings(runtime, clock, hours):
    books = Books(runtime)
    history(books, clock)
    run_job(runtime, "balances", clock.now)
    start = calendar.start_of(calendar.local_date(clock.now, BANK_ZONE) - dt.timedelta(days=10), BANK_ZONE)
    start += dt.timedelta(hours=hours)
    with transaction(runtime.engine, readonly=True) as conn:
        how = balances.split(conn, start, clock.now)
    today = calendar.day(clock.now, BANK_ZONE).start
    first_day = calendar.local_date(start, BANK_ZONE) + dt.timedelta(days=1 if hours else 0)
    assert how.days == (first_day, calendar.local_date(clock.now, BANK_ZONE) - dt.timedelta(days=1))
    assert how.live == ([(start, calendar.start_of(first_day, BANK_ZONE))] if hours else []) + [(today, clock.now)]
