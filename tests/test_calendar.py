"""The bank's calendar: local days, months, quarters and years in Asia/Shanghai (UTC+8), where
the UTC date and the local date differ for eight hours of every day."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from loyalty import calendar
from loyalty.accrual import context
from loyalty.accrual import service as accrual
from loyalty.accrual.service import TransactionCommand
from loyalty.db import transaction
from loyalty.ledger.models import journal_entries, point_lots
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from rules import default_document, load_programme

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = dt.UTC


def local(*args: int) -> dt.datetime:
    """A moment given by the bank's wall clock."""
    return dt.datetime(*args, tzinfo=SHANGHAI)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ---- days ---------------------------------------------------------------------------------------------------


def test_the_local_day_starts_at_local_midnight_which_is_16_00_utc_the_day_before():
    assert calendar.day(local(2026, 7, 1, 0, 0), SHANGHAI) == (utc(2026, 6, 30, 16), utc(2026, 7, 1, 16))


def test_a_moment_before_midnight_utc_can_already_be_tomorrow_locally():
    moment = utc(2026, 6, 30, 17)  # 01:00 on 1 July in Shanghai
    assert calendar.local_date(moment, SHANGHAI) == dt.date(2026, 7, 1)
    assert calendar.day(moment, SHANGHAI).start == utc(2026, 6, 30, 16)
    assert calendar.month(moment, SHANGHAI) == (utc(2026, 6, 30, 16), utc(2026, 7, 31, 16))


def test_the_last_instant_of_a_local_day_is_inside_it_and_midnight_is_not():
    today = calendar.day(local(2026, 7, 1, 12), SHANGHAI)
    assert today.start <= local(2026, 7, 1, 23, 59, 59) < today.end
    assert not local(2026, 7, 2, 0, 0) < today.end


def test_days_between_counts_local_dates_not_24_hour_spans():
    assert calendar.days_between(local(2026, 7, 1, 23, 59), local(2026, 7, 2, 0, 1), SHANGHAI) == 1
    assert calendar.days_between(local(2026, 7, 1, 0, 1), local(2026, 7, 1, 23, 59), SHANGHAI) == 0
    # 23 hours apart in UTC, but two local dates apart
    assert calendar.days_between(utc(2026, 6, 30, 15, 30), utc(2026, 7, 1, 16, 30), SHANGHAI) == 2


def test_add_days_keeps_the_local_time():
    assert calendar.add_days(local(2026, 7, 1, 5), -90, SHANGHAI) == local(2026, 4, 2, 5)


# ---- weeks, months, quarters, years -------------------------------------------------------------------------------


def test_the_week_runs_monday_to_sunday_locally():
    sunday_night = local(2026, 7, 5, 23, 30)  # Sunday
    assert calendar.week(sunday_night, SHANGHAI) == (local(2026, 6, 29), local(2026, 7, 6))
    assert calendar.week(local(2026, 7, 6, 0, 0), SHANGHAI).start == local(2026, 7, 6)


def test_month_bounds_at_the_end_of_a_month_in_both_clocks():
    # 31 January 20:00 UTC is already 1 February in Shanghai
    assert calendar.month(utc(2027, 1, 31, 20), SHANGHAI) == (local(2027, 2, 1), local(2027, 3, 1))
    assert calendar.month(utc(2027, 1, 31, 15, 59), SHANGHAI) == (local(2027, 1, 1), local(2027, 2, 1))


def test_february_of_a_leap_year_has_29_local_days():
    start, end = calendar.month(local(2028, 2, 29, 23), SHANGHAI)
    assert (start, end) == (local(2028, 2, 1), local(2028, 3, 1))
    assert end - start == dt.timedelta(days=29)


