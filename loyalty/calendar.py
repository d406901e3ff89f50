"""The bank's calendar: every local day, month, quarter and year, decided in one place.

Timestamps are stored and passed around in UTC; the bank's periods are local
to its time zone (the programme's ``timezone``, Asia/Shanghai by default). A
period is half-open, ``[start, end)``, with both ends as aware UTC datetimes,
so ``start <= moment < end`` is the test for "in the period" in Python and SQL
alike. Nothing else in the engine does calendar arithmetic.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import NamedTuple


class Period(NamedTuple):
    """A local period as UTC instants: ``start <= moment < end``."""

    start: dt.datetime
    end: dt.datetime


def local_date(moment: dt.datetime, zone: dt.tzinfo) -> dt.date:
    """The bank's date at ``moment``."""
    return moment.astimezone(zone).date()


def start_of(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """Local midnight at the start of ``day``, in UTC."""
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


def day(moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local day ``moment`` falls in."""
    today = local_date(moment, zone)
    return Period(start_of(today, zone), start_of(today + dt.timedelta(days=1), zone))


def day_of(date: dt.date, zone: dt.tzinfo) -> Period:
    """The local day ``date``."""
    return Period(start_of(date, zone), start_of(date + dt.timedelta(days=1), zone))


def week(moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local week (Monday to Sunday) ``moment`` falls in."""
    monday = local_date(moment, zone)
    monday -= dt.timedelta(days=monday.weekday())
    return Period(start_of(monday, zone), start_of(monday + dt.timedelta(days=7), zone))


def month(moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local calendar month ``moment`` falls in."""
    first = local_date(moment, zone).replace(day=1)
    return Period(start_of(first, zone), start_of(_shift_date(first, 1), zone))


def quarter(moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local calendar quarter (January to March, ...) ``moment`` falls in."""
    today = local_date(moment, zone)
    first = dt.date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    return Period(start_of(first, zone), start_of(_shift_date(first, 3), zone))


def year(moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local calendar year ``moment`` falls in."""
    first = dt.date(local_date(moment, zone).year, 1, 1)
    return Period(start_of(first, zone), start_of(first.replace(year=first.year + 1), zone))


#: The periods the bank counts in, by name.
PERIODS = ("day", "week", "month", "quarter", "year")


def period(name: str, moment: dt.datetime, zone: dt.tzinfo) -> Period:
    """The local period called ``name`` (one of :data:`PERIODS`) that ``moment`` falls in."""
    if name not in PERIODS:
        raise ValueError(f"unknown period {name!r}; periods: {', '.join(PERIODS)}")
    return _PERIODS[name](moment, zone)


def labelled(label: str, zone: dt.tzinfo) -> Period:
    """The local month ``YYYY-MM``, quarter ``YYYY-Qn`` or year ``YYYY`` a label names, in the
    years 1900 to 2999. Raises ``ValueError`` for anything else."""
    match = re.fullmatch(r"([0-9]{4})(?:-(?:([0-9]{2})|Q([1-4])))?", label)
    if match is None:
        raise ValueError(f"{label!r} is not a month YYYY-MM, a quarter YYYY-Qn or a year YYYY")
    year_, month_, quarter_ = match.groups()
    if not 1900 <= int(year_) <= 2999:
        raise ValueError(f"{label!r} is not in the years 1900 to 2999")
    if month_ is not None:
        if not 1 <= int(month_) <= 12:
            raise ValueError(f"{label!r} has no month {month_}")
        first = dt.date(int(year_), int(month_), 1)
        return Period(start_of(first, zone), start_of(_shift_date(first, 1), zone))
    if quarter_ is not None:
        first = dt.date(int(year_), 3 * (int(quarter_) - 1) + 1, 1)
        return Period(start_of(first, zone), start_of(_shift_date(first, 3), zone))
    first = dt.date(int(year_), 1, 1)
    return Period(start_of(first, zone), start_of(first.replace(year=first.year + 1), zone))


def quarter_label(moment: dt.datetime, zone: dt.tzinfo) -> str:
    """``2026Q3``: the local quarter ``moment`` falls in."""
    today = local_date(moment, zone)
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


def add_months(moment: dt.datetime, months: int, zone: dt.tzinfo) -> dt.datetime:
    """``moment`` moved by whole local calendar months (negative: back), at the same local time.

    The day is clamped to the end of a shorter month: 31 January + 1 month is
    28 (or 29) February, 29 February + 12 months is 28 February."""
    local = moment.astimezone(zone)
    shifted = _shift_date(local.date(), months, clamp_day=local.day)
    return dt.datetime.combine(shifted, local.timetz().replace(tzinfo=None), zone).astimezone(dt.UTC)


def add_days(moment: dt.datetime, days: int, zone: dt.tzinfo) -> dt.datetime:
    """``moment`` moved by whole local days (negative: back), at the same local time."""
    local = moment.astimezone(zone)
    shifted = local.date() + dt.timedelta(days=days)
    return dt.datetime.combine(shifted, local.timetz().replace(tzinfo=None), zone).astimezone(dt.UTC)


def days_between(earlier: dt.datetime, later: dt.datetime, zone: dt.tzinfo) -> int:
    """Local calendar days from ``earlier``'s date to ``later``'s: 23:59 to 00:01 the next day is 1."""
    return (local_date(later, zone) - local_date(earlier, zone)).days


def age_on(birth: dt.date | None, on: dt.date) -> int | None:
    """Whole years from ``birth`` to ``on``; someone born on 29 February ages on 1 March in other years."""
    if birth is None:
        return None
    before_birthday = (on.month, on.day) < (birth.month, birth.day)
    return on.year - birth.year - before_birthday


def years_before(on: dt.date, years: int) -> dt.date:
    """``on`` moved back whole years; 29 February becomes the 28th in a common year.
    Someone born on or before it is at least ``years`` old on ``on``."""
    try:
        return on.replace(year=on.year - years)
    except ValueError:
        return on.replace(year=on.year - years, day=28)


def birthdays_on(on: dt.date) -> tuple[str, ...]:
    """The birth dates (``MM-DD``) celebrated on ``on``: its own, and 29 February on 28 February
    of a common year."""
    if (on.month, on.day) == (2, 28) and not _leap(on.year):
        return ("02-28", "02-29")
    return (f"{on.month:02d}-{on.day:02d}",)


def iso(value: dt.datetime | None) -> str | None:
    """A timestamp as the API writes it: ISO 8601 in UTC with ``Z``."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _shift_date(date: dt.date, months: int, clamp_day: int | None = None) -> dt.date:
    index = date.year * 12 + date.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(clamp_day or date.day, last))


_PERIODS = {"day": day, "week": week, "month": month, "quarter": quarter, "year": year}
