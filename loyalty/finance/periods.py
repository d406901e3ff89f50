"""Period close: a closed local month's reports are frozen, and the ledger posts nothing inside it.

Closing month M stores its reports as they are then (the roll-forward of the
month, the trial balance, the liability and the breakage at its end, the
revenue recognised in it) and serves them as stored from then on. Only a
month that has ended, and ended at least :data:`GRACE` ago, can be closed, so
that a transaction in flight across its end has committed: every entry's
posting date is the clock's now, so once a month is closed no entry can carry
a posting date inside it. A transaction that occurred in a closed month is
still accepted: it is posted in the open period, earned under the rules in
force when it occurred, and its entry records both dates (``occurred_at`` and
``posted_at``). Reopening (scope ``admin``, with a reason, audited) drops the
stored reports; closing again stores them anew. :func:`verify` recomputes
every closed month from the journal and compares it with what was stored.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit, calendar
from loyalty.calendar import iso
from loyalty.errors import Conflict, NotFound, ValidationError
from loyalty.finance import breakage, liability, recognition, reports
from loyalty.finance.models import frozen_reports
from loyalty.ledger import service as ledger
from loyalty.ledger.models import closed_periods

#: How long after a month ends it may be closed: longer than any transaction runs.
GRACE = dt.timedelta(minutes=10)
#: The reports a close stores.
REPORTS = ("rollforward", "trial_balance", "liability", "breakage", "recognition")


class PeriodNotClosable(Conflict):
    code = "period_not_closable"
    title = "The period cannot be closed now"


def month_of(label: str, zone: dt.tzinfo) -> calendar.Period:
    """The local month ``YYYY-MM``; anything else is a 422 naming ``period``."""
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", label):
        raise ValidationError.one("period", "must be a month YYYY-MM")
    try:
        return calendar.labelled(label, zone)
    except ValueError as exc:
        raise ValidationError.one("period", str(exc)) from None


def compute(conn: Connection, label: str, *, zone: dt.tzinfo, default_point_value: Decimal) -> dict[str, Any]:
    """The month's reports, computed from the ledger now."""
    start, end = month_of(label, zone)
    last_day = calendar.local_date(end - dt.timedelta(microseconds=1), zone)
    return {
        "rollforward": reports.rollforward(conn, start=start, end=end),
        "trial_balance": reports.trial_balance(conn, end=end),
        "liability": liability.liability(conn, as_of=last_day, zone=zone, default_point_value=default_point_value),
        "breakage": breakage.cohorts(conn, end=end, zone=zone),
        "recognition": recognition.report(conn, label=label, zone=zone),
    }


def close(
    conn: Connection, label: str, *, zone: dt.tzinfo, default_point_value: Decimal, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Close the month: store its reports and refuse postings inside it from now on."""
    start, end = month_of(label, zone)
    if now < end + GRACE:
        raise PeriodNotClosable(
            f"{label} can be closed from {iso(end + GRACE)}, once it has ended and what was in flight has committed",
            field="period",
        )
    cp = closed_periods.c
    if conn.execute(sa.select(cp.period).where(cp.period == label).with_for_update()).first() is not None:
        raise PeriodNotClosable(f"{label} is already closed", field="period")
    stored = compute(conn, label, zone=zone, default_point_value=default_point_value)
    conn.execute(
        closed_periods.insert().values(period=label, starts_at=start, ends_at=end, closed_at=now, closed_by=actor)
    )
    ledger.forget_closed_periods()
    conn.execute(
        frozen_reports.insert(),
        [
            {"period": label, "report": name, "body": json.dumps(body, ensure_ascii=False)}
            for name, body in stored.items()
        ],
    )
    summary = {
        "period": label,
        "closed_at": iso(now),
        "closed_by": actor,
        "tied": stored["rollforward"]["tie_out"]["tied"],
    }
    audit.record(conn, actor=actor, action="close", object_type="period", object_id=label, after=summary, now=now)
    return summary


def reopen(conn: Connection, label: str, *, reason: str, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Reopen a closed month: its stored reports are dropped; closing it again stores them anew."""
    cp = closed_periods.c
    row = conn.execute(sa.select(closed_periods).where(cp.period == label).with_for_update()).first()
    if row is None:
        raise NotFound(f"{label} is not closed", field="period")
    before = {"period": label, "closed_at": iso(row.closed_at), "closed_by": row.closed_by}
    conn.execute(frozen_reports.delete().where(frozen_reports.c.period == label))
    conn.execute(closed_periods.delete().where(cp.period == label))
    ledger.forget_closed_periods()
    after = {"period": label, "reopened_at": iso(now), "reopened_by": actor, "reason": reason}
    audit.record(
        conn, actor=actor, action="reopen", object_type="period", object_id=label, before=before, after=after, now=now
    )
    return after


def listing(conn: Connection) -> list[dict[str, Any]]:
    cp = closed_periods.c
    rows = conn.execute(sa.select(closed_periods).order_by(cp.period))
    return [{"period": r.period, "closed_at": iso(r.closed_at), "closed_by": r.closed_by} for r in rows]


def frozen(conn: Connection, label: str, report: str) -> dict[str, Any] | None:
    """A closed month's stored report, or ``None`` when the month is open."""
    fr = frozen_reports.c
    body = conn.execute(sa.select(fr.body).where(fr.period == label, fr.report == report)).scalar()
    return None if body is None else json.loads(body)  # type: ignore[no-any-return]


def closed_month(start: dt.date, end: dt.date) -> str | None:
    """The month label when ``[start, end]`` (local dates) is exactly one whole month."""
    if start.day != 1:
        return None
    following = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return start.strftime("%Y-%m") if end == following - dt.timedelta(days=1) else None


def verify(conn: Connection, *, zone: dt.tzinfo) -> list[str]:
    """Every closed month recomputed from the journal against what was stored at its close: the
    roll-forward's figures and tie-out and the trial balance. Returns what differs."""
    problems = []
    for period in listing(conn):
        label = period["period"]
        start, end = month_of(label, zone)
        stored = frozen(conn, label, "rollforward")
        now = reports.rollforward(conn, start=start, end=end)
        keys = ("opening", "earned", "redeemed", "expired", "reversed", "adjusted", "closing")
        if stored is None or any(stored[k] != now[k] for k in keys):
            problems.append(f"{label}: the roll-forward differs from the one stored at its close")
        if not now["tie_out"]["tied"]:
            problems.append(f"{label}: the roll-forward does not tie to the members' balances")
        tb = frozen(conn, label, "trial_balance")
        if tb is None or tb != reports.trial_balance(conn, end=end):
            problems.append(f"{label}: the trial balance differs from the one stored at its close")
    return problems


def frozen_at_month_end(conn: Connection, report: str, as_of: dt.date) -> dict[str, Any] | None:
    """The report stored when the month closed, when ``as_of`` is the last day of a closed month."""
    if (as_of + dt.timedelta(days=1)).day != 1:
        return None
    return frozen(conn, as_of.strftime("%Y-%m"), report)