@pytest.mark.parametrize(
    ("moment", "bounds", "label"),
    [
        (local(2026, 1, 1, 0, 0), (local(2026, 1, 1), local(2026, 4, 1)), "2026Q1"),
        (local(2026, 3, 31, 23, 59), (local(2026, 1, 1), local(2026, 4, 1)), "2026Q1"),
        (utc(2026, 3, 31, 16), (local(2026, 4, 1), local(2026, 7, 1)), "2026Q2"),  # 00:00 1 April locally
        (local(2026, 9, 30, 12), (local(2026, 7, 1), local(2026, 10, 1)), "2026Q3"),
        (local(2026, 12, 31, 23, 59), (local(2026, 10, 1), local(2027, 1, 1)), "2026Q4"),
    ],
)
def test_quarters_end_at_local_midnight(moment, bounds, label):
    assert calendar.quarter(moment, SHANGHAI) == bounds
    assert calendar.quarter_label(moment, SHANGHAI) == label


def test_the_year_turns_at_local_midnight_on_1_january():
    new_year = utc(2026, 12, 31, 16)  # 00:00 on 1 January 2027 in Shanghai
    assert calendar.year(new_year, SHANGHAI) == (local(2027, 1, 1), local(2028, 1, 1))
    assert calendar.year(new_year - dt.timedelta(seconds=1), SHANGHAI) == (local(2026, 1, 1), local(2027, 1, 1))


def test_period_names_the_same_bounds_and_refuses_an_unknown_period():
    moment = local(2026, 8, 15, 9)
    for name in calendar.PERIODS:
        assert calendar.period(name, moment, SHANGHAI) == getattr(calendar, name)(moment, SHANGHAI)
    with pytest.raises(ValueError, match="unknown period 'fortnight'"):
        calendar.period("fortnight", moment, SHANGHAI)


@pytest.mark.parametrize(
    ("label", "bounds"),
    [
        ("2026-02", (local(2026, 2, 1), local(2026, 3, 1))),
        ("2026-12", (local(2026, 12, 1), local(2027, 1, 1))),
        ("2026-Q4", (local(2026, 10, 1), local(2027, 1, 1))),
        ("2027", (local(2027, 1, 1), local(2028, 1, 1))),
    ],
)
def test_a_period_label_names_a_local_month_quarter_or_year(label, bounds):
    assert calendar.labelled(label, SHANGHAI) == bounds


@pytest.mark.parametrize("label", ["2026-13", "2026-Q5", "26-01", "2026-1", "2026Q1", ""])
def test_a_label_that_names_no_period_is_refused(label):
    with pytest.raises(ValueError):
        calendar.labelled(label, SHANGHAI)


# ---- adding months --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (local(2026, 3, 15, 10), 24, local(2028, 3, 15, 10)),
        (local(2027, 1, 31), 1, local(2027, 2, 28)),  # 31 January + 1 month, common year
        (local(2028, 1, 31), 1, local(2028, 2, 29)),  # ... and leap year
        (local(2028, 2, 29), 12, local(2029, 2, 28)),
        (local(2026, 3, 31), 1, local(2026, 4, 30)),
        (local(2026, 8, 31), 1, local(2026, 9, 30)),
        (local(2026, 11, 30), 3, local(2027, 2, 28)),
        (local(2026, 12, 1), 1, local(2027, 1, 1)),
        (local(2026, 3, 31), -1, local(2026, 2, 28)),
        (local(2026, 1, 15), -13, local(2024, 12, 15)),
        (local(2026, 5, 31, 23), 0, local(2026, 5, 31, 23)),
    ],
)
def test_add_months_moves_local_calendar_months_and_clamps_to_the_month_end(start, months, expected):
    moved = calendar.add_months(start, months, SHANGHAI)
    assert moved == expected
    assert moved.tzinfo is UTC


def test_add_months_counts_from_the_local_date_not_the_utc_date():
    earned = local(2026, 3, 1, 5)  # 21:00 UTC on 28 February
    assert earned.astimezone(UTC).date() == dt.date(2026, 2, 28)
    assert calendar.add_months(earned, 6, SHANGHAI) == local(2026, 9, 1, 5)


# ---- ages and birthdays ---------------------------------------------------------------------------------------


