"""The periods analytics reports on, named by label: a local day ``2026-03-15``, ISO week
``2026-W11``, month ``2026-03``, quarter ``2026-Q1`` or year ``2026``."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from loyalty import calendar
from loyalty.errors import ValidationError

#: Most periods one request may name (``period`` to ``to``).
MAX_PERIODS = 62
#: The years a period may lie in.
YEARS = (1900, 2999)
LABEL_PATTERN = (
    r"^(19|2[0-9])[0-9]{2}(-(Q[1-4]|W(0[1-9]|[1-4][0-9]|5[0-3])|(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?))?$"
)


@dataclass(frozen=True)
class Span:
    """One local period: its kind, the local date it starts on, and its UTC bounds."""

    kind: str
    start: dt.date
    bounds: calendar.Period

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        if self.kind == "month":
            return self.start.strftime("%Y-%m")
        if self.kind == "quarter":
            return f"{self.start.year}-Q{(self.start.month - 1) // 3 + 1}"
        return str(self.start.year)

    def last_day(self, zone: dt.tzinfo) -> dt.date:
        return calendar.local_date(self.bounds.end, zone) - dt.timedelta(days=1)


def span_at(kind: str, moment: dt.datetime, zone: dt.tzinfo) -> Span:
    """The period of ``kind`` that ``moment`` falls in."""
    bounds = calendar.period(kind, moment, zone)
    return Span(kind, calendar.local_date(bounds.start, zone), bounds)


def parse(label: str, zone: dt.tzinfo, *, field: str = "period") -> Span:
    """The period a label names; a bad label is a 422 naming ``field``."""
    if re.match(r"[0-9]{4}", label) and not YEARS[0] <= int(label[:4]) <= YEARS[1]:
        raise ValidationError.one(field, f"must lie in the years {YEARS[0]} to {YEARS[1]}")
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", label):
            return span_at("day", calendar.start_of(dt.date.fromisoformat(label), zone), zone)
        week = re.fullmatch(r"([0-9]{4})-W([0-9]{2})", label)
        if week:
            monday = dt.date.fromisocalendar(int(week[1]), int(week[2]), 1)
            return span_at("week", calendar.start_of(monday, zone), zone)
        bounds = calendar.labelled(label, zone)
    except ValueError as exc:
        raise ValidationError.one(
            field, f"{exc}; name a day YYYY-MM-DD, a week YYYY-Www, a month YYYY-MM, a quarter YYYY-Qn or a year YYYY"
        ) from None
    kind = "year" if len(label) == 4 else "quarter" if "Q" in label else "month"
    return Span(kind, calendar.local_date(bounds.start, zone), bounds)


def following(span: Span, zone: dt.tzinfo) -> Span:
    return span_at(span.kind, span.bounds.end, zone)


def previous(span: Span, zone: dt.tzinfo) -> Span:
    return span_at(span.kind, span.bounds.start - dt.timedelta(microseconds=1), zone)


def spans(first: str, last: str | None, zone: dt.tzinfo) -> list[Span]:
    """The periods from ``first`` to ``last`` (of the same kind), in order."""
    start = parse(first, zone)
    if last is None:
        return [start]
    end = parse(last, zone, field="to")
    if end.kind != start.kind:
        raise ValidationError.one("to", f"must name a {start.kind}, as period does")
    if end.start < start.start:
        raise ValidationError.one("to", "must not be before period")
    out = [start]
    while out[-1].start < end.start:
        if len(out) >= MAX_PERIODS:
            raise ValidationError.one("to", f"names more than {MAX_PERIODS} periods from period")
        out.append(following(out[-1], zone))
    return out


def overlapping(kind: str, span: Span, zone: dt.tzinfo) -> int:
    """How many periods of ``kind`` (day, month, year: an entitlement's) overlap ``span``."""
    count, moment = 0, span.bounds.start
    while moment < span.bounds.end:
        count += 1
        moment = calendar.period(kind, moment, zone).end
    return count