def test_age_turns_on_the_birthday():
    assert calendar.age_on(dt.date(1990, 7, 1), dt.date(2026, 6, 30)) == 35
    assert calendar.age_on(dt.date(1990, 7, 1), dt.date(2026, 7, 1)) == 36
    assert calendar.age_on(None, dt.date(2026, 7, 1)) is None


def test_someone_born_on_29_february_ages_on_1_march_in_a_common_year():
    assert calendar.age_on(dt.date(2000, 2, 29), dt.date(2027, 2, 28)) == 26
    assert calendar.age_on(dt.date(2000, 2, 29), dt.date(2027, 3, 1)) == 27
    assert calendar.age_on(dt.date(2000, 2, 29), dt.date(2028, 2, 29)) == 28


def test_years_before_clamps_29_february():
    assert calendar.years_before(dt.date(2027, 2, 28), 18) == dt.date(2009, 2, 28)
    assert calendar.years_before(dt.date(2028, 2, 29), 1) == dt.date(2027, 2, 28)


def test_29_february_birthdays_are_celebrated_on_28_february_of_a_common_year():
    assert calendar.birthdays_on(dt.date(2027, 2, 28)) == ("02-28", "02-29")
    assert calendar.birthdays_on(dt.date(2028, 2, 28)) == ("02-28",)
    assert calendar.birthdays_on(dt.date(2028, 2, 29)) == ("02-29",)


def test_iso_writes_utc_with_z():
    assert calendar.iso(local(2026, 7, 1, 8)) == "2026-07-01T00:00:00Z"
    assert calendar.iso(None) is None


# ---- the calendar in the ledger and the limits, on both databases ----------------------------------------------


def six_month_programme():
    doc = default_document()
    doc.update(version="six-months", expiry={"policy": "rolling", "months": 6})
    return load_programme(doc)


def test_a_lot_earned_at_05_00_local_on_1_march_expires_on_1_september(runtime, clock):
    programme = six_month_programme()
    earned = local(2027, 3, 1, 5)
    clock.now = earned + dt.timedelta(minutes=10)
    cmd = TransactionCommand("t1", "m1", "card_purchase", 10_000, "CNY", earned)
    with transaction(runtime.engine) as conn:
        members.enrol(conn, Enrolment("m1"), programme=programme, now=clock.now)
        accrual.record_transaction(conn, cmd, programme=programme, now=clock.now)
    with transaction(runtime.engine, readonly=True) as conn:
        expires = conn.execute(
            sa.select(point_lots.c.expires_at)
            .join(journal_entries, journal_entries.c.id == point_lots.c.entry_id)
            .where(journal_entries.c.transaction_id == "t1")
        ).scalar_one()
    assert expires == local(2027, 9, 1, 5)
    assert calendar.local_date(expires, SHANGHAI) == dt.date(2027, 9, 1)


def test_a_booking_counts_transactions_in_the_local_month_and_days_since_by_local_date(runtime, clock):
    programme = six_month_programme()
    clock.now = local(2027, 2, 1, 1)
    late_january = local(2027, 1, 31, 23, 30)  # 15:30 UTC on 31 January
    early_february = local(2027, 2, 1, 0, 30)  # 16:30 UTC, the same UTC date
    with transaction(runtime.engine) as conn:
        members.enrol(conn, Enrolment("m1"), programme=programme, now=clock.now)
        cmd = TransactionCommand("t1", "m1", "card_purchase", 10_000, "CNY", late_january)
        accrual.record_transaction(conn, cmd, programme=programme, now=clock.now)
    with transaction(runtime.engine, readonly=True) as conn:
        facts, _ = context.read_facts(conn, "m1", txn_type="transfer", moment=early_february, programme=programme)
        january, _ = context.read_facts(
            conn,
            "m1",
            txn_type="transfer",
            moment=late_january + dt.timedelta(minutes=20),
            programme=programme,
        )
    assert (facts["transactions_this_month"], facts["days_since_last_transaction"]) == (1, 1)
    assert (january["transactions_this_month"], january["days_since_last_transaction"]) == (2, 0)
